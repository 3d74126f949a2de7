"""What every multi-step aggregation round shares (secure and homomorphic aggregation): its
gathers' requests, the session id the sites are told, how a site's failure is recorded, and (with
plain training rounds) the check of the new model and the sites' training metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fedcare.core.errors import AggregationError
from fedcare.core.message import Config, Metrics, TrainResult
from fedcare.core.validation import non_finite
from fedcare.core.weights import Weights
from fedcare.core.workflow import Gather, SiteFailure, WorkflowContext
from fedcare.server.metrics import WeightedMetrics


def finite_model(ctx: WorkflowContext, round_num: int, weights: Weights) -> Weights:
    """``weights``, or AggregationError naming the tensors that are not finite (the last good
    model is kept)."""
    bad = non_finite(weights)
    if bad:
        raise AggregationError(f"aggregated model is not finite in {bad}; keeping the last good "
                               "model", job_id=ctx.job_id, round_num=round_num)
    return weights


def summed_metrics(sites: Iterable[str], samples: Mapping[str, int],
                   metrics: Mapping[str, Metrics]) -> dict[str, float]:
    """The sample-weighted training metrics of ``sites``."""
    total = WeightedMetrics()
    for site in sites:
        total.add(samples[site], metrics[site])
    return total.result()


class RoundSteps:
    """The gathers of one round of a protocol whose first step is ``first_kind`` and whose
    tasks carry the round's session id under the setting ``session_key``."""

    session_key: str
    first_kind: str

    def __init__(self, ctx: WorkflowContext, round_num: int, attempt: int,
                 failures: list[SiteFailure]) -> None:
        self.ctx = ctx
        self.round_num = round_num
        self.attempt = attempt
        self.failures = failures
        self.session = ctx.task_id(self._request(self.first_kind, TrainResult), "round")

    def _request(self, kind: str, expect: type) -> Gather:
        return Gather(kind, self.round_num, (), expect, attempt=self.attempt)

    def _config(self, extra: Config) -> Config:
        return {self.session_key: self.session, **extra}

    def _fail(self, site: str, kind: str, problem: str) -> None:
        self.ctx.fail(self.failures, SiteFailure(site, self.round_num, kind, problem))
