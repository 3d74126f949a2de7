"""``fedcare site policy KIT`` and ``fedcare site privacy KIT``: what a site demands of every
job, and what privacy it has spent, read from the site's own kit (no server involved)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fedcare.cli.output import console, fail
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.core.policy import FilterSpec
from fedcare.provision import Kit, load_kit
from fedcare.site.chain import build_filters
from fedcare.site.privacy_guard import check_policy
from fedcare.site.privacy_ledger import PRIVACY_LEDGER_FILE, read_spends, verify_spends

KitArg = Annotated[Path, typer.Argument(help="this site's startup kit")]


def _site_kit(kit_dir: Path) -> Kit:
    kit = load_kit(kit_dir)
    if kit.config.kind != "site":
        raise ConfigError(f"kit {kit_dir} is a {kit.config.kind} kit, not a site kit")
    return kit


def _spec(spec: FilterSpec) -> str:
    params = ", ".join(f"{k}={v}" for k, v in spec.params.items())
    return f"{spec.name}({params})"


def site_policy(kit_dir: KitArg) -> None:
    """What this site demands of every job: its filters, the rules of its privacy policy and
    its budget, as its kit's config.yaml states them (checked as the site checks them)."""
    try:
        kit = _site_kit(kit_dir)
        cfg = kit.config
        try:
            build_filters(cfg.policy)
            check_policy(cfg.privacy)
        except ConfigError as exc:
            raise ConfigError(f"kit config {kit.dir / 'config.yaml'}: {exc.message}") from None
    except FedcareError as exc:
        raise fail(exc) from None
    privacy = cfg.privacy
    table = Table(title=f"policy of site {cfg.name} ({kit.dir / 'config.yaml'})")
    table.add_column("rule")
    table.add_column("value", overflow="fold")
    rows = [
        ("inbound filters", " -> ".join(map(_spec, cfg.policy.inbound)) or "none"),
        ("outbound filters (after a job's own)",
         " -> ".join(map(_spec, cfg.policy.outbound)) or "none"),
        ("task kinds allowed", ", ".join(privacy.task_kinds) if privacy.task_kinds is not None
         else "all"),
        ("minimum rows (statistics, evaluation)", str(privacy.min_rows) if privacy.min_rows
         else "none"),
        ("max epsilon per job", f"{privacy.max_job_epsilon:g}"
         if privacy.max_job_epsilon is not None else "none"),
        ("privacy budget (epsilon, all jobs)", f"{privacy.budget_epsilon:g}"
         if privacy.budget_epsilon is not None else "none"),
    ]
    for name, bounds in privacy.require.items():
        rows.append((f"requires filter {name}",
                     ", ".join(f"{p} {b.text()}" for p, b in bounds.items()) or "present"))
    for rule, value in rows:
        table.add_row(Text(rule), Text(value))
    console.print(table)


def site_privacy(
    kit_dir: KitArg,
    verify: Annotated[bool, typer.Option(
        "--verify", help="check the chain: exit 1 naming any row edited, deleted or moved")
    ] = False,
) -> None:
    """What this site has spent of its privacy budget: every charge, per job and round, and
    the total against the budget."""
    try:
        kit = _site_kit(kit_dir)
        path = kit.dir / PRIVACY_LEDGER_FILE
        spends = read_spends(path) if path.is_file() else []
    except FedcareError as exc:
        raise fail(exc) from None
    budget = kit.config.privacy.budget_epsilon
    table = Table(title=f"privacy spent by site {kit.config.name} ({path})")
    for header in ("#", "time (UTC)", "job", "round", "task", "kind", "mechanism", "epsilon",
                   "delta"):
        table.add_column(header, overflow="fold")
    for s in spends:
        table.add_row(*(Text(str(v)) for v in (s.seq, s.time, s.job_id, s.round_num, s.task_id,
                                                s.kind, s.mechanism, f"{s.epsilon:.6g}",
                                                f"{s.delta:.3g}")))
    console.print(table)
    per_job: dict[str, float] = defaultdict(float)
    for s in spends:
        per_job[s.job_id] += s.epsilon
    for job_id, epsilon in per_job.items():
        console.print(Text(f"job {job_id}: epsilon {epsilon:.6g}"))
    total = sum(per_job.values())
    left = (f" of budget {budget:g} ({max(budget - total, 0.0):.6g} left"
            f"{', SPENT' if total >= budget - 1e-9 else ''})" if budget is not None
            else " (no budget set)")
    console.print(Text(f"total epsilon {total:.6g}{left}"))
    if not verify:
        return
    problems = verify_spends(spends)
    if problems:
        console.print(f"[bold red]privacy ledger {path}: TAMPERED[/]", highlight=False)
        for problem in problems:
            console.print(Text(f"  {problem}"))
        raise typer.Exit(1)
    console.print(Text(f"privacy ledger {path}: OK, {len(spends)} rows"))
