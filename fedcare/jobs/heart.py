"""Fed-Heart-Disease: logistic regression across four real hospitals (FLamby's benchmark).

This module is the job's server half (strategy, statistics, rounds) and imports no torch; the
site half, the model and its trainer, is :mod:`fedcare.jobs.heart_site`.

The model carries its own input standardisation (``scaler_mean``/``scaler_std`` buffers), and
those are computed federatedly before round 1: each site reports only the count, sum and sum of
squares of its training features; the server combines them into global means and standard
deviations. No patient row leaves a site, and every hospital standardises the same way, which
keeps real differences between hospitals visible to the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcare import algorithms
from fedcare.core.dp import DpSgdSettings
from fedcare.core.errors import ConfigError
from fedcare.core.job import Job
from fedcare.core.weights import Weights
from fedcare.datasets.heart import HOSPITALS
from fedcare.jobs.strategies import build_strategy
from fedcare.server.workflows import CrossSiteValidation, FederatedStatistics, TrainRounds

PARTITIONS = ("natural", "iid", "label_skew", "quantity_skew")
ALGORITHMS = {
    "fedavg": algorithms.FedAvg, "fedprox": algorithms.FedProx, "fedadam": algorithms.FedAdam,
    "fedyogi": algorithms.FedYogi, "fedadagrad": algorithms.FedAdagrad,
    "fedavgm": algorithms.FedAvgM, "cyclic": algorithms.Cyclic, "median": algorithms.Median,
    "trimmed_mean": algorithms.TrimmedMean, "krum": algorithms.Krum,
    "clipped": algorithms.ClippedFedAvg, "scaffold": algorithms.Scaffold,
    "dp_fedavg": algorithms.DpFedAvg,
}
#: Parameters no site changes in training (set by the federated standardisation): DP-FedAvg
#: keeps them at their global values, without noise.
FROZEN = ("^scaler_",)


def standardisation(count: float, total: np.ndarray, total_sq: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation from sufficient statistics; constant features get std 1."""
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean, np.where(std > 1e-8, std, 1.0)


class FeatureMoments:
    """Global feature means and standard deviations from per-site sums."""

    name = "feature_moments"

    def finalize(self, totals: Weights, num_samples: int, weights: Weights) -> Weights:
        mean, std = standardisation(float(totals["count"][0]), totals["sum"], totals["sum_sq"])
        updated = dict(weights)
        updated["scaler_mean"] = mean.astype(np.float32)
        updated["scaler_std"] = std.astype(np.float32)
        return Weights(updated)


def make_job(
    *,
    num_rounds: int = 40,
    local_steps: int = 5,
    lr: float = 0.1,
    batch_size: int = 0,
    weight_decay: float = 0.0,
    seed: int = 0,
    split_seed: int | None = None,
    partition: str = "natural",
    alpha: float = 0.5,
    min_sites: int = 2,
    round_timeout_s: float = 120.0,
    algorithm: str = "fedavg",
    algorithm_params: dict[str, Any] | None = None,
    split: str = "seeded",
    dp: dict[str, float] | None = None,
    cross_site: bool = False,
) -> Job:
    """The heart-disease job.

    ``split``: "seeded" (a stratified per-centre split drawn with ``split_seed``, default
    ``seed``) or "flamby" (FLamby's fixed split, the same for every seed).

    Differential privacy: ``algorithm="dp_fedavg"`` with ``algorithm_params`` ``clip_norm``,
    ``delta`` and ``noise_multiplier`` or ``target_epsilon`` (client-level, noise added by the
    server; the standardisation buffers are kept frozen); ``dp`` = ``{max_grad_norm, delta,
    noise_multiplier | target_epsilon}`` trains every site by DP-SGD (sample-level, Opacus); a
    target epsilon is spread over ``num_rounds`` x ``local_steps`` steps.

    ``cross_site``: after training, cross-site validation (every hospital's local model and the
    global model, evaluated at every hospital: ``cross_site.json`` with the run).
    """
    if split not in ("seeded", "flamby"):
        raise ConfigError(f"heart job: split must be 'seeded' or 'flamby', got {split!r}")
    if partition not in PARTITIONS:
        raise ConfigError(f"heart job: partition must be one of {PARTITIONS}, got {partition!r}")
    if local_steps < 1 or not lr > 0 or batch_size < 0 or weight_decay < 0:
        raise ConfigError("heart job: need local_steps >= 1, lr > 0, batch_size >= 0, "
                          f"weight_decay >= 0 (got {local_steps}, {lr}, {batch_size}, "
                          f"{weight_decay})")
    if not isinstance(cross_site, bool):
        raise ConfigError(f"heart job: cross_site must be true or false, got {cross_site!r}")
    split_rng_seed = seed if split_seed is None else split_seed

    if algorithm not in ALGORITHMS:
        raise ConfigError(f"heart job: algorithm must be one of {sorted(ALGORITHMS)}, "
                          f"got {algorithm!r}")
    params: dict[str, Any] = dict(algorithm_params or {})
    if algorithm == "dp_fedavg":
        params.setdefault("frozen", FROZEN)
        if "target_epsilon" in params:
            params.setdefault("num_rounds", num_rounds)
    trainer_params: dict[str, Any] = {"seed": seed, "split_seed": split_rng_seed,
                                      "partition": partition, "alpha": alpha, "split": split}
    if dp is not None:
        if algorithm in ("fedprox", "scaffold"):
            raise ConfigError(f"heart job: dp (DP-SGD) cannot run with {algorithm}: its extra "
                              "terms are not clipped per row")
        dp_values = dict(dp) if isinstance(dp, dict) else dp
        if isinstance(dp_values, dict) and "target_epsilon" in dp_values:
            dp_values.setdefault("planned_steps", num_rounds * local_steps)
        trainer_params["dp"] = DpSgdSettings.from_mapping(dp_values).to_mapping()
    strategy = build_strategy("heart", ALGORITHMS, algorithm, seed, {
        "local_steps": local_steps, "lr": lr, "batch_size": batch_size,
        "weight_decay": weight_decay}, params)
    return Job(
        name="heart",
        initial_weights=None,  # a site sends it: the server needs no torch
        trainer="fedcare.jobs.heart_site:make_trainer",
        trainer_params=trainer_params,
        strategy=strategy,
        num_rounds=num_rounds,
        min_sites=1 if algorithm == "cyclic" else min_sites,
        round_timeout_s=round_timeout_s,
        site_ids=HOSPITALS if partition == "natural" else None,
        statistics=None if cross_site else FeatureMoments(),
        workflows=((FederatedStatistics(FeatureMoments()), TrainRounds(), CrossSiteValidation())
                   if cross_site else None),
        seed=seed,
    )
