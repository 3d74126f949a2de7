"""The site agent: turns a Task into a call on the local trainer, and its outcome into a Reply.

Everything that leaves the site passes through the site's own filters, in order, after the
trainer returns. Filters are configured by the site, not the job, so a hospital's policy (e.g.
differential privacy, sharing only some layers) cannot be overridden by the server.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Protocol

from fedcare.core.message import (
    LOCAL_LAYERS_KEY,
    EvalResult,
    Reply,
    Result,
    StatsResult,
    Task,
    TaskKind,
    TrainResult,
)
from fedcare.core.trainer import StatisticsProvider, Trainer
from fedcare.core.weights import Weights

log = logging.getLogger(__name__)


class Filter(Protocol):
    """A site policy applied to every result before it leaves the site."""

    def __call__(self, task: Task, result: Result) -> Result: ...


class SiteAgent:
    """Runs one site's trainer; every failure becomes an error Reply, never a crash."""

    def __init__(self, site_id: str, trainer: Trainer, filters: Sequence[Filter] = ()) -> None:
        self.site_id = site_id
        self.trainer = trainer
        self.filters = list(filters)

    def handle(self, task: Task) -> Reply:
        try:
            result = self._run(task)
            for site_filter in self.filters:
                result = site_filter(task, result)
        except Exception as exc:
            log.warning("site %s: %s task %s failed: %s: %s",
                        self.site_id, task.kind, task.task_id, type(exc).__name__, exc)
            return Reply(task.task_id, self.site_id,
                         error=f"{task.kind.value} raised {type(exc).__name__}: {exc}")
        return Reply(task.task_id, self.site_id, result=result)

    def _run(self, task: Task) -> Result:
        if task.kind is TaskKind.STATISTICS:
            if not isinstance(self.trainer, StatisticsProvider):
                raise TypeError(f"{type(self.trainer).__name__} has no statistics() method")
            stats = self.trainer.statistics(task.config)
            _expect(stats, StatsResult, "statistics")
            return StatsResult(values=Weights(stats.values), num_samples=stats.num_samples)
        if task.weights is None:
            raise ValueError(f"{task.kind} task without weights")
        if task.kind is TaskKind.TRAIN:
            trained = self.trainer.train(task.weights, task.config)
            _expect(trained, TrainResult, "train")
            # Coerce a plain dict of arrays into Weights (this checks names and dtypes), and
            # keep parameters the strategy declared local (FedBN) inside the site.
            local = json.loads(str(task.config.get(LOCAL_LAYERS_KEY, "[]")))
            outgoing = {k: v for k, v in trained.weights.items()
                        if not any(re.search(p, k) for p in local)}
            return TrainResult(Weights(outgoing), trained.num_samples, dict(trained.metrics))
        evaluated = self.trainer.evaluate(task.weights, task.config)
        _expect(evaluated, EvalResult, "evaluate")
        return evaluated


def _expect(value: object, kind: type, method: str) -> None:
    if not isinstance(value, kind):
        raise TypeError(f"{method}() returned {type(value).__name__}, expected {kind.__name__}")
