"""``fedcare bench flamby``: FLamby's protocol, every algorithm, N seeds, on real data.

Data sets: Fed-Heart-Disease (accuracy, ROC AUC) and Fed-TCGA-BRCA (C-index), each with
FLamby's own fixed per-centre train/test split; a seed sets the initialisation. Per seed: local
training at each centre, pooled training, and each federated algorithm, all with the same
budget. Each metric is reported two ways:

- per-centre mean: the unweighted mean over centres of each centre's test metric, what FLamby
  reports (a centre whose test set allows no AUC or C-index is left out);
- from sums: the metric of all centres' test rows together, from the additive parts each
  centre's evaluation sends (:mod:`fedcare.core.metric_parts`): correct predictions over
  rows, the AUC of the summed score histograms, concordant over comparable pairs (pairs
  within a centre). For local training the parts come from each centre's own model.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcare.core.config import load_job
from fedcare.core.job import Job
from fedcare.core.metric_parts import pooled_metrics, summed_parts
from fedcare.datasets.heart import HOSPITALS, load_hospital_flamby
from fedcare.datasets.tcga_brca import CENTERS
from fedcare.jobs import tcga
from fedcare.jobs.heart_baselines import run_baselines
from fedcare.sim.simulator import simulate

#: Centre -> its test metrics, with the additive parts its evaluation sends.
Scores = dict[str, dict[str, float]]

#: FLamby (NeurIPS 2022), mean per-centre test metric.
FLAMBY_HEART = {"pooled": 0.735, "fedavg": 0.685, "fedprox": 0.685, "scaffold": 0.684,
                "cyclic": 0.718, "fedadagrad": 0.731, "fedyogi": 0.731, "fedadam": 0.726}
FLAMBY_TCGA = {"pooled": 0.676, "fedavg": 0.732, "fedprox": 0.729, "scaffold": 0.687,
               "cyclic": 0.658, "fedadagrad": 0.813, "fedyogi": 0.815, "fedadam": 0.815}


def _heart_baselines(seed: int, job: Job) -> tuple[Scores, Scores]:
    cfg = job.strategy.configure_train(1, HOSPITALS[0])
    flamby_split = job.source is not None and job.source.params.get("split") == "flamby"
    data = {h: load_hospital_flamby(h) for h in HOSPITALS} if flamby_split else None
    base = run_baselines(seed=seed, num_rounds=job.num_rounds,
                         local_steps=int(cfg["local_steps"]), lr=float(cfg["lr"]),
                         batch_size=int(cfg["batch_size"]),
                         weight_decay=float(cfg["weight_decay"]), data=data)
    return base.local_metrics, base.pooled_metrics


def _tcga_baselines(seed: int, job: Job) -> tuple[Scores, Scores]:
    cfg = job.strategy.configure_train(1, CENTERS[0])
    return tcga.run_baselines(seed=seed, num_rounds=job.num_rounds,
                              local_steps=int(cfg["local_steps"]), lr=float(cfg["lr"]))


@dataclass(frozen=True)
class Benchmark:
    title: str
    entry_point: str
    metrics: tuple[str, ...]  # the first is FLamby's
    sites: tuple[str, ...]
    flamby: dict[str, float]
    baselines: Callable[[int, Job], tuple[Scores, Scores]]


BENCHMARKS = {
    "heart": Benchmark("Fed-Heart-Disease", "fedcare.jobs.heart:make_job",
                       ("accuracy", "auc"), HOSPITALS, FLAMBY_HEART, _heart_baselines),
    "tcga": Benchmark("Fed-TCGA-BRCA", "fedcare.jobs.tcga:make_job", ("c_index",),
                      CENTERS, FLAMBY_TCGA, _tcga_baselines),
}

#: Algorithm settings used by the benchmark (server learning rates as in FLamby's grid).
ALGORITHMS: dict[str, dict[str, float]] = {
    "fedavg": {}, "fedprox": {"mu": 0.1}, "fedadam": {"server_lr": 0.1},
    "fedyogi": {"server_lr": 0.1}, "fedadagrad": {"server_lr": 0.1}, "fedavgm": {},
    "cyclic": {}, "median": {}, "trimmed_mean": {"trim": 0.25}, "clipped": {"max_norm": 1.0},
    "scaffold": {},
}


@dataclass(frozen=True)
class Row:
    """One method's ``metric``: per seed the per-centre mean (``per_seed``, FLamby's) and the
    value from sums over all centres' test rows (``pooled_per_seed``)."""

    method: str
    metric: str
    per_seed: list[float]
    per_centre: dict[str, float]
    pooled_per_seed: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_seed))

    @property
    def std(self) -> float:
        return float(np.std(self.per_seed))

    @property
    def pooled_mean(self) -> float:
        return float(np.mean(self.pooled_per_seed))

    @property
    def pooled_std(self) -> float:
        return float(np.std(self.pooled_per_seed))


def centre_mean(run: Scores, metric: str, sites: tuple[str, ...]) -> float:
    """FLamby's number: the unweighted mean of the centres' own ``metric`` (NaN ones out)."""
    return float(np.nanmean([run.get(s, {}).get(metric, np.nan) for s in sites]))


