"""The main demo: FedAvg across the four hospitals, next to local-only and pooled training.

For each seed (seed = per-centre train/test split and model initialisation) it runs the real
federation through the simulator and the two centrally trained baselines on the same split, and
collects one accuracy and ROC AUC per hospital test set for each, and both metrics of all four
test sets together, from the additive parts the hospitals' evaluations send
(:mod:`fedcare.core.metric_parts`), beside the per-hospital mean that FLamby reports.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedcare.core.config import load_job
from fedcare.core.metric_parts import is_bin, pooled_metrics, summed_parts
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


#: The metrics the demo reports per hospital and from sums over all hospitals' test rows.
METRICS = ("accuracy", "auc")


@dataclass(frozen=True)
class SeedResult:
    """FedAvg's per-hospital accuracy; ``metrics[column][h]`` every test metric of
    ``h`` for each column (local, pooled, fedavg); ``from_sums[column]`` those of all test
    rows together (the federation's, as its server computes them)."""

    seed: int
    fedavg: dict[str, float]
    baselines: BaselineResult
    run_dir: str | None
    metrics: dict[str, dict[str, dict[str, float]]]
    from_sums: dict[str, dict[str, float]]


def _site_metrics(per_site: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {h: {k: v for k, v in m.items() if not is_bin(k)} for h, m in per_site.items()}


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
    fedavg_sites = {s: dict(last.site_eval[s].metrics) for s in HOSPITALS if s in last.site_eval}
    metrics = {"local": _site_metrics(baselines.local_metrics),
               "pooled": _site_metrics(baselines.pooled_metrics),
               "fedavg": _site_metrics(fedavg_sites)}
    from_sums = {"local": pooled_metrics(summed_parts(list(baselines.local_metrics.values()))),
                 "pooled": pooled_metrics(summed_parts(list(baselines.pooled_metrics.values()))),
                 "fedavg": dict(last.eval_metrics)}  # summed by the server, bins included
    from_sums = {c: {k: m[k] for k in METRICS if k in m} for c, m in from_sums.items()}
    return SeedResult(seed, fedavg, baselines, str(run_dir) if run_dir else None, metrics,
                      from_sums)


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
    """Per-hospital accuracies averaged over seeds, plus a ``mean`` entry (unweighted); the
    same for AUC (``auc_local``, ``auc_pooled``, ``auc_fedavg``; a hospital without both
    classes in its test set is left out of the mean); ``from_sums``: ``COLUMN_METRIC`` of all
    test rows together, averaged over seeds."""
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
    for column in ("local", "pooled", "fedavg"):
        row = {h: _mean_defined([r.metrics[column][h].get("auc", np.nan) for r in results])
               for h in HOSPITALS}
        row["mean"] = _mean_defined([row[h] for h in HOSPITALS])
        table[f"auc_{column}"] = row
    table["from_sums"] = {
        f"{column}_{metric}": float(np.mean([r.from_sums[column][metric] for r in results]))
        for column in ("local", "pooled", "fedavg") for metric in METRICS}
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
        "seeds": [_without_bins(asdict(r)) for r in results],
        "flamby_reference": FLAMBY_REFERENCE,
    }, indent=1))
    csv_path = directory / "summary.csv"
    lines = ["hospital,local,local_all_tests,pooled,fedavg"]
    for h in (*HOSPITALS, "mean"):
        lines.append(",".join([h] + [f"{table[c][h]:.4f}" for c in
                                     ("local", "local_all_tests", "pooled", "fedavg")]))
    sums = table["from_sums"]
    lines.append(",".join(["all_test_rows", f"{sums['local_accuracy']:.4f}", "",
                           f"{sums['pooled_accuracy']:.4f}", f"{sums['fedavg_accuracy']:.4f}"]))
    csv_path.write_text("\n".join(lines) + "\n")
    return json_path, csv_path


def _without_bins(value: object) -> object:
    """``value`` with every AUC histogram bin left out (the summary keeps the metrics)."""
    if isinstance(value, dict):
        return {k: _without_bins(v) for k, v in value.items()
                if not (isinstance(k, str) and is_bin(k))}
    return value


def _mean_defined(values: list[float]) -> float:
    """The mean of the values that are not NaN; NaN if none is."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")
