"""Round workflows: the steps of a job, each built on one gather primitive.

A job runs a sequence of workflows in order (federated statistics, training rounds, cross-site
validation, secure training rounds): each receives the model the one before
produced and returns the next. A workflow never touches a transport. It talks to the sites through
its :class:`WorkflowContext`, whose :meth:`~WorkflowContext.gather` sends one task to each named
site and yields the valid replies as they arrive until a deadline; every site that fails (an
error reply, a malformed or late result, a lost connection) is recorded as a
:class:`SiteFailure`, logged and reported to whoever watches the run, and
:meth:`~WorkflowContext.require` stops the job when fewer than ``min_sites`` results are valid.

This module is the interface; the built-in workflows are in :mod:`fedcare.server.workflows`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from fedcare.core.message import Config, Result, task_kind
from fedcare.core.stream import RoundTarget
from fedcare.core.weights import Weights

if TYPE_CHECKING:
    from fedcare.core.job import Job


@dataclass(frozen=True)
class SiteFailure:
    """One site's failure at one step of a job: kept in the record, shown to the admin.

    ``kind`` is the task kind that failed (``train``, ``evaluate``, ...), or ``absent`` for a
    declared site that never connected.
    """

    site_id: str
    round_num: int
    kind: str
    message: str
    #: The site's connection was lost with the task outstanding (an outage, not a bad result).
    connection_lost: bool = False


@dataclass(frozen=True)
class SiteMetrics:
    """One site's result at one step: the samples it covered and the metrics it reported
    over them (training or evaluation)."""

    num_samples: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Gather:
    """One task for each of ``site_ids``, and what their replies must be.

    Attributes:
        kind: The task kind (see :class:`fedcare.core.message.TaskKind`).
        round_num: The round the tasks belong to (0 before training, e.g. statistics).
        site_ids: The sites asked.
        expect: The result type a valid reply holds (TrainResult, EvalResult, StatsResult).
        payload: The tensors every task carries (the global model, another site's model), or
            None.
        payload_for: The tensors of one site's task, when they differ by site (the key
            material of secure aggregation); replaces ``payload``.
        configure: The settings for one site's task; none by default.
        timeout_s: How long to wait for replies; the job's ``round_timeout_s`` by default.
        attempt: Tells apart gathers of one kind in one round (a round run again after an
            outage, the second pass of a statistics job): each gets its own task ids, so a late
            reply to an earlier one is never taken for its own.
        streams: A transport that can fold training uploads into this target as they arrive
            (:class:`fedcare.server.streams.RoundStreams`) does so during the gather.
    """

    kind: str
    round_num: int
    site_ids: Sequence[str]
    expect: type
    payload: Weights | None = None
    configure: Callable[[str], Config] | None = None
    timeout_s: float | None = None
    attempt: int = 0
    streams: RoundTarget | None = None
    payload_for: Callable[[str], Weights | None] | None = None

    def __post_init__(self) -> None:
        # checked here, where a workflow names it, not first at the encoder of one transport
        object.__setattr__(self, "kind", task_kind(self.kind))


@dataclass(frozen=True)
class Arrival:
    """A valid reply: its site, its result, and whether its tensors were already folded into
    the round's aggregate as they arrived (then ``result.weights`` is empty)."""

    site_id: str
    result: Result
    folded: bool = False


@dataclass
class StepOutcome:
    """What a workflow step leaves for the run's record besides its model."""

    trained: list[str] = field(default_factory=list)
    train_metrics: dict[str, float] = field(default_factory=dict)
    failures: list[SiteFailure] = field(default_factory=list)
    #: Each trained site's own sample count and training metrics (what ``train_metrics``
    #: weighs together), for the round's record and experiment tracking.
    site_train: dict[str, SiteMetrics] = field(default_factory=dict)


class WorkflowContext(Protocol):
    """What a running job offers its workflows."""

    @property
    def job(self) -> Job: ...

    @property
    def job_id(self) -> str: ...

    @property
    def run_dir(self) -> Path | None: ...

    @property
    def resume_round(self) -> int | None:
        """The last completed round of a resumed run (its model is the one passed in), or
        None when the run started afresh."""
        ...

    def sites(self) -> list[str]:
        """Connected sites this job may use."""
        ...

    def gather(self, request: Gather, failures: list[SiteFailure]
               ) -> Generator[Arrival, None, None]:
        """Send the tasks, yield each valid reply as it arrives until the deadline; every
        failure is appended to ``failures`` and reported. Close the iterator (or exhaust it)
        to end the gather: replies still outstanding are then discarded."""
        ...

    def task_id(self, request: Gather, site_id: str) -> str:
        """The id the task of ``request`` for ``site_id`` has (and its reply refers to)."""
        ...

    def await_sites(self, round_num: int, since: float) -> None:
        """Wait until ``min_sites`` of the job's sites are connected, within the job's
        ``rejoin_timeout_s`` counted from ``since``; AggregationError when they are not."""
        ...

    def fail(self, failures: list[SiteFailure], failure: SiteFailure) -> None:
        """Record and report a site failure a workflow found itself (e.g. a mismatching
        statistic)."""
        ...

    def require(self, count: int, round_num: int, kind: str,
                failures: list[SiteFailure]) -> None:
        """Stop the job (AggregationError naming every failure) unless ``count`` >=
        ``min_sites``."""
        ...

    def check_stop(self, round_num: int) -> None:
        """Raise JobAborted if the job was asked to stop."""
        ...

    def begin_round(self, round_num: int, site_ids: list[str]) -> None:
        """Announce a round with the sites taking part (progress bars, the status view)."""
        ...

    def finish_round(self, round_num: int, weights: Weights, outcome: StepOutcome,
                     started: float, *, evaluate: bool = True) -> None:
        """Checkpoint ``weights`` as the model after ``round_num``, evaluate it at the sites
        (as the job's ``evaluate_every`` says) and record the round."""
        ...

    def save_result(self, name: str, data: Mapping[str, object]) -> None:
        """Keep a workflow's result (a JSON document) with the run, e.g. a validation
        matrix; written to ``run_dir/<name>.json`` and handed to the run's listener."""
        ...


class Workflow(ABC):
    """One step of a job. Subclasses keep what they need from the job in ``run``."""

    #: Short name used in logs and saved results.
    name: str = "workflow"
    #: True for a workflow that trains rounds (the job's ``num_rounds`` count them).
    trains: bool = False
    #: True if sites must keep their last outgoing update for this workflow to ask for it.
    needs_local_models: bool = False
    #: The task kinds this workflow sends sites (a training workflow's evaluation is the
    #: job's: ``evaluate_every``), so a site can refuse a job before it starts; None: not
    #: declared, and a site checks each task as it comes.
    task_kinds: tuple[str, ...] | None = None
    #: Those of ``task_kinds`` a site's privacy policy may refuse and still take part in the
    #: job: it refuses those tasks alone, and the workflow goes on without their results
    #: (cross-site validation: a site that will not send its model).
    optional_kinds: tuple[str, ...] = ()

    def check_job(self, job: Job) -> None:  # noqa: B027 - optional hook
        """Refuse (ConfigError, one line) a job this workflow cannot run, e.g. a threshold
        above its number of sites; called when the Job is built, before any site is asked."""

    @abstractmethod
    def run(self, ctx: WorkflowContext, weights: Weights) -> Weights:
        """Run this step from ``weights``; return the model the next step starts from."""