def from_sums(run: Scores, sites: tuple[str, ...]) -> dict[str, float]:
    """The metrics of all centres' test rows, from the centres' parts summed, as the server
    computes them (:class:`fedcare.server.metrics.WeightedMetrics`)."""
    return pooled_metrics(summed_parts([run[s] for s in sites if s in run]))


def _federated(bench: Benchmark, algorithm: str, seed: int, params: dict[str, object]
               ) -> tuple[Scores, dict[str, float]]:
    """Each centre's test metrics after the last round, and the federation's (from the
    parts the server summed: it keeps no centre's histogram bins)."""
    job = load_job(bench.entry_point, {**params, "seed": seed, "algorithm": algorithm,
                                       "algorithm_params": ALGORITHMS[algorithm]})
    last = simulate(job).history.rounds[-1]
    per_site = {s: dict(last.site_eval[s].metrics) for s in bench.sites if s in last.site_eval}
    return per_site, dict(last.eval_metrics)


def run_benchmark(seeds: int, params: dict[str, object] | None = None,
                  algorithms: list[str] | None = None, dataset: str = "heart") -> list[Row]:
    """Rows for local, pooled and each algorithm, over seeds 0..seeds-1, for each metric of
    the data set (the first metric's rows first)."""
    bench = BENCHMARKS[dataset]
    # Heart: FLamby's own per-centre split, the same for every seed (seeds vary the init).
    params = {**({"split": "flamby"} if dataset == "heart" else {}), **(params or {})}
    names = algorithms or list(ALGORITHMS)
    # per method and seed: (each centre's metrics, the metrics from sums over centres)
    per_method: dict[str, list[tuple[Scores, dict[str, float]]]] = {
        m: [] for m in ["local", "pooled", *names]}
    for seed in range(seeds):
        local, pooled = bench.baselines(seed, load_job(bench.entry_point,
                                                       {**params, "seed": seed}))
        per_method["local"].append((local, from_sums(local, bench.sites)))
        per_method["pooled"].append((pooled, from_sums(pooled, bench.sites)))
        for name in names:
            per_method[name].append(_federated(bench, name, seed, params))
    rows = []
    for metric in bench.metrics:
        for method, runs in per_method.items():
            per_centre = {s: float(np.nanmean([r.get(s, {}).get(metric, np.nan)
                                               for r, _ in runs])) for s in bench.sites}
            rows.append(Row(method, metric, [centre_mean(r, metric, bench.sites) for r, _ in runs],
                            per_centre, [sums.get(metric, np.nan) for _, sums in runs]))
    return rows


def write_results(rows: list[Row], out_dir: Path, seeds: int, dataset: str = "heart"
                  ) -> dict[str, Path]:
    """results.csv, results.md (one table per metric, beside FLamby's numbers) and
    results.png (bar chart of the first metric)."""
    bench = BENCHMARKS[dataset]
    sites = bench.sites
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["metric", "method", "mean", "std", "from_sums", "from_sums_std",
                         *sites, "flamby"])
        for r in rows:
            flamby = bench.flamby.get(r.method, "") if r.metric == bench.metrics[0] else ""
            writer.writerow([r.metric, r.method, f"{r.mean:.4f}", f"{r.std:.4f}",
                             f"{r.pooled_mean:.4f}", f"{r.pooled_std:.4f}",
                             *(f"{r.per_centre[h]:.4f}" for h in sites), flamby])
    lines = []
    for metric in bench.metrics:
        first = metric == bench.metrics[0]
        lines += [f"{bench.title}, {metric}: mean per-centre test metric (FLamby's) and the "
                  f"metric of all centres' test rows from summed parts, {seeds} seed(s)", "",
                  "| method | per-centre mean ± sd | from sums ± sd | FLamby | "
                  + " | ".join(sites) + " |", "|---|---|---|---|" + "---|" * len(sites)]
        for r in (r for r in rows if r.metric == metric):
            flamby = bench.flamby.get(r.method) if first else None
            lines.append(f"| {r.method} | {r.mean:.3f} ± {r.std:.3f} | "
                         f"{r.pooled_mean:.3f} ± {r.pooled_std:.3f} | "
                         f"{'' if flamby is None else f'{flamby:.3f}'} | "
                         + " | ".join(f"{r.per_centre[h]:.3f}" for h in sites) + " |")
        lines.append("")
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(lines))
    png_path = out_dir / "results.png"
    _bar_chart([r for r in rows if r.metric == bench.metrics[0]], png_path, seeds, bench)
    return {"csv": csv_path, "md": md_path, "png": png_path}


def _bar_chart(rows: list[Row], path: Path, seeds: int, bench: Benchmark) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=120)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r.mean for r in rows], 0.4, yerr=[r.std for r in rows], capsize=3,
           label=f"fedcare ({seeds} seeds)")
    flamby = [bench.flamby.get(r.method, np.nan) for r in rows]
    ax.bar(x + 0.2, flamby, 0.4, label="FLamby (published)", color="grey")
    ax.set_xticks(x, [r.method for r in rows], rotation=30, ha="right")
    ax.set_ylim(0.5, 0.9)
    ax.set_ylabel(f"mean per-centre {bench.metrics[0]}")
    ax.set_title(bench.title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
