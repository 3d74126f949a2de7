"""``fedcare bench flamby``: FLamby's protocol on Fed-Heart-Disease, every algorithm, N seeds.

Per seed (the per-centre stratified train/test split and the initialisation): local training
at each centre, pooled training, and each federated algorithm, all with the same budget; the
metric is the unweighted mean over centres of the test accuracy, as FLamby reports it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcare.core.config import load_job
from fedcare.datasets.heart import HOSPITALS
from fedcare.jobs.heart_baselines import run_baselines
from fedcare.sim.simulator import simulate

ENTRY_POINT = "fedcare.jobs.heart:make_job"

#: FLamby (NeurIPS 2022), Fed-Heart-Disease, mean per-centre accuracy (its Table/Fig. 3).
FLAMBY_HEART = {"pooled": 0.735, "fedavg": 0.685, "fedprox": 0.685, "scaffold": 0.684,
                "cyclic": 0.718, "fedadagrad": 0.731, "fedyogi": 0.731, "fedadam": 0.726}

#: Algorithm settings used by the benchmark (server learning rates as in FLamby's grid).
ALGORITHMS: dict[str, dict[str, float]] = {
    "fedavg": {}, "fedprox": {"mu": 0.1}, "fedadam": {"server_lr": 0.1},
    "fedyogi": {"server_lr": 0.1}, "fedadagrad": {"server_lr": 0.1}, "fedavgm": {},
    "cyclic": {}, "median": {}, "trimmed_mean": {"trim": 0.25}, "clipped": {"max_norm": 1.0},
}


@dataclass(frozen=True)
class Row:
    method: str
    per_seed: list[float]
    per_centre: dict[str, float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_seed))

    @property
    def std(self) -> float:
        return float(np.std(self.per_seed))


def _federated(algorithm: str, seed: int, params: dict[str, object]) -> dict[str, float]:
    job = load_job(ENTRY_POINT, {**params, "seed": seed, "algorithm": algorithm,
                                 "algorithm_params": ALGORITHMS[algorithm]})
    last = simulate(job).history.rounds[-1]
    return {h: last.site_eval[h].metrics["accuracy"] for h in HOSPITALS}


def run_benchmark(seeds: int, params: dict[str, object] | None = None,
                  algorithms: list[str] | None = None) -> list[Row]:
    """Rows for local, pooled and each algorithm, over seeds 0..seeds-1."""
    params = params or {}
    names = algorithms or list(ALGORITHMS)
    per_method: dict[str, list[dict[str, float]]] = {m: [] for m in ["local", "pooled", *names]}
    for seed in range(seeds):
        job = load_job(ENTRY_POINT, {**params, "seed": seed})
        cfg = job.strategy.configure_train(1, HOSPITALS[0])
        base = run_baselines(seed=seed, num_rounds=job.num_rounds,
                             local_steps=int(cfg["local_steps"]), lr=float(cfg["lr"]),
                             batch_size=int(cfg["batch_size"]),
                             weight_decay=float(cfg["weight_decay"]))
        per_method["local"].append(base.local)
        per_method["pooled"].append(base.pooled)
        for name in names:
            per_method[name].append(_federated(name, seed, params))
    rows = []
    for method, runs in per_method.items():
        per_seed = [float(np.mean([r[h] for h in HOSPITALS])) for r in runs]
        per_centre = {h: float(np.mean([r[h] for r in runs])) for h in HOSPITALS}
        rows.append(Row(method, per_seed, per_centre))
    return rows


def write_results(rows: list[Row], out_dir: Path, seeds: int) -> dict[str, Path]:
    """results.csv, results.md (beside FLamby's numbers) and results.png (bar chart)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "mean", "std", *HOSPITALS, "flamby"])
        for r in rows:
            writer.writerow([r.method, f"{r.mean:.4f}", f"{r.std:.4f}",
                             *(f"{r.per_centre[h]:.4f}" for h in HOSPITALS),
                             FLAMBY_HEART.get(r.method, "")])
    lines = [f"Fed-Heart-Disease, mean per-centre test accuracy, {seeds} seed(s)", "",
             "| method | fedcare (mean ± sd) | FLamby | " + " | ".join(HOSPITALS) + " |",
             "|---|---|---|" + "---|" * len(HOSPITALS)]
    for r in rows:
        flamby = FLAMBY_HEART.get(r.method)
        lines.append(f"| {r.method} | {r.mean:.3f} ± {r.std:.3f} | "
                     f"{'' if flamby is None else f'{flamby:.3f}'} | "
                     + " | ".join(f"{r.per_centre[h]:.3f}" for h in HOSPITALS) + " |")
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    png_path = out_dir / "results.png"
    _bar_chart(rows, png_path, seeds)
    return {"csv": csv_path, "md": md_path, "png": png_path}


def _bar_chart(rows: list[Row], path: Path, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=120)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r.mean for r in rows], 0.4, yerr=[r.std for r in rows], capsize=3,
           label=f"fedcare ({seeds} seeds)")
    flamby = [FLAMBY_HEART.get(r.method, np.nan) for r in rows]
    ax.bar(x + 0.2, flamby, 0.4, label="FLamby (published)", color="grey")
    ax.set_xticks(x, [r.method for r in rows], rotation=30, ha="right")
    ax.set_ylim(0.5, 0.9)
    ax.set_ylabel("mean per-centre accuracy")
    ax.set_title("Fed-Heart-Disease")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
