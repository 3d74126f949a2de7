"""The site side of a job: what a researcher writes once and runs unchanged everywhere.

A trainer sees only its own site's data. It is built once per site by the job's trainer factory
and kept for the whole job, so it may hold state that persists across rounds (optimizer state,
SCAFFOLD control variates, FedBN layers that never leave the site).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from fedcare.core.message import Config, EvalResult, StatsResult, TrainResult
from fedcare.core.weights import Weights


@dataclass(frozen=True)
class SiteContext:
    """What a trainer factory knows about the site it builds a trainer for.

    In the simulator ``site_index``/``num_sites`` let a job carve its partition from a pooled data
    set; at a real hospital ``data_dir`` comes from the site's own configuration, never from the
    server.
    """

    site_id: str
    site_index: int
    num_sites: int
    seed: int = 0
    data_dir: Path | None = None


@runtime_checkable
class Trainer(Protocol):
    """Local training and evaluation on one site's data."""

    def train(self, weights: Weights, config: Config) -> TrainResult:
        """Start from ``weights`` (the global model), train locally, return the new model."""
        ...

    def evaluate(self, weights: Weights, config: Config) -> EvalResult:
        """Metrics of ``weights`` on this site's held-out data."""
        ...


@runtime_checkable
class StatisticsProvider(Protocol):
    """Optional trainer capability: additive statistics for a federated-statistics task."""

    def statistics(self, config: Config) -> StatsResult:
        """Sums over local rows (e.g. count, sum, sum of squares); never the rows themselves."""
        ...
