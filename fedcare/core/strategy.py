"""The server side of a job: how sites are chosen, configured, and their results combined.

Aggregation is incremental: the controller feeds an :class:`Aggregator` one result at a time as
results arrive and drops each one after ``add``, so server memory does not grow with the number of
sites. Algorithms that cannot be computed this way (median, Krum) must say so and bound memory.
An aggregator that can fold a result in element run by element run (FedAvg) also offers
:meth:`Aggregator.stream`, so a transport can aggregate an upload while it is still arriving.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from fedcare.core.message import Config, TrainResult
from fedcare.core.stream import UpdateStream
from fedcare.core.weights import TensorSpec, Weights


class Aggregator(ABC):
    """Combines one round's site results into the next global model."""

    @abstractmethod
    def add(self, site_id: str, result: TrainResult) -> None:
        """Fold in one validated result; the caller may drop ``result`` afterwards."""

    def stream(self, site_id: str, num_samples: int,
               specs: Sequence[TensorSpec]) -> UpdateStream | None:
        """Fold a result in as its tensors arrive (see :mod:`fedcare.core.stream`), or None.

        None by default: the result is then delivered whole to :meth:`add`. An aggregator that
        needs a whole update at once (a norm, a median) keeps the default. ``specs`` were
        already checked against the expected model.
        """
        return None

    @property
    @abstractmethod
    def num_results(self) -> int:
        """How many results have been folded in."""

    @abstractmethod
    def finish(self) -> Weights:
        """The new global model; only called when at least one result was added."""


class Strategy(ABC):
    """An aggregation algorithm: site selection, per-round configuration and aggregation."""

    def select_sites(self, round_num: int, available: Sequence[str]) -> list[str]:
        """Sites asked to train this round; all of them by default."""
        return list(available)

    def configure_train(self, round_num: int, site_id: str) -> Config:
        """Settings sent with the training task (e.g. learning rate, local steps)."""
        return {}

    def configure_evaluate(self, round_num: int, site_id: str) -> Config:
        """Settings sent with the evaluation task."""
        return {}

    def local_names(self, global_weights: Weights) -> frozenset[str]:
        """Parameters that never leave the sites (e.g. FedBN's batch-norm layers).

        Sites do not send them (every task names them in ``Task.local_names``), the
        controller does not expect them, and the global model keeps its initial values for
        them. Empty by default.
        """
        return frozenset()

    def train_payload(self, round_num: int, global_weights: Weights) -> Weights:
        """What a training task carries: the global model, plus any server state the sites
        need (e.g. SCAFFOLD's control variate). The global model by default."""
        return global_weights

    def result_spec(self, global_weights: Weights) -> Weights:
        """Names, shapes and dtypes a training result must have: the global model without its
        local parameters by default; a strategy whose sites send more says so here."""
        local = self.local_names(global_weights)
        if not local:
            return global_weights
        return Weights({k: v for k, v in global_weights.items() if k not in local})

    def state(self) -> dict[str, np.ndarray]:
        """Server-side state carried across rounds (optimiser moments, control variates),
        checkpointed with the model so a resumed job continues exactly. None by default."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:  # noqa: B027
        """Restore what :meth:`state` returned (when a job resumes)."""

    def round_metrics(self, round_num: int) -> dict[str, float]:
        """Numbers of the server's own about a round just aggregated (e.g. the privacy spent
        so far), recorded beside the sites' training metrics. None by default."""
        return {}

    def check_job(self, *, min_sites: int, num_sites: int | None) -> None:  # noqa: B027
        """Refuse (ConfigError) a job this strategy cannot run, e.g. too few sites for Krum.

        Called when the Job is built, so a bad combination fails at submission.
        ``num_sites`` is the job's declared number of sites, or None when any will do.
        """

    @abstractmethod
    def aggregator(self, round_num: int, global_weights: Weights) -> Aggregator:
        """A fresh aggregator for one round, starting from the current global model."""
