"""One analytics pass: the same statistics task to every site, each site's reply kept.

Analytics keep each site's reply (per-site tables, a pooled Cox model's per-time sums), where
:class:`fedcare.FederatedStatistics` only sums them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np

from fedcare.core.errors import AggregationError
from fedcare.core.message import Config, StatsResult, TaskKind
from fedcare.core.weights import Weights
from fedcare.core.workflow import Gather, SiteFailure, WorkflowContext


def gather_all(ctx: WorkflowContext, attempt: int, config: Config, payload: Weights | None,
               expected: Sequence[str] | None, what: str = "analysis") -> dict[str, StatsResult]:
    """Each site's reply to one statistics task (``attempt`` tells the passes apart).

    Args:
        expected: The sites that must all answer (those of an earlier pass: a later pass
            without one of them would mix two populations), or None: the job's connected
            sites, at least ``min_sites`` of which must answer.

    Raises:
        AggregationError: too few answers, or one of ``expected`` missing, naming every
            site's reason (a missing column, a suppressed group).
    """
    failures: list[SiteFailure] = []
    asked = list(expected) if expected is not None else ctx.sites()
    request = Gather(TaskKind.STATISTICS, 0, asked, StatsResult, payload,
                     lambda _site: config, attempt=attempt)
    replies: dict[str, StatsResult] = {}
    with contextlib.closing(ctx.gather(request, failures)) as arrivals:
        for arrival in arrivals:
            assert isinstance(arrival.result, StatsResult)
            replies[arrival.site_id] = arrival.result
    ctx.require(len(replies), 0, what, failures)
    missing = sorted(set(asked) - set(replies))
    if expected is not None and missing:
        reasons = "; ".join(f"{f.site_id}: {f.message}" for f in failures) or "no reply"
        raise AggregationError(f"{what}: sites {missing} did not answer, and the result would "
                               f"no longer be the pooled one ({reasons})", job_id=ctx.job_id)
    return replies


def summed(replies: Mapping[str, StatsResult], key: str) -> np.ndarray:
    """The sum over sites of one array of their replies, in float64."""
    total: np.ndarray = np.sum([np.asarray(r.values[key], np.float64)
                                for r in replies.values()], axis=0)
    return total
