"""``fedcare provision``: make a federation's CA and startup kits, add sites, revoke.

::

    fedcare provision project.yaml -o kits/                  # same as: provision create ...
    fedcare provision add-site kits/ hospital-e --org "St Mary"
    fedcare provision revoke kits/ hospital-e

Registered with ``app.add_typer(provision_app, name="provision")``. The older single-command
spelling (``fedcare provision --add-site NAME --org ORG -o kits/``, ``--revoke NAME -o kits/``)
keeps working: anything after ``provision`` that is not a sub-command name goes to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from cryptography.x509.oid import NameOID
from rich.table import Table
from typer.core import TyperGroup

from fedcare.cli.output import console, fail
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.provision import add_site, load_kit, provision, revoke

_DEFAULT = "default"


class _DefaultCommandGroup(TyperGroup):
    """A group whose first argument, when it names no sub-command, goes to a default command.

    This is what lets ``fedcare provision project.yaml -o kits/`` work beside
    ``fedcare provision create project.yaml -o kits/``.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [_DEFAULT, *args]
        return super().parse_args(ctx, args)


provision_app = typer.Typer(
    cls=_DefaultCommandGroup, no_args_is_help=True, add_completion=False,
    help="Make a federation's CA and startup kits (fedcare provision PROJECT.yaml -o KITS), "
         "add sites, revoke participants.")


def _org(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else ""


def _show(kits: dict[str, Path]) -> None:
    table = Table(title="startup kits")
    for col in ("name", "kind", "org", "role", "kit"):
        table.add_column(col)
    for name, path in kits.items():
        kit = load_kit(path)
        table.add_row(name, kit.config.kind, _org(kit.cert), kit.config.role or "", str(path))
    console.print(table)


def _create(project: Path, out: Path) -> None:
    _show(provision(project, out))
    console.print(f"CA key kept in {out / '.ca'} (in no kit). Send each kit to its owner; "
                  "each kit's start.sh starts it.")


def _add_site(kits: Path, name: str, org: str) -> None:
    _show({name: add_site(kits, name, org)})
    console.print("the server needs no change: it trusts the CA, not a list of sites")


def _revoke(kits: Path, name: str) -> None:
    crl = revoke(kits, name)
    server_crl = kits / "server" / "crl.pem"
    if server_crl.exists():
        where = f"{crl} and {server_crl}"
    else:
        where = f"{crl} (copy it into the server's kit)"
    console.print(f"revoked {name}; CRL updated: {where}; the server refuses {name} from its "
                  "next call")


Out = Annotated[Path, typer.Option("-o", "--out", help="folder of the CA and kits")]


@provision_app.command("create")
def create_command(
    project: Annotated[Path, typer.Argument(help="project file (YAML)")],
    out: Out = Path("kits"),
) -> None:
    """Make a CA and one startup kit per participant (server, sites, admins)."""
    try:
        _create(project, out)
    except (FedcareError, OSError) as exc:
        raise fail(exc) from None


@provision_app.command("add-site")
def add_site_command(
    kits: Annotated[Path, typer.Argument(help="folder made by provision")],
    name: Annotated[str, typer.Argument(help="name of the new site")],
    org: Annotated[str, typer.Option(help="organisation of the new site")],
) -> None:
    """Sign a kit for a new site with the existing CA; other kits stay untouched."""
    try:
        _add_site(kits, name, org)
    except (FedcareError, OSError) as exc:
        raise fail(exc) from None


@provision_app.command("revoke")
def revoke_command(
    kits: Annotated[Path, typer.Argument(help="folder made by provision")],
    name: Annotated[str, typer.Argument(help="participant to revoke")],
) -> None:
    """Revoke a participant: its serial goes into the CA-signed CRL the server reads."""
    try:
        _revoke(kits, name)
    except (FedcareError, OSError) as exc:
        raise fail(exc) from None


@provision_app.command(_DEFAULT, hidden=True)
def provision_command(
    project: Annotated[Path | None, typer.Argument(help="project file (YAML)")] = None,
    out: Out = Path("kits"),
    add_site_name: Annotated[str | None, typer.Option(
        "--add-site", help="add a site to the federation in --out")] = None,
    org: Annotated[str | None, typer.Option(help="organisation of the added site")] = None,
    revoke_name: Annotated[str | None, typer.Option(
        "--revoke", help="revoke a participant of the federation in --out")] = None,
) -> None:
    """Make a CA and one startup kit per participant; or --add-site / --revoke later.

    fedcare provision project.yaml -o kits/
    fedcare provision --add-site hospital-e --org "St Mary" -o kits/
    fedcare provision --revoke hospital-e -o kits/
    """
    try:
        if add_site_name is not None:
            if not org:
                raise ConfigError("--add-site needs --org")
            _add_site(out, add_site_name, org)
        elif revoke_name is not None:
            _revoke(out, revoke_name)
        elif project is not None:
            _create(project, out)
        else:
            raise ConfigError("give a project file, --add-site or --revoke")
    except (FedcareError, OSError) as exc:
        raise fail(exc) from None
