"""``fedcare provision``: make a federation's CA and startup kits, add sites, revoke."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedcare.cli.output import console, fail
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.provision import add_site, load_kit, provision, revoke


def _show(kits: dict[str, Path]) -> None:
    table = Table(title="startup kits")
    for col in ("name", "kind", "role", "kit"):
        table.add_column(col)
    for name, path in kits.items():
        cfg = load_kit(path).config
        table.add_row(name, cfg.kind, cfg.role or "", str(path))
    console.print(table)


def provision_command(
    project: Annotated[Path | None, typer.Argument(help="project file (YAML)")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="folder of the kits")] = Path("kits"),
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
            _show({add_site_name: add_site(out, add_site_name, org)})
        elif revoke_name is not None:
            crl = revoke(out, revoke_name)
            console.print(f"revoked {revoke_name}; CRL updated: {crl} and "
                          f"{out / 'server' / 'crl.pem'} (the server reads it on every call)")
        elif project is not None:
            _show(provision(project, out))
            console.print(f"CA key kept in {out / '.ca'} (in no kit). Send each kit to its "
                          "owner; each kit's start.sh starts it.")
        else:
            raise ConfigError("give a project file, --add-site or --revoke")
    except FedcareError as exc:
        raise fail(exc) from None
