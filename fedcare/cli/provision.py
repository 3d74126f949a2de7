"""``fedcare provision``: make a federation's CA and startup kits, add sites, revoke."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedcare.core.errors import FedcareError
from fedcare.provision import add_site, load_kit, provision, revoke

console = Console()
provision_app = typer.Typer(
    invoke_without_command=True,
    help="fedcare provision PROJECT.yaml -o KITS: make a CA and one startup kit per participant.")


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=1)


def _show(kits: dict[str, Path]) -> None:
    table = Table(title="startup kits")
    for col in ("name", "kind", "role", "kit", "start with"):
        table.add_column(col)
    for name, path in kits.items():
        cfg = load_kit(path).config
        start = (path / "start.sh").read_text().splitlines()[-1].replace("exec ", "")
        table.add_row(name, cfg.kind, cfg.role or "", str(path),
                      start.replace('"$(dirname "$0")"', str(path)).replace(' "$@"', ""))
    console.print(table)


@provision_app.callback()
def provision_main(
    ctx: typer.Context,
    project: Annotated[Path | None, typer.Argument(help="project file (YAML)")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="folder for the kits")] = Path("kits"),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if project is None:
        console.print(ctx.get_help())
        raise typer.Exit(code=2)
    try:
        kits = provision(project, out)
    except FedcareError as exc:
        raise _fail(exc) from None
    _show(kits)
    console.print(f"CA key kept in {out / '.ca'} (not in any kit). Send each kit to its owner.")


@provision_app.command("add-site")
def add_site_cmd(kits: Path, name: str,
                 org: Annotated[str, typer.Option(help="the site's organisation")]) -> None:
    """Add a site to a provisioned federation without re-provisioning the others."""
    try:
        _show({name: add_site(kits, name, org)})
    except FedcareError as exc:
        raise _fail(exc) from None


@provision_app.command("revoke")
def revoke_cmd(kits: Path, name: str) -> None:
    """Revoke a participant's certificate; the server refuses it from its next connection."""
    try:
        crl = revoke(kits, name)
    except FedcareError as exc:
        raise _fail(exc) from None
    console.print(f"revoked {name}; CRL updated: {crl} and {kits / 'server' / 'crl.pem'}")
