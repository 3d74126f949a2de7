"""``fedcare bench medmnist``: federated vs pooled vs local-only training on MedMNIST.

Per data set and seed, with the same network, optimiser and budget in every arm:

* **pooled**: one model trained on the whole official training split for
  ``rounds x local_epochs`` epochs (the upper bound a federation aims at);
* **local**: each simulated site trains alone on its label-skewed share for as many epochs;
  the row is the mean over sites (what a hospital gets without federating);
* **fedavg**: the medmnist job in the simulator, ``rounds`` rounds of ``local_epochs`` at each
  site, FedAvg.

Every model is scored on the whole official test split (ROC AUC and accuracy), so the three
rows and the MedMNIST v2 paper's numbers (:data:`PAPER`) are on the same images. The sites
are a Dirichlet(alpha) label-skew partition of the official training split.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from fedcare.core.config import load_job
from fedcare.core.errors import SiteError
from fedcare.core.weights import Weights
from fedcare.medical.classification import ClassificationTrainer
from fedcare.medical.device import pick_compute
from fedcare.medical.medmnist import MedMnist, load, site_data
from fedcare.sim.simulator import simulate

DATASETS = ("breastmnist", "pneumoniamnist", "adrenalmnist3d", "vesselmnist3d")
METHODS = ("pooled", "local", "fedavg")

#: MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023, Tables 3 and 4), test split, as
#: (AUC, ACC); None where the value could not be verified. The paper's table itself could not
#: be opened here: every number is as quoted by at least one secondary source named in
#: docs/benchmarks.md ("MedMNIST (classification)"), which also says which are unverified.
PAPER: dict[str, dict[str, tuple[float, float | None]]] = {
    "breastmnist": {"ResNet-18 (28)": (0.901, 0.863), "ResNet-50 (224)": (0.866, 0.842)},
    "pneumoniamnist": {"ResNet-18 (28)": (0.944, 0.854), "ResNet-50 (224)": (0.962, 0.884)},
    "adrenalmnist3d": {"ResNet-50+3D": (0.828, 0.745)},
    "vesselmnist3d": {"ResNet-18+3D": (0.874, None), "ResNet-50+3D": (0.907, 0.918)},
}


@dataclass(frozen=True)
class Settings:
    """One benchmark's knobs; pooled and local training get ``rounds * local_epochs`` epochs."""

    sites: int = 3
    alpha: float = 0.5
    rounds: int = 10
    local_epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    width: int = 16
    device: str = "auto"
    #: torch's intra-op threads for the run: 1 is faster per image on a small shared CPU (the
    #: simulated sites already run in parallel threads), and keeps CPU time comparable.
    threads: int = 1

    @property
    def epochs(self) -> int:
        return self.rounds * self.local_epochs


Scores = dict[str, float]


@dataclass(frozen=True)
class SeedResult:
    """One data set and seed: each arm's scores on the official test split."""

    pooled: Scores
    local: Scores
    fedavg: Scores
    local_per_site: list[Scores]
    #: The last round's federated evaluation: sites' test shares, weighted by size.
    fedavg_site_shares: Scores
    wall_s: dict[str, float]
    #: CPU seconds of this process (all its threads), per arm: contention-free cost.
    cpu_s: dict[str, float]
    site_label_counts: list[list[int]]


def site_label_counts(data: MedMnist, settings: Settings, seed: int) -> list[list[int]]:
    """Training images of each class at each simulated site (shows the skew)."""
    counts = []
    for k in range(settings.sites):
        train, _ = site_data(data, k, settings.sites, alpha=settings.alpha, seed=seed)
        counts.append(np.bincount(train.labels, minlength=data.subset.num_classes).tolist())
    return counts


