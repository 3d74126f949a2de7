"""Federated statistics: one or more passes of additive site statistics, summed at the server.

Runs before training (feature scaling for the model) or as a job of its own, e.g. per-feature
means, then variances about those means, histograms and missing-value counts
(:mod:`fedcare.analytics`). Each pass sends every site a ``statistics`` task; sites answer with
sums over their own rows, never the rows; the server sums the answers as they arrive and the
pass's ``finalize`` turns the totals into values of the model the next step starts from.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from fedcare.core.errors import AggregationError
from fedcare.core.job import FederatedStatistic
from fedcare.core.message import StatsResult, TaskKind
from fedcare.core.weights import Weights
from fedcare.core.workflow import Gather, SiteFailure, Workflow, WorkflowContext
from fedcare.server.statistics import SumAggregator

#: Arrays up to this many elements are copied into the saved ``statistics`` result document.
_MAX_SAVED_ELEMENTS = 100_000


class FederatedStatistics(Workflow):
    """Run ``passes`` in order; a resumed job skips them (their effect is in its checkpoint)."""

    name = "statistics"
    task_kinds = ("statistics",)

    def __init__(self, *passes: FederatedStatistic) -> None:
        if not passes:
            raise ValueError("FederatedStatistics needs at least one statistic")
        names = [p.name for p in passes]
        if len(set(names)) != len(names):
            raise ValueError(f"statistics passes need distinct names, got {names}")
        self.passes = passes

    def run(self, ctx: WorkflowContext, weights: Weights) -> Weights:
        if ctx.resume_round is not None:
            return weights
        started = time.monotonic()
        summary: dict[str, object] = {}
        before = dict(weights)
        for index, statistic in enumerate(self.passes):
            weights, sites, count = self._pass(ctx, index, statistic, weights)
            summary[statistic.name] = {"sites": sites, "num_samples": count}
        changed = {name: np.asarray(array).tolist() for name, array in weights.items()
                   if array.size <= _MAX_SAVED_ELEMENTS and (
                       name not in before or not np.array_equal(before[name], array))}
        ctx.save_result("statistics", {"passes": summary, "values": changed,
                                       "duration_s": round(time.monotonic() - started, 4)})
        return weights

    def _pass(self, ctx: WorkflowContext, index: int, statistic: FederatedStatistic,
              weights: Weights) -> tuple[Weights, list[str], int]:
        totals = SumAggregator()
        failures: list[SiteFailure] = []
        config = {"name": statistic.name, **dict(getattr(statistic, "config", {}))}
        payload = weights if getattr(statistic, "send_model", False) else None
        request = Gather(TaskKind.STATISTICS, 0, ctx.sites(), StatsResult, payload,
                         lambda s: config, attempt=index)
        sites: list[str] = []
        with contextlib.closing(ctx.gather(request, failures)) as arrivals:
            for arrival in arrivals:
                result = arrival.result
                assert isinstance(result, StatsResult)
                try:
                    totals.add(result.values, result.num_samples)
                    sites.append(arrival.site_id)
                except ValueError as exc:
                    ctx.fail(failures, SiteFailure(arrival.site_id, 0, "statistics", str(exc)))
        ctx.require(totals.num_results, 0, f"statistics {statistic.name}", failures)
        try:
            finalized = totals.finalize(statistic, weights)
        except KeyError as exc:
            raise AggregationError(f"statistic {statistic.name}: the sites' totals lack {exc} "
                                   f"(they sent {sorted(totals.totals())})", job_id=ctx.job_id,
                                   round_num=0) from None
        except AggregationError as exc:
            raise AggregationError(exc.message, job_id=ctx.job_id, round_num=0) from None
        return finalized, sorted(sites), totals.num_samples
