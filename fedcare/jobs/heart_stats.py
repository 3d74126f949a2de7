"""Federated descriptive statistics of the four heart-disease hospitals, as a job of its own.

Each hospital's 13 raw attributes, missing values (``?`` in the UCI files) included, never
leave it: the sites send per-column sums, the server combines them in four passes (mean, then
variance about the global mean, an age histogram, missing-value counts). Nothing is trained::

    fedcare simulate fedcare.jobs.heart_stats:make_job

The result is the job's model (``mean``, ``std``, ``histogram``, ``missing``, ...) and
``statistics.json`` in the run folder.
"""

from __future__ import annotations

import numpy as np

from fedcare.algorithms.fedavg import FedAvg
from fedcare.analytics import Histogram, Mean, MissingValues, Variance, site_statistics
from fedcare.core.job import Job
from fedcare.core.message import Config, EvalResult, StatsResult, TrainResult
from fedcare.core.trainer import SiteContext
from fedcare.core.weights import Weights
from fedcare.datasets.heart import HOSPITALS, load_raw_columns
from fedcare.server.workflows import FederatedStatistics


class HeartStatsSite:
    """One hospital's raw attributes; answers statistics tasks only."""

    def __init__(self, context: SiteContext) -> None:
        self.x = load_raw_columns(context.site_id, context.data_dir)

    def statistics(self, config: Config, model: Weights | None = None) -> StatsResult:
        return site_statistics(self.x, config, model)

    def train(self, weights: Weights, config: Config) -> TrainResult:
        raise NotImplementedError("a statistics job does not train")

    def evaluate(self, weights: Weights, config: Config) -> EvalResult:
        raise NotImplementedError("a statistics job does not evaluate")


def make_job(age_bins: int = 10) -> Job:
    passes = (Mean(), Variance(), MissingValues(), Histogram(age_bins, 20.0, 80.0))
    return Job(name="heart-stats", initial_weights=lambda: Weights({}),
               trainer=HeartStatsSite, strategy=FedAvg(), num_rounds=0,
               site_ids=HOSPITALS, min_sites=len(HOSPITALS),
               workflows=(FederatedStatistics(*passes),))


def pooled(data: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The same statistics computed on pooled rows (what the federation must equal)."""
    x = np.concatenate(data)
    return {"mean": np.nanmean(x, axis=0), "std": np.nanstd(x, axis=0, ddof=1),
            "missing": np.isnan(x).sum(axis=0).astype(np.float64)}
