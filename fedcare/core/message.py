"""What travels between the controller and a site: a Task out, a Reply back.

Messages are frozen dataclasses with typed fields and only JSON scalars and numpy arrays inside,
so every transport can encode them without pickle. A Reply holds a result or an error, never
both: a failure at a site is data the controller decides about, not an exception that crosses
the wire.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from fedcare.core.weights import Weights

#: Settings sent with a task (learning rate, local steps, ...): JSON scalars only.
Scalar = bool | int | float | str
Config = Mapping[str, Scalar]
#: Named scalar metrics a site reports (loss, accuracy, ...).
Metrics = Mapping[str, float]


class TaskKind(StrEnum):
    """What a site is asked to do. New protocols (key exchange, cross-site validation) add kinds."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    STATISTICS = "statistics"


@dataclass(frozen=True)
class TrainResult:
    """A site's locally trained model, the number of samples it trained on, and its metrics."""

    weights: Weights
    num_samples: int
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    """Metrics of the global model on a site's held-out data."""

    num_samples: int
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class StatsResult:
    """Additive statistics of a site's data (counts, sums, sums of squares), never rows."""

    values: Weights
    num_samples: int


Result = TrainResult | EvalResult | StatsResult


@dataclass(frozen=True)
class Task:
    """One unit of work for one site in one round."""

    task_id: str
    job_id: str
    round_num: int
    kind: TaskKind
    weights: Weights | None = None
    config: Config = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A site's answer to a task: ``result`` on success, ``error`` (a message) on failure."""

    task_id: str
    site_id: str
    result: Result | None = None
    error: str | None = None
    #: Set by the server's transport when the site's connection was lost with the task
    #: outstanding (an outage, not a bad result); never sent over the wire.
    connection_lost: bool = False
    #: Set by a transport that folded the result's tensors into the round's aggregate as they
    #: arrived (``result.weights`` is then empty); never sent over the wire.
    folded: bool = False

    def __post_init__(self) -> None:
        if (self.result is None) == (self.error is None):
            raise ValueError("a Reply holds exactly one of result and error")


def check_scalars(values: Mapping[str, object], what: str) -> None:
    """Refuse config or metric values that are not finite JSON scalars."""
    for key, value in values.items():
        if not isinstance(key, str):
            raise TypeError(f"{what} keys must be strings, got {key!r}")
        if not isinstance(value, bool | int | float | str):
            raise TypeError(f"{what} {key!r} must be a bool, int, float or str, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{what} {key!r} is not finite: {value}")


#: Reserved config keys by which a server tells a real site which job a task belongs to, so
#: the site can build (and its policy can refuse) the job's trainer itself. The simulator's
#: sites are built directly and never see them.
JOB_ENTRY_POINT_KEY = "fedcare.job.entry_point"
JOB_PARAMS_KEY = "fedcare.job.params"
SITE_INDEX_KEY = "fedcare.site.index"
NUM_SITES_KEY = "fedcare.site.count"
RESERVED_KEYS = (JOB_ENTRY_POINT_KEY, JOB_PARAMS_KEY, SITE_INDEX_KEY, NUM_SITES_KEY)
#: Regular expressions (JSON list) naming parameters that must not leave the site (FedBN).
LOCAL_LAYERS_KEY = "fedcare.local_layers"
