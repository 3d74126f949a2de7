"""A site's privacy policy: what every job must satisfy at this site, and its privacy budget.

Written by the hospital (its data-protection officer) in the ``privacy:`` section of its kit's
``config.yaml``, next to the filter chains (``policy:``) it constrains, and never sent by the
server, which can neither skip nor weaken it::

    privacy:
      budget_epsilon: 8.0          # total epsilon this site spends across all jobs, ever
      max_job_epsilon: 3.0         # and at most this much in any one job
      task_kinds: [prepare, train, evaluate]   # what a job may ask of this site
      min_rows: 20                 # no statistics or evaluation over fewer rows
      require:                     # filters every job's outbound chain must hold, in bounds
        svt: {epsilon: {max: 1.0}, fraction: {max: 0.1}}
        clip_update_norm: {max_norm: {max: 5.0}}

A required filter is satisfied by the site's own chain (``policy.outbound``) or by one a job
asks every site to add (``Job.outbound_filters``); either way it runs at the site. A job that
fails any rule is refused when its first task arrives, before its trainer (and so any data) is
built. Epsilons add up across uses (basic sequential composition), the bound a ledger can keep
whatever accountant each mechanism used. This module is the schema; the site layer enforces it.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from fedcare.core.message import KIND_PATTERN

_Number = StrictInt | StrictFloat


class Bound(BaseModel):
    """Inclusive bounds on one numeric filter parameter (either may be omitted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: _Number | None = None
    max: _Number | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("a bound needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of bounds, or None."""
        if self.min is not None and not value >= self.min:
            return f"{value:g} < {self.min:g}"
        if self.max is not None and not value <= self.max:
            return f"{value:g} > {self.max:g}"
        return None

    def text(self) -> str:
        parts = ([f">= {self.min:g}"] if self.min is not None else []) + (
            [f"<= {self.max:g}"] if self.max is not None else [])
        return " and ".join(parts)


_FilterName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
_ParamName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
_Kind = Annotated[str, Field(pattern=KIND_PATTERN)]


class PrivacyPolicy(BaseModel):
    """What every job must satisfy at one site, and how much privacy loss the site accepts.

    Attributes:
        budget_epsilon: The total epsilon this site spends across every job, recorded in its
            privacy ledger; once a task would take the total past it the task is refused,
            and once it is reached every task is. None: no budget.
        max_job_epsilon: The most epsilon any one job may spend here (what a job's filters
            declare is checked before it starts; what is charged, at every task). None: none.
        task_kinds: The task kinds a job may send (``prepare`` is always allowed: it builds
            nothing the site does not control). None: every kind.
        min_rows: Statistics and evaluation results computed over fewer rows than this never
            leave the site (the task is refused). 0: no minimum.
        require: Filter name -> parameter -> bounds: the outbound chain of every job (the
            site's own filters and those a job adds) must hold a filter of that name whose
            parameters are all within bounds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_epsilon: _Number | None = Field(default=None, gt=0)
    max_job_epsilon: _Number | None = Field(default=None, gt=0)
    task_kinds: list[_Kind] | None = None
    min_rows: StrictInt = Field(default=0, ge=0)
    require: dict[_FilterName, dict[_ParamName, Bound]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _finite(self) -> PrivacyPolicy:
        for name in ("budget_epsilon", "max_job_epsilon"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        return self

    @property
    def is_empty(self) -> bool:
        """True when this policy asks nothing (the site runs exactly as without one)."""
        return self == PrivacyPolicy()

    def refuses_kind(self, kind: str) -> str | None:
        """Why a task of ``kind`` may not run here, or None."""
        if self.task_kinds is None or kind == "prepare" or kind in self.task_kinds:
            return None
        return (f"task kind '{kind}' is not allowed by this site's privacy policy "
                f"(privacy.task_kinds: {sorted(self.task_kinds)})")

    def to_json(self) -> str:
        return self.model_dump_json()
