"""A site's privacy policy at work: which jobs start, which tasks run, what may leave.

:meth:`PrivacyGuard.refuses_job` runs when a job's first task arrives, after the job object is
built (its code, no data) and before its trainer is (the trainer is what reads data): the job's
task kinds, the filters of its outbound chain and their bounds, and the budget are checked
against the site's :class:`~fedcare.core.privacy_policy.PrivacyPolicy`. Then every task passes
:meth:`~PrivacyGuard.before` (its kind; a budget already spent) and its result
:meth:`~PrivacyGuard.after` (the minimum row count; what the trainer and filters spent,
charged to the ledger before the reply is built). Any refusal is a :class:`PrivacyError`,
whose message the server shows the admin as the site's reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedcare.core.errors import ConfigError, PrivacyError
from fedcare.core.job import Job
from fedcare.core.message import EvalResult, Result, StatsResult, Task, TaskKind
from fedcare.core.privacy import PrivacySpend, ReportsPrivacy
from fedcare.core.privacy_policy import Bound, PrivacyPolicy
from fedcare.site.chain import FILTERS
from fedcare.site.dp_noise import CLEAR_UPDATE_KINDS, clear_update_problem, summed_noise_sites
from fedcare.site.filters import Filter
from fedcare.site.privacy_ledger import PrivacyLedger
from fedcare.site.sharing import SvtPrivacy
from fedcare.site.statistics_noise import StatisticsNoise

#: Results over rows (not model updates) that ``min_rows`` guards.
_ROW_KINDS = (TaskKind.STATISTICS, TaskKind.EVALUATE, TaskKind.VALIDATE)
_SLACK = 1e-9


def check_policy(policy: PrivacyPolicy) -> None:
    """Refuse a policy that requires filters no site has (ConfigError naming them)."""
    unknown = sorted(set(policy.require) - set(FILTERS))
    if unknown:
        raise ConfigError(f"privacy.require: unknown filters {unknown}; known: "
                          f"{sorted(FILTERS)}")


def _releases(job: Job, kind: str) -> int:
    """The fewest releases of ``kind`` a job makes at a site that takes part in it all."""
    kinds = job.task_kinds
    if kinds is not None and kind not in kinds:
        return 0
    return job.num_rounds if kind == TaskKind.TRAIN else 1


class PrivacyGuard:
    """One site's privacy policy and ledger, shared by all its jobs.

    Args:
        policy: The site's privacy policy.
        ledger: Its privacy ledger; every spend is recorded there, budget or not.
    """

    def __init__(self, policy: PrivacyPolicy, ledger: PrivacyLedger) -> None:
        check_policy(policy)
        self.policy = policy
        self.ledger = ledger

    @classmethod
    def of_site(cls, policy: PrivacyPolicy | None, ledger_path: Path | None
                ) -> PrivacyGuard | None:
        """A site's guard: its policy (none: an empty one) and its ledger at ``ledger_path``
        (None: in memory); None when there is neither, and nothing to guard or record."""
        if (policy is None or policy.is_empty) and ledger_path is None:
            return None
        return cls(policy or PrivacyPolicy(), PrivacyLedger(ledger_path))

    def _budget_problem(self) -> str | None:
        budget = self.policy.budget_epsilon
        if budget is not None and self.ledger.total_epsilon >= budget - _SLACK:
            return (f"this site's privacy budget is spent (epsilon {self.ledger.total_epsilon:.4g}"
                    f" of budget_epsilon {budget:g}): it takes no more work")
        return None

    def refuses_job(self, job: Job, outbound: Sequence[Filter]) -> str | None:
        """Why the site's policy refuses ``job`` whose outbound chain is ``outbound``, or
        None. Checked before the job's trainer is built."""
        policy = self.policy
        problem = self._budget_problem()
        if problem:
            return problem
        kinds = job.task_kinds
        if policy.task_kinds is not None and kinds is not None:
            # a kind the job can do without (a site's model for cross-site validation) is
            # refused task by task, and the site takes part in the rest
            refused = sorted(k for k in kinds - job.optional_task_kinds
                             if policy.refuses_kind(k))
            if refused:
                return (f"the job sends task kinds {refused}, which this site's privacy policy "
                        f"does not allow (privacy.task_kinds: {sorted(policy.task_kinds)})")
        if kinds is not None and summed_noise_sites(outbound) is not None:
            clear = sorted(kinds & CLEAR_UPDATE_KINDS)
            if clear:
                return clear_update_problem(clear[0])
        for name, bounds in policy.require.items():
            problem = _requirement_problem(name, bounds, outbound)
            if problem:
                return problem
        if policy.max_job_epsilon is not None:
            least = sum(f.epsilon_of(1) * _releases(job, TaskKind.TRAIN)
                        for f in outbound if isinstance(f, SvtPrivacy))
            least += sum(f.epsilon * _releases(job, TaskKind.STATISTICS)
                         for f in outbound if isinstance(f, StatisticsNoise))
            if least > policy.max_job_epsilon + _SLACK:
                return (f"the job would spend at least epsilon {least:.4g} here ({job.num_rounds}"
                        f" rounds of its filters), over this site's max_job_epsilon "
                        f"{policy.max_job_epsilon:g}")
        return None

    def before(self, task: Task) -> None:
        """Refuse a task this site does not run (its kind; a spent budget)."""
        problem = self.policy.refuses_kind(task.kind) or self._budget_problem()
        if problem:
            raise PrivacyError(problem)

    def after(self, task: Task, result: Result, reporters: Sequence[ReportsPrivacy]) -> None:
        """Refuse a result over too few rows; charge what ``reporters`` spent for it (the
        trainer and outbound filters that report), committed before the result leaves."""
        if (self.policy.min_rows and task.kind in _ROW_KINDS
                and isinstance(result, StatsResult | EvalResult)
                and result.num_samples < self.policy.min_rows):
            raise PrivacyError(f"the {task.kind} result, over {result.num_samples} rows, does "
                               f"not leave this site (privacy.min_rows: "
                               f"{self.policy.min_rows})")
        spends: list[PrivacySpend] = []
        for reporter in reporters:
            spends.extend(reporter.privacy_spent())
        self.ledger.charge(task.job_id, task.round_num, task.task_id, str(task.kind), spends,
                           budget=self.policy.budget_epsilon,
                           job_cap=self.policy.max_job_epsilon)


def _requirement_problem(name: str, bounds: Mapping[str, Bound], outbound: Sequence[Filter]
                         ) -> str | None:
    """Why no filter of ``outbound`` named ``name`` has every parameter within ``bounds``."""
    wanted = ", ".join(f"{p} {b.text()}" for p, b in bounds.items()) or "any settings"
    found = [f for f in outbound if f.name == name]
    if not found:
        return (f"this site's privacy policy requires outbound filter {name} ({wanted}); the "
                "job's chain (the site's policy.outbound and the job's outbound_filters) has "
                "none")
    problems = []
    for candidate in found:
        wrong = []
        for param, bound in bounds.items():
            value = getattr(candidate, param, None)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                wrong.append(f"{param} is not a number it has")
                continue
            out = bound.problem(float(value))
            if out:
                wrong.append(f"{param} {out}")
        if not wrong:
            return None
        problems.append("; ".join(wrong))
    return (f"this site's privacy policy requires outbound filter {name} with {wanted}; the "
            f"job's has {problems[0]}")