def run_seed(name: str, seed: int, settings: Settings) -> SeedResult:
    """Pooled, local and FedAvg scores of one data set for one seed, with wall times."""
    data = load(name)
    config = {"local_epochs": settings.epochs, "lr": settings.lr,
              "batch_size": settings.batch_size}
    compute = pick_compute(settings.device)

    def trainer(images: np.ndarray, labels: np.ndarray, test: bool,
                shuffle_seed: int) -> ClassificationTrainer:
        rows = len(data.test.labels) if test else 0
        return ClassificationTrainer(
            images, labels, data.test.images[:rows], data.test.labels[:rows], seed=seed,
            shuffle_seed=shuffle_seed, spatial_dims=data.subset.spatial_dims,
            num_classes=data.subset.num_classes, width=settings.width, compute=compute)

    # The pooled trainer holds the whole official test split: it scores every arm's model.
    pooled = trainer(data.train.images, data.train.labels, True, seed * 1000 + 999)
    initial = pooled.initial_model()

    def score(weights: Weights) -> Scores:
        metrics = pooled.evaluate(weights, {}).metrics
        return {"auc": float(metrics["auc"]), "accuracy": float(metrics["accuracy"])}

    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def clock(arm: str, started: tuple[float, float]) -> None:
        wall[arm] = round(time.perf_counter() - started[0], 1)
        cpu[arm] = round(time.process_time() - started[1], 1)

    start = (time.perf_counter(), time.process_time())
    pooled_scores = score(pooled.train(initial, config).weights)
    clock("pooled", start)

    start = (time.perf_counter(), time.process_time())
    per_site = []
    for k in range(settings.sites):
        train, _ = site_data(data, k, settings.sites, alpha=settings.alpha, seed=seed)
        alone = trainer(train.images, train.labels, False, seed * 1000 + k)
        per_site.append(score(alone.train(initial, config).weights))
    clock("local", start)

    start = (time.perf_counter(), time.process_time())
    job = load_job("fedcare.jobs.medmnist:make_job", {
        "dataset": name, "alpha": settings.alpha, "num_rounds": settings.rounds,
        "local_epochs": settings.local_epochs, "lr": settings.lr,
        "batch_size": settings.batch_size, "seed": seed, "width": settings.width,
        "device": settings.device, "min_sites": settings.sites, "test": "share"})
    result = simulate(job, num_sites=settings.sites)
    if result.failed_sites:
        raise SiteError(f"{name} seed {seed}: the federated run failed: {result.summary}")
    fedavg_scores = score(result.weights)
    clock("fedavg", start)
    return SeedResult(
        pooled=pooled_scores,
        local={m: float(np.mean([s[m] for s in per_site])) for m in ("auc", "accuracy")},
        fedavg=fedavg_scores, local_per_site=per_site,
        fedavg_site_shares={k: float(v) for k, v in
                            result.history.rounds[-1].eval_metrics.items()},
        wall_s=wall, cpu_s=cpu, site_label_counts=site_label_counts(data, settings, seed))


def run_benchmark(datasets: tuple[str, ...] | list[str], seeds: int,
                  settings: Settings) -> dict[str, Any]:
    """Every data set x seed: means and standard deviations over seeds per method, and each
    run in full (a JSON-ready dict)."""
    results: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        for name in datasets:
            results[name] = _summary([run_seed(name, seed, settings) for seed in range(seeds)])
    finally:
        torch.set_num_threads(threads)
    return {"settings": asdict(settings), "seeds": seeds, "results": results,
            "paper": {k: {m: {"auc": v[0], "accuracy": v[1]} for m, v in rows.items()}
                      for k, rows in PAPER.items()}}


def _summary(runs: list[SeedResult]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of each arm's AUC and accuracy, and the runs."""
    summary: dict[str, Any] = {}
    for method in METHODS:
        per_seed = [getattr(run, method) for run in runs]
        summary[method] = {
            metric: {"mean": float(np.mean([s[metric] for s in per_seed])),
                     "sd": float(np.std([s[metric] for s in per_seed])),
                     "per_seed": [s[metric] for s in per_seed]}
            for metric in ("auc", "accuracy")}
    summary["runs"] = [asdict(run) for run in runs]
    return summary


def table(report: dict[str, Any]) -> str:
    """A markdown table: our three rows per data set beside the paper's ResNets."""
    lines = ["| data set | method | AUC | ACC |", "|---|---|---|---|"]
    for name, summary in report["results"].items():
        for method in METHODS:
            row = summary[method]
            lines.append(f"| {name} | fedcare {method} | {row['auc']['mean']:.3f} ± "
                         f"{row['auc']['sd']:.3f} | {row['accuracy']['mean']:.3f} ± "
                         f"{row['accuracy']['sd']:.3f} |")
        for model, (auc, acc) in PAPER.get(name, {}).items():
            lines.append(f"| {name} | paper {model} | {auc:.3f} | "
                         f"{'n/v' if acc is None else f'{acc:.3f}'} |")
    return "\n".join(lines)
