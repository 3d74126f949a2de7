"""The hippocampus demo's baselines, table, figure and run folder.

FedAvg is compared on every site's test volumes with two centrally trained baselines of the
same budget (the job's rounds x local epochs, the same learning rate and batch size):
*local*, each hospital training alone on its own seven volumes, and *pooled*, one model on
all 21 training volumes (the upper baseline a federation tries to reach).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedcare.core.config import load_job
from fedcare.core.job import Job
from fedcare.core.trainer import SiteContext
from fedcare.core.weights import Weights
from fedcare.datasets.hippocampus import LABELS, SITES
from fedcare.jobs.hippocampus_site import make_trainer
from fedcare.medical.nifti import Volume
from fedcare.medical.segmentation import NetSpec, SegmentationTrainer
from fedcare.pytorch import set_weights
from fedcare.server.history import History

ENTRY_POINT = "fedcare.jobs.hippocampus:make_job"
COLUMNS = ("local", "fedavg", "pooled")
METRICS = (*(f"dice_{n}" for n in list(LABELS.values())[1:]), "dice_mean")
#: Reported for full-size supervised 3D models on the whole task (nnU-Net on the Decathlon's
#: hippocampus, mean of anterior and posterior Dice; Isensee et al., Nature Methods 2021).
FULL_SIZE_REFERENCE = "about 0.89-0.90"
Table = dict[str, dict[str, dict[str, float]]]  # column -> site (and "mean") -> metric -> value


@dataclass(frozen=True)
class Budget:
    """What each baseline trains: the federation's total epochs, learning rate, batch size."""

    epochs: int
    lr: float
    batch_size: int

    @staticmethod
    def of(job: Job) -> Budget:
        config = job.strategy.configure_train(1, SITES[0])
        return Budget(job.num_rounds * int(config["local_epochs"]), float(config["lr"]),
                      int(config["batch_size"]))


def job_of(params: Mapping[str, object]) -> Job:
    return load_job(ENTRY_POINT, dict(params))


def site_trainer(job: Job, site_id: str) -> SegmentationTrainer:
    """A site's trainer as the job builds it at that site (packaged partition)."""
    ctx = SiteContext(site_id, SITES.index(site_id), len(SITES), seed=job.seed)
    return make_trainer(ctx, **job.trainer_params)


def _pooled_trainer(job: Job, trainers: Mapping[str, SegmentationTrainer]
                    ) -> SegmentationTrainer:
    params = dict(job.trainer_params)
    train: list[Volume] = []
    test: list[Volume] = []
    for t in trainers.values():
        train += t.train_volumes
        test += t.test_volumes
    return SegmentationTrainer(
        train, test, label_names=list(LABELS.values()), roi_size=params["roi_size"],
        window_size=params.get("window_size"),
        spec=NetSpec(len(LABELS), tuple(params["channels"]), norm=params["norm"]),
        seed=job.seed, data_seed=job.seed * 1000 + len(SITES))


def with_mean(per_site: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Adds a ``mean`` entry: the unweighted mean over sites of each metric."""
    sites = list(per_site)
    return {**per_site, "mean": {m: float(np.mean([per_site[s][m] for s in sites]))
                                 for m in METRICS}}


def baseline(params: Mapping[str, object], which: str) -> dict[str, dict[str, float]]:
    """One baseline, for the job's budget: ``which`` is a site id (that site trains alone on
    its own volumes; Dice on its test volumes) or "pooled" (one model on every site's
    training volumes; Dice on each site's test volumes). One math thread: baselines run side
    by side in processes, which small 3D convolutions use better than threads."""
    torch.set_num_threads(1)
    job = job_of(params)
    budget = Budget.of(job)
    if which != "pooled":
        trainer = site_trainer(job, which)
        trainer.fit(budget.epochs, budget.lr, budget.batch_size)
        return {which: trainer.dice()}
    trainers = {s: site_trainer(job, s) for s in SITES}
    pooled = _pooled_trainer(job, trainers)
    pooled.fit(budget.epochs, budget.lr, budget.batch_size)
    return {s: pooled.dice(t.test_names) for s, t in trainers.items()}


def local_and_pooled(params: Mapping[str, object], workers: int | None = None
                     ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """The local baseline of every site and the pooled baseline, in ``workers`` processes
    (default: one per core, at most four). The pooled run goes first: it is the longest."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {w: pool.submit(baseline, dict(params), w) for w in ("pooled", *SITES)}
        results = {w: f.result() for w, f in futures.items()}
    local = {s: results[s][s] for s in SITES}
    return local, results["pooled"]


def fedavg_scores(history: History) -> dict[str, dict[str, float]]:
    """Each site's Dice of the final global model, as the site reported it."""
    last = history.rounds[-1]
    return {s: {m: last.site_eval[s].metrics[m] for m in METRICS} for s in SITES
            if s in last.site_eval}


def table_of(local: dict[str, dict[str, float]], fedavg: dict[str, dict[str, float]],
             pooled: dict[str, dict[str, float]]) -> Table:
    return {"local": with_mean(local), "fedavg": with_mean(fedavg),
            "pooled": with_mean(pooled)}


def write_summary(directory: Path, table: Table, extra: Mapping[str, object]) -> list[Path]:
    """``summary.json`` (table and run facts) and ``summary.csv`` (site x column x metric)."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = directory / "summary.json", directory / "summary.csv"
    json_path.write_text(json.dumps({"table": table, **extra,
                                     "full_size_reference": FULL_SIZE_REFERENCE}, indent=1))
    header = ["site"] + [f"{c}_{m}" for c in COLUMNS for m in METRICS]
    lines = [",".join(header)]
    for site in (*SITES, "mean"):
        lines.append(",".join([site] + [f"{table[c][site][m]:.4f}" for c in COLUMNS
                                        for m in METRICS]))
    csv_path.write_text("\n".join(lines) + "\n")
    return [json_path, csv_path]


def slice_figure(job: Job, weights: Weights, path: Path) -> Path:
    """A PNG: for one test volume per site, the axial slice with the most hippocampus;
    image, ground truth, and the global model's prediction (with that volume's Dice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = ListedColormap([(0, 0, 0, 0), (0.95, 0.3, 0.2, 0.7), (0.2, 0.6, 1.0, 0.7)])
    fig, axes = plt.subplots(len(SITES), 3, figsize=(7.5, 2.8 * len(SITES)), squeeze=False)
    for row, site_id in enumerate(SITES):
        trainer = site_trainer(job, site_id)
        set_weights(trainer.model, weights)
        name, image, label = trainer.test_images()[0]
        prediction = trainer.predict(image)[0].numpy()
        truth = label[0].numpy()
        z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
        dice = trainer.dice_per_case()[name]
        shown = [("image", None), ("ground truth", truth), ("FedAvg prediction", prediction)]
        for col, (title, overlay) in enumerate(shown):
            ax = axes[row][col]
            ax.imshow(image[0, :, :, z].numpy().T, cmap="gray", origin="lower")
            if overlay is not None:
                ax.imshow(overlay[:, :, z].T, cmap=colours, vmin=0, vmax=2, origin="lower",
                          interpolation="nearest")
            label_text = f"{site_id} {name}" if col == 0 else title
            if col == 2:
                label_text += f"\nDice ant {dice[0]:.2f} post {dice[1]:.2f}"
            ax.set_title(label_text, fontsize=8)
            ax.axis("off")
    fig.suptitle("Axial slices: red anterior, blue posterior hippocampus", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
