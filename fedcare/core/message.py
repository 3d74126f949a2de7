"""What travels between the controller and a site: a Task out, a Reply back.

Messages are frozen dataclasses with typed fields and only JSON scalars and numpy arrays inside,
so every transport can encode them without pickle. A Reply holds a result or an error, never
both: a failure at a site is data the controller decides about, not an exception that crosses
the wire.
"""

from __future__ import annotations

import math
import re
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
    """The task kinds fedcare's own workflows send.

    The list is open: a task's kind is any name matching :data:`KIND_PATTERN`, so a new
    workflow (a key exchange, a masked collection) adds kinds of its own without touching the
    transports. A site answers a kind it has no handler for with an error reply naming it.
    """

    TRAIN = "train"
    EVALUATE = "evaluate"
    STATISTICS = "statistics"
    #: Cross-site validation: a site sends its local model (its last update that left it).
    SUBMIT_MODEL = "submit_model"
    #: Cross-site validation: a site evaluates the model it is sent (another site's, or global).
    VALIDATE = "validate"


#: What a task kind may be called: short, lower case, no spaces or path characters.
KIND_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
_KIND = re.compile(KIND_PATTERN)


def task_kind(name: str) -> str:
    """``name`` as a task kind: the TaskKind member for a built-in kind, else the name itself.

    Raises:
        ValueError: the name does not match :data:`KIND_PATTERN`.
    """
    if not isinstance(name, str) or not _KIND.match(name):
        raise ValueError(f"task kind must match {KIND_PATTERN}, got {name!r}")
    try:
        return TaskKind(name)
    except ValueError:
        return name


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
    kind: str  # a TaskKind, or another workflow's kind (see task_kind)
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
