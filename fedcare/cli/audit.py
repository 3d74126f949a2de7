"""``fedcare audit verify|show`` and ``fedcare site uploads``: read the audit chains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fedcare.cli.output import console, fail
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.provision import load_kit
from fedcare.server.audit import AUDIT_FILE, read_chain
from fedcare.server.audit_check import verify_chain
from fedcare.site.ledger import LEDGER_FILE, read_uploads, verify_uploads

audit_app = typer.Typer(no_args_is_help=True, help="Check and read the server's audit log.")

Where = Annotated[Path, typer.Argument(
    help="the server's kit, its workspace folder, or the audit.db file itself")]
CaOpt = Annotated[Path | None, typer.Option(
    help="the federation's CA certificate (default: the kit's ca.crt)")]


def _locate(where: Path) -> tuple[Path, Path | None]:
    """The audit log's path, and the CA certificate beside it if there is one."""
    if (where / "config.yaml").is_file():  # a server kit
        kit = load_kit(where)
        if kit.config.kind != "server":
            raise ConfigError(f"kit {where} is a {kit.config.kind} kit, not the server's")
        return kit.dir / (kit.config.workspace or "workspace") / AUDIT_FILE, kit.ca_cert
    if where.is_dir():  # a workspace, maybe inside the server's kit
        beside = where.parent / "ca.crt"
        return where / AUDIT_FILE, beside if beside.is_file() else None
    return where, None


def _read_ca(db: Path, ca: Path | None) -> bytes:
    if ca is None:
        raise ConfigError(f"which CA signed the server's certificate? give --ca CA.crt for {db}")
    try:
        return ca.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the CA certificate {ca}: {exc.strerror}") from None


@audit_app.command("verify")
def audit_verify(where: Where, ca: CaOpt = None) -> None:
    """Check that no audit entry was edited, deleted or reordered, and every signed head.

    Exits 1 naming each entry that was. Entries after the last signed head (written since
    the last signing, or left unsigned by a server that did not stop cleanly) are counted
    but cannot be vouched for: removing them leaves no trace.
    """
    try:
        db, beside = _locate(where)
        verdict = verify_chain(*read_chain(db), _read_ca(db, ca or beside))
    except (FedcareError, ValueError) as exc:
        raise fail(exc) from None
    if not verdict.ok:
        console.print(f"[bold red]audit log {db}: TAMPERED[/]", highlight=False)
        for problem in verdict.problems:
            console.print(Text(f"  {problem}"))
        raise typer.Exit(1)
    console.print(Text(f"audit log {db}: OK, {verdict.entries} entries, {verdict.heads} signed "
                       f"heads, signed through entry {verdict.signed_through}"))
    if verdict.unsigned:
        console.print(Text(f"  {verdict.unsigned} entries after the last signed head are not "
                           "covered by a signature yet"), style="yellow")


@audit_app.command("show")
def audit_show(where: Where, limit: Annotated[int, typer.Option(
        min=1, help="the last N entries")] = 50) -> None:
    """The last audit entries: when, who (certificate name and role), action, detail."""
    try:
        db = _locate(where)[0]
        entries, _ = read_chain(db)
    except FedcareError as exc:
        raise fail(exc) from None
    table = Table(title=f"audit log {db}: last {min(limit, len(entries))} of {len(entries)}")
    for header in ("#", "time (UTC)", "who", "role", "action", "detail"):
        table.add_column(header, overflow="fold")
    for e in entries[-limit:]:
        table.add_row(*(Text(str(v)) for v in (e.seq, e.time, e.actor, e.role, e.action,
                                               e.detail)))
    console.print(table)


def site_uploads(
    kit_dir: Annotated[Path, typer.Argument(help="this site's startup kit")],
    verify: Annotated[bool, typer.Option(
        "--verify", help="check the chain: exit 1 naming any entry edited, deleted or moved")
    ] = False,
    job: Annotated[str | None, typer.Option(help="only this job's uploads")] = None,
    limit: Annotated[int, typer.Option(min=1, help="the last N uploads")] = 50,
) -> None:
    """What left this site: every reply it uploaded, with the BLAKE3 digest of the bytes sent."""
    try:
        kit = load_kit(kit_dir)
        if kit.config.kind != "site":
            raise ConfigError(f"kit {kit_dir} is a {kit.config.kind} kit, not a site kit")
        uploads = read_uploads(kit.dir / LEDGER_FILE)
    except FedcareError as exc:
        raise fail(exc) from None
    shown = [u for u in uploads if job is None or u.job_id == job][-limit:]
    table = Table(title=f"uploads of {kit.config.name}: last {len(shown)} of {len(uploads)}")
    for header in ("#", "time (UTC)", "job", "task", "kind", "outcome", "bytes", "blake3"):
        table.add_column(header, overflow="fold")
    for u in shown:
        table.add_row(*(Text(str(v)) for v in (u.seq, u.time, u.job_id, u.task_id, u.kind,
                                               u.outcome, u.size_bytes, u.blake3)))
    console.print(table)
    if not verify:
        return
    problems = verify_uploads(uploads)
    if problems:
        console.print(f"[bold red]upload ledger {kit.dir / LEDGER_FILE}: TAMPERED[/]",
                      highlight=False)
        for problem in problems:
            console.print(Text(f"  {problem}"))
        raise typer.Exit(1)
    console.print(Text(f"upload ledger {kit.dir / LEDGER_FILE}: OK, {len(uploads)} uploads"))
