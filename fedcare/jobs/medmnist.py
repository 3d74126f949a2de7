"""MedMNIST image classification across simulated (or real) hospitals.

The job's server half (strategy, rounds) imports no torch; the site half, the data and the
MONAI trainer, is :mod:`fedcare.jobs.medmnist_site`. The same job runs in the simulator
(``fedcare simulate fedcare.jobs.medmnist:make_job --sites 3``) and in a real federation: a
site with its own ``<dataset>.npz`` in its kit's data folder trains on that, any other carves
its label-skewed share of the shipped copy by its index among the job's sites.

Models start from one site's initial model (``initial_weights=None``), so the server needs
neither torch nor MONAI.
"""

from __future__ import annotations

import math
from typing import Any

from fedcare import algorithms
from fedcare.algorithms.fedbn import DEFAULT_LOCAL
from fedcare.core.errors import ConfigError
from fedcare.core.job import Job
from fedcare.datasets.medmnist import FILES
from fedcare.jobs.strategies import build_strategy

#: Strategies whose site side is plain local training (FedProx and SCAFFOLD need terms in the
#: site's loss that this trainer does not add, so they are not offered).
ALGORITHMS: dict[str, Any] = {
    "fedavg": algorithms.FedAvg, "fedavgm": algorithms.FedAvgM,
    "fedadam": algorithms.FedAdam, "fedyogi": algorithms.FedYogi,
    "fedadagrad": algorithms.FedAdagrad, "fedbn": algorithms.FedBN,
    "median": algorithms.Median, "trimmed_mean": algorithms.TrimmedMean,
}
#: FedBN's local layers for the MONAI ResNet: the usual names plus the batch norm of each
#: shortcut (``layerN.0.downsample.1``), which the usual names miss. A test checks these
#: select exactly what :func:`fedcare.pytorch.batch_norm_patterns` finds by layer type.
BATCH_NORM_LAYERS = (*DEFAULT_LOCAL, r"(^|\.)downsample\.1\.")
TEST_MODES = ("share", "all")


def make_job(
    *,
    dataset: str = "breastmnist",
    alpha: float = 0.5,
    num_rounds: int = 10,
    local_epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    seed: int = 0,
    split_seed: int | None = None,
    test: str = "share",
    width: int = 16,
    device: str = "auto",
    min_sites: int = 2,
    round_timeout_s: float = 1800.0,
    algorithm: str = "fedavg",
    algorithm_params: dict[str, Any] | None = None,
) -> Job:
    """The MedMNIST job.

    Args:
        dataset: One of ``breastmnist``, ``pneumoniamnist``, ``adrenalmnist3d``,
            ``vesselmnist3d``.
        alpha: Dirichlet concentration of the simulated sites' label skew (0.5 strong, 100
            near IID); the partition is drawn with ``split_seed`` (default ``seed``).
        test: "share": each site is evaluated on its share of the official test split;
            "all": on the whole official test split (the federated metric is then the
            global one).
        width: Channels of the ResNet's first stage (16: minutes on a CPU; 64: paper width).
        device: "auto" (CUDA with mixed precision when the site has it), "cpu" or "cuda".
    """
    if dataset not in FILES:
        raise ConfigError(f"medmnist job: dataset must be one of {sorted(FILES)}, "
                          f"got {dataset!r}")
    if test not in TEST_MODES:
        raise ConfigError(f"medmnist job: test must be one of {TEST_MODES}, got {test!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not (
            math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"medmnist job: alpha must be a number > 0, got {alpha!r}")
    if local_epochs < 1 or not lr > 0 or batch_size < 2 or weight_decay < 0 or width < 1:
        raise ConfigError("medmnist job: need local_epochs >= 1, lr > 0, batch_size >= 2, "
                          f"weight_decay >= 0, width >= 1 (got {local_epochs}, {lr}, "
                          f"{batch_size}, {weight_decay}, {width})")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"medmnist job: algorithm must be one of {sorted(ALGORITHMS)}, "
                          f"got {algorithm!r}")
    params: dict[str, Any] = dict(algorithm_params or {})
    if algorithm == "fedbn":
        params.setdefault("local_layers", list(BATCH_NORM_LAYERS))
    strategy = build_strategy("medmnist", ALGORITHMS, algorithm, seed, {
        "local_epochs": local_epochs, "lr": lr, "batch_size": batch_size,
        "weight_decay": weight_decay}, params)
    return Job(
        name=f"medmnist-{dataset}",
        initial_weights=None,  # a site sends it: the server needs no torch
        trainer="fedcare.jobs.medmnist_site:make_trainer",
        trainer_params={"dataset": dataset, "alpha": float(alpha), "seed": seed,
                        "split_seed": split_seed, "test": test, "width": width,
                        "device": device},
        strategy=strategy,
        num_rounds=num_rounds,
        min_sites=min_sites,
        round_timeout_s=round_timeout_s,
        seed=seed,
    )
