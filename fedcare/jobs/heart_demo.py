"""The main demo: FedAvg across the four hospitals, next to local-only and pooled training.

For each seed (seed = per-centre train/test split and model initialisation) it runs the real
federation through the simulator and the two centrally trained baselines on the same split, and
collects one accuracy per hospital test set for each.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedcare.core.config import load_job
from fedcare.core.tracking import TrackingConfig
from fedcare.datasets.heart import HOSPITALS
from fedcare.jobs.heart_baselines import BaselineResult, run_baselines
from fedcare.server.controller import RunResult
from fedcare.server.events import RunListener
from fedcare.server.history import History
from fedcare.sim.simulator import simulate

ENTRY_POINT = "fedcare.jobs.heart:make_job"
#: FLamby (NeurIPS 2022), Fed-Heart-Disease, mean per-centre accuracy.
FLAMBY_REFERENCE = {"pooled": 0.735, "fedavg": 0.685, "fedadagrad": 0.731}


@dataclass(frozen=True)
class SeedResult:
    seed: int
    fedavg: dict[str, float]
    baselines: BaselineResult
    run_dir: str | None


def seed_result(seed: int, job_params: dict[str, object], history: History,
                run_dir: Path | None) -> SeedResult:
    """FedAvg's per-hospital accuracy after the last round, and both baselines on the same split.

    ``history`` may come from the simulator or from a real federation: the demo's table does
    not care which transport produced it.
    """
    job = load_job(ENTRY_POINT, {**job_params, "seed": seed})
    last = history.rounds[-1]
    fedavg = {s: last.site_eval[s].metrics["accuracy"] for s in HOSPITALS if s in last.site_eval}
    strategy_config = dict(job.strategy.configure_train(1, HOSPITALS[0]))
    baselines = run_baselines(
        seed=seed, num_rounds=job.num_rounds, local_steps=int(strategy_config["local_steps"]),
        lr=float(strategy_config["lr"]), batch_size=int(strategy_config["batch_size"]),
        weight_decay=float(strategy_config["weight_decay"]),
    )
    return SeedResult(seed, fedavg, baselines, str(run_dir) if run_dir else None)


def run_seed(seed: int, *, run_dir: Path | None, processes: bool = False,
             listener: RunListener | None = None, params: dict[str, object] | None = None,
             tracking: TrackingConfig | None = None, run_name: str | None = None
             ) -> tuple[SeedResult, RunResult]:
    """One simulated federated run plus both baselines on the same split; ``tracking`` and
    ``run_name`` as :func:`fedcare.sim.simulator.simulate` takes them."""
    job_params = {**(params or {}), "seed": seed}
    result = simulate(load_job(ENTRY_POINT, job_params), processes=processes, run_dir=run_dir,
                      listener=listener, tracking=tracking, run_name=run_name)
    return seed_result(seed, params or {}, result.history, run_dir), result


def summarise(results: list[SeedResult]) -> dict[str, dict[str, float]]:
    """Per-hospital accuracies averaged over seeds, plus a ``mean`` entry (unweighted)."""
    columns = {
        "local": [r.baselines.local for r in results],
        "local_all_tests": [r.baselines.local_cross for r in results],
        "pooled": [r.baselines.pooled for r in results],
        "fedavg": [r.fedavg for r in results],
    }
    table: dict[str, dict[str, float]] = {}
    for name, per_seed in columns.items():
        row = {h: float(np.mean([d[h] for d in per_seed])) for h in HOSPITALS}
        row["mean"] = float(np.mean([row[h] for h in HOSPITALS]))
        table[name] = row
    table["fedavg_mean_per_seed"] = {
        str(r.seed): float(np.mean([r.fedavg[h] for h in HOSPITALS])) for r in results}
    return table


def write_summary(directory: Path, results: list[SeedResult],
                  table: dict[str, dict[str, float]]) -> tuple[Path, Path]:
    """``summary.json`` (everything) and ``summary.csv`` (one row per hospital)."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "summary.json"
    json_path.write_text(json.dumps({
        "table": table,
        "seeds": [asdict(r) for r in results],
        "flamby_reference": FLAMBY_REFERENCE,
    }, indent=1))
    csv_path = directory / "summary.csv"
    lines = ["hospital,local,local_all_tests,pooled,fedavg"]
    for h in (*HOSPITALS, "mean"):
        lines.append(",".join([h] + [f"{table[c][h]:.4f}" for c in
                                     ("local", "local_all_tests", "pooled", "fedavg")]))
    csv_path.write_text("\n".join(lines) + "\n")
    return json_path, csv_path
