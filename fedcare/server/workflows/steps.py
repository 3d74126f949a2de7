"""What every multi-step aggregation round shares (secure and homomorphic aggregation): its
gathers' requests, the session id the sites are told, and how a site's failure is recorded."""

from __future__ import annotations

from fedcare.core.message import Config, TrainResult
from fedcare.core.workflow import Gather, SiteFailure, WorkflowContext


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
