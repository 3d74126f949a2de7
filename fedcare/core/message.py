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
    #: A job without server-side initial weights: a site sends its trainer's initial model.
    INITIAL_MODEL = "initial_model"
    #: Sent to every site when a job starts: the site builds its trainer (imports, data) now,
    #: not in round 1, and one that cannot is reported before any training.
    PREPARE = "prepare"


#: What a task kind may be called: short, lower case, no spaces or path characters.
KIND_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
_KIND = re.compile(KIND_PATTERN)


def task_kind(name: str) -> str:
    """``name`` as a task kind: the TaskKind member for a built-in kind, else the name itself.

    Raises:
        ValueError: the name does not match :data:`KIND_PATTERN`.
    """
    if not isinstance(name, str) or not _KIND.fullmatch(name):
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
class JobRef:
    """Which job a task belongs to, so a real site can build (or refuse) the job's site half.

    Stamped by the federation server on every task; the simulator's sites are built directly
    and never need it.

    Attributes:
        entry_point: The job's ``module:function``.
        params_json: Its keyword arguments, a JSON object.
        site_index: This site's index in the job, fixed for the whole job.
        num_sites: The number of sites the job had when this site's index was given.
        package: The id (sha256) of the signed job package the job runs, or None for a job
            whose code is installed at the site. A site fetches and verifies the package
            itself and runs the entry point and params its signer signed, not these.
    """

    entry_point: str
    params_json: str = "{}"
    site_index: int = 0
    num_sites: int = 1
    package: str | None = None


@dataclass(frozen=True)
class Task:
    """One unit of work for one site in one round.

    Attributes:
        kind: A TaskKind, or another workflow's kind (see :func:`task_kind`).
        weights: The tensors the task carries (the global model, another site's model).
        config: Settings for the trainer (learning rate, local steps, ...).
        job: Which job this is (set by the federation server).
        local_names: The names of the parameters that never leave the site (FedBN): the site
            keeps them to itself and drops them from what it sends. Exact names, resolved by
            the server from the strategy, so a site never runs a pattern it is sent.
    """

    task_id: str
    job_id: str
    round_num: int
    kind: str
    weights: Weights | None = None
    config: Config = field(default_factory=dict)
    job: JobRef | None = None
    local_names: tuple[str, ...] = ()


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
