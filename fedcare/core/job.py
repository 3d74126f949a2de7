"""A Job bundles everything one federated run needs, defined once in Python.

The same Job object drives the in-process simulator, one process per site, and (with another
transport) real hospitals: nothing in it names a transport.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Protocol

from fedcare.core.errors import ConfigError
from fedcare.core.ids import site_id_problem
from fedcare.core.message import TaskKind
from fedcare.core.policy import FilterSpec
from fedcare.core.strategy import Strategy
from fedcare.core.text import one_line
from fedcare.core.trainer import SiteContext, Trainer
from fedcare.core.weights import Weights
from fedcare.core.workflow import Workflow

#: ``module:function``: a job's entry point, or a reference to its site half.
ENTRY_POINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
TrainerFactory = Callable[[SiteContext], Trainer]


class FederatedStatistic(Protocol):
    """One pass of federated statistics, e.g. global feature means, then variances.

    Each site returns additive values (``StatsResult``); the server sums them as they arrive
    (so a later secure-aggregation layer can hide each site's contribution) and calls
    ``finalize`` once with the totals. The site is told the pass by ``config["name"]``; a pass
    that needs the result of an earlier one (a variance needs the global mean) sets
    ``send_model`` and its task carries the current model, handed to the site's
    ``statistics(config, model)``.
    """

    name: str

    def finalize(self, totals: Weights, num_samples: int, weights: Weights) -> Weights:
        """The initial global model updated with what the totals say (e.g. scaler parameters)."""
        ...


@dataclass(frozen=True)
class JobSource:
    """Where a job came from, so a site process can rebuild the very same job by itself."""

    entry_point: str
    params: dict[str, object] = field(default_factory=dict)
    search_path: str | None = None


@dataclass(frozen=True)
class Job:
    """One federated training run.

    A job has a server half (strategy, workflows, rounds, initial model) and a site half (the
    trainer). Give ``trainer`` as a ``module:function`` string and the server never imports
    the site half or what it needs (torch, MONAI): only sites and the simulator do.

    Attributes:
        name: Short id used in logs, errors and run folders.
        initial_weights: Builds the starting global model (same on every call for a seed), or
            None: then the first site that can is asked for it (its trainer's
            ``initial_model()``), so the server needs no deep-learning library to build it.
        trainer: The site half: builds one site's trainer; called once per site, kept for the
            whole job. A callable, or a ``module:function`` reference called as
            ``function(site_context, **trainer_params)`` at the site.
        trainer_params: Keyword arguments for a referenced trainer factory (JSON values).
        strategy: The aggregation algorithm.
        num_rounds: Training rounds after the optional statistics task (0 for a job whose
            workflows do not train, e.g. statistics alone).
        min_sites: A round fails unless at least this many sites return a valid result.
        round_timeout_s: Results arriving later than this after a round starts are discarded.
        rejoin_timeout_s: When fewer than ``min_sites`` sites are connected (a network outage,
            a site restarting), the round waits this long for them to come back and then
            runs again, instead of failing the job.
        site_ids: The sites the job is written for (a natural partition, e.g. real hospitals),
            or None when any number of sites will do.
        statistics: Optional federated statistics computed before round 1.
        workflows: The job's steps, run in order (see :mod:`fedcare.core.workflow`); None
            runs the statistics (if any) and then ``num_rounds`` rounds of the strategy.
        site_wait_s: How long the job waits for its sites to connect before it starts
            (all declared sites, or ``min_sites``); a declared site still missing then is
            reported as absent and the job goes on without it if ``min_sites`` are there.
            None: the server's or simulator's default (``connect_timeout_s``).
        seed: Seeds model initialisation, site selection and simulated partitions.
        evaluate_every: Federated evaluation every this many rounds (and after the last);
            0 never evaluates.
        source: Set when the job was loaded from an entry point; needed to rebuild it in a
            separate site process.
        outbound_filters: Filters the job asks every site to add to its own outbound chain
            (e.g. ``{svt: {epsilon: 0.5, fraction: 0.1}}``): built by each site from its own
            filter registry, run before the site's own filters, and checked against the
            site's privacy policy before the job starts there. Never a way to remove one.
    """

    name: str
    initial_weights: Callable[[], Weights] | None
    trainer: TrainerFactory | str
    strategy: Strategy
    num_rounds: int
    min_sites: int = 1
    round_timeout_s: float = 600.0
    rejoin_timeout_s: float = 900.0
    site_ids: tuple[str, ...] | None = None
    statistics: FederatedStatistic | None = None
    seed: int = 0
    evaluate_every: int = 1
    source: JobSource | None = None
    workflows: tuple[Workflow, ...] | None = None
    site_wait_s: float | None = None
    trainer_params: Mapping[str, Any] = field(default_factory=dict)
    outbound_filters: tuple[FilterSpec, ...] = ()

    def __post_init__(self) -> None:
        if (not isinstance(self.name, str) or not self.name
                or not self.name.replace("-", "").replace("_", "").isalnum()):
            raise ConfigError(f"job name must be letters, digits, '-' or '_', got {self.name!r}")
        # Exact types: 2.5 rounds or min_sites=True are mistakes, not values to round.
        for attr in ("num_rounds", "min_sites", "evaluate_every", "seed"):
            value = getattr(self, attr)
            if not isinstance(value, Integral) or isinstance(value, bool):
                raise ConfigError(f"{attr} must be an integer, got {value!r} "
                                  f"({type(value).__name__})", job_id=self.name)
        for attr in ("round_timeout_s", "rejoin_timeout_s"):
            value = getattr(self, attr)
            if not isinstance(value, Real) or isinstance(value, bool) or not float(value) >= 0:
                raise ConfigError(f"{attr} must be a number >= 0, got {value!r} "
                                  f"({type(value).__name__})", job_id=self.name)
        if isinstance(self.trainer, str):
            if not re.match(ENTRY_POINT_PATTERN, self.trainer):
                raise ConfigError(f"trainer must be a callable or 'module:function', got "
                                  f"{self.trainer!r}", job_id=self.name)
        elif not callable(self.trainer):
            raise ConfigError(f"trainer must be a callable or 'module:function', got "
                              f"{type(self.trainer).__name__}", job_id=self.name)
        if self.initial_weights is not None and not callable(self.initial_weights):
            raise ConfigError("initial_weights must be a callable returning Weights, or None "
                              "(a site provides the initial model)", job_id=self.name)
        try:
            json.dumps(dict(self.trainer_params))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"trainer_params must be JSON values: {exc}",
                              job_id=self.name) from None
        specs = []
        for i, spec in enumerate(self.outbound_filters):
            try:
                specs.append(FilterSpec.model_validate(spec))
            except ValueError as exc:  # pydantic's ValidationError is one
                raise ConfigError(f"outbound_filters[{i}]: {one_line(str(exc), 300)}",
                                  job_id=self.name) from None
        object.__setattr__(self, "outbound_filters", tuple(specs))
        if self.workflows is not None:
            if not all(isinstance(w, Workflow) for w in self.workflows) or not self.workflows:
                raise ConfigError(f"workflows must be a non-empty sequence of Workflow, got "
                                  f"{self.workflows!r}", job_id=self.name)
            object.__setattr__(self, "workflows", tuple(self.workflows))
        for workflow in self.workflows or ():
            try:
                workflow.check_job(self)
            except ConfigError as exc:
                raise ConfigError(exc.message, job_id=self.name) from None
        if self.workflows is not None and self.statistics is not None:
            raise ConfigError("give the statistics as a FederatedStatistics workflow in "
                              "workflows, not as statistics (which only a job without "
                              "workflows runs)", job_id=self.name)
        if self.workflows is not None and sum(w.trains for w in self.workflows) > 1:
            raise ConfigError("a job trains in one workflow: more than one in workflows",
                              job_id=self.name)
        trains = self.workflows is None or any(w.trains for w in self.workflows)
        if self.num_rounds < (1 if trains else 0):
            raise ConfigError(f"num_rounds must be >= {1 if trains else 0}, got "
                              f"{self.num_rounds}", job_id=self.name)
        if self.site_wait_s is not None and (isinstance(self.site_wait_s, bool) or not
                                             isinstance(self.site_wait_s, Real)
                                             or not self.site_wait_s >= 0):
            raise ConfigError(f"site_wait_s must be a number >= 0 or None, got "
                              f"{self.site_wait_s!r}", job_id=self.name)
        if self.evaluate_every < 0:
            raise ConfigError(f"evaluate_every must be >= 0, got {self.evaluate_every}",
                              job_id=self.name)
        if self.min_sites < 1:
            raise ConfigError(f"min_sites must be >= 1, got {self.min_sites}", job_id=self.name)
        if not self.round_timeout_s > 0:
            raise ConfigError(
                f"round_timeout_s must be > 0, got {self.round_timeout_s}", job_id=self.name
            )
        try:
            self.strategy.check_job(min_sites=self.min_sites, num_sites=len(self.site_ids)
                                    if self.site_ids is not None else None)
        except ConfigError as exc:
            raise ConfigError(exc.message, job_id=self.name) from None
        if self.site_ids is not None:
            for site_id in self.site_ids:
                problem = site_id_problem(site_id)
                if problem:
                    raise ConfigError(problem, job_id=self.name)
            if len(set(self.site_ids)) != len(self.site_ids):
                raise ConfigError(f"duplicate site ids {list(self.site_ids)}", job_id=self.name)
            if self.min_sites > len(self.site_ids):
                raise ConfigError(
                    f"min_sites={self.min_sites} exceeds the {len(self.site_ids)} sites",
                    job_id=self.name,
                )

    @property
    def needs_local_models(self) -> bool:
        """Whether a workflow of this job asks sites for their last outgoing update."""
        return any(w.needs_local_models for w in self.workflows or ())

    @property
    def optional_task_kinds(self) -> frozenset[str]:
        """The task kinds a site may refuse and still run this job (see
        :attr:`fedcare.core.workflow.Workflow.optional_kinds`)."""
        return frozenset(k for w in self.workflows or () for k in w.optional_kinds)

    @property
    def task_kinds(self) -> frozenset[str] | None:
        """The task kinds this job's server sends a site, or None when a workflow of its own
        does not say (then a site checks each task as it comes)."""
        kinds = {TaskKind.PREPARE.value}
        if self.initial_weights is None:
            kinds.add(TaskKind.INITIAL_MODEL.value)
        if self.workflows is None:
            kinds.add(TaskKind.TRAIN.value)
            if self.statistics is not None:
                kinds.add(TaskKind.STATISTICS.value)
        else:
            for workflow in self.workflows:
                if workflow.task_kinds is None:
                    return None
                kinds.update(workflow.task_kinds)
        if self.evaluate_every > 0 and (self.workflows is None
                                        or any(w.trains for w in self.workflows)):
            kinds.add(TaskKind.EVALUATE.value)
        return frozenset(kinds)
