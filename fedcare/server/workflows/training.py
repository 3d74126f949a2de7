"""Training rounds with the job's strategy (FedAvg and every other built-in algorithm).

Per round: select sites, send training tasks, validate and fold in results as they arrive (a
transport that can folds uploads in while their bytes arrive), require ``min_sites`` valid
results, aggregate, checkpoint, then run federated evaluation. Round 0 evaluates the initial
model. A round that falls short because sites lost their connection is run again once enough
sites are back, within the job's ``rejoin_timeout_s``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

import numpy as np

from fedcare.core.errors import AggregationError
from fedcare.core.int8 import dequantise, is_quantised
from fedcare.core.message import TaskKind, TrainResult
from fedcare.core.validation import incompatibilities
from fedcare.core.weights import Weights
from fedcare.core.workflow import (
    Gather,
    SiteFailure,
    SiteMetrics,
    StepOutcome,
    Workflow,
    WorkflowContext,
)
from fedcare.server.checks import values_problem
from fedcare.server.metrics import WeightedMetrics
from fedcare.server.streams import RoundStreams
from fedcare.server.workflows.steps import finite_model

log = logging.getLogger(__name__)


class TrainRounds(Workflow):
    """``num_rounds`` rounds of the job's strategy (the job's own ``num_rounds`` by default)."""

    name = "train"
    task_kinds: tuple[str, ...] | None = ("train",)
    trains = True

    def __init__(self, num_rounds: int | None = None) -> None:
        self.num_rounds = num_rounds

    def run(self, ctx: WorkflowContext, weights: Weights) -> Weights:
        last = self.num_rounds if self.num_rounds is not None else ctx.job.num_rounds
        if ctx.resume_round is None:
            ctx.finish_round(0, weights, StepOutcome(), time.monotonic())
            first = 1
        else:
            first = ctx.resume_round + 1
        for round_num in range(first, last + 1):
            weights = self._through_outages(ctx, round_num, weights)
        return weights

    def _through_outages(self, ctx: WorkflowContext, round_num: int, weights: Weights
                         ) -> Weights:
        """One round; if it falls short because sites dropped off, wait for them and rerun it.

        A round that fails on bad results stops the job as before; one that falls short because
        sites lost their connection is run again once ``min_sites`` are connected, within one
        ``rejoin_timeout_s`` budget per round.
        """
        job = ctx.job
        waited_since: float | None = None
        attempt = 0
        while True:
            ctx.check_stop(round_num)
            if len(ctx.sites()) < job.min_sites:
                waited_since = waited_since if waited_since is not None else time.monotonic()
                ctx.await_sites(round_num, waited_since)
            failures: list[SiteFailure] = []
            try:
                return self._round(ctx, round_num, weights, attempt, failures)
            except AggregationError:
                # Decided by what happened in the round, not by who is connected now: a site
                # that dropped mid-round has often reconnected by the time the round fails.
                outage = any(f.connection_lost for f in failures)
                if not outage and len(ctx.sites()) >= job.min_sites:
                    raise
                # a flapping link must not rerun the round forever: one budget for the round
                waited_since = waited_since if waited_since is not None else time.monotonic()
                if time.monotonic() - waited_since > job.rejoin_timeout_s:
                    raise
                log.warning("job %s round %d: sites dropped off mid-round; the round will run "
                            "again when %d are connected", ctx.job_id, round_num, job.min_sites)
                attempt += 1

    def _round(self, ctx: WorkflowContext, round_num: int, weights: Weights, attempt: int,
               failures: list[SiteFailure]) -> Weights:
        started = time.monotonic()
        strategy = ctx.job.strategy
        selected = strategy.select_sites(round_num, ctx.sites())
        ctx.begin_round(round_num, selected)
        aggregator = strategy.aggregator(round_num, weights)
        expected = strategy.result_spec(weights)
        train_metrics = WeightedMetrics()
        trained: list[str] = []
        site_train: dict[str, SiteMetrics] = {}
        # A transport that can (gRPC) folds each upload into the aggregate as it arrives. The
        # ids come from a request without payload or streams: the streams must not reach the
        # model, nor themselves (a reference cycle would keep the round's model and the
        # uploads' undo memory alive until the cyclic garbage collector runs).
        ids = Gather(TaskKind.TRAIN, round_num, (), TrainResult, attempt=attempt)
        streams = RoundStreams(aggregator, expected, lambda s: ctx.task_id(ids, s))
        payload = strategy.train_payload(round_num, weights)
        request = dataclasses.replace(ids, site_ids=selected, payload=payload,
                                      configure=lambda s: strategy.configure_train(round_num, s),
                                      streams=streams)
        with contextlib.closing(ctx.gather(request, failures)) as arrivals:
            for arrival in arrivals:
                site_id, result = arrival.site_id, arrival.result
                assert isinstance(result, TrainResult)
                if not arrival.folded:
                    if is_quantised(result.weights):
                        try:
                            result = dataclasses.replace(result, weights=dequantise(
                                result.weights, payload))
                        except ValueError as exc:
                            ctx.fail(failures, SiteFailure(site_id, round_num, "train",
                                                           str(exc)))
                            continue
                    problem = _train_problem(expected, result)
                    if problem:
                        ctx.fail(failures, SiteFailure(site_id, round_num, "train", problem))
                        continue
                    streams.add(site_id, result)
                train_metrics.add(result.num_samples, result.metrics)
                trained.append(site_id)
                site_train[site_id] = SiteMetrics(result.num_samples, dict(result.metrics))
                del result, arrival  # dropped before the next one arrives: one upload in memory
        ctx.require(aggregator.num_results, round_num, "train", failures)
        new_weights = finite_model(ctx, round_num, aggregator.finish())
        metrics = {**train_metrics.result(), **strategy.round_metrics(round_num)}
        ctx.finish_round(round_num, new_weights,
                         StepOutcome(trained, metrics, failures, site_train), started)
        return new_weights


def _train_problem(expected: Weights, result: TrainResult) -> str | None:
    """Why a whole (not streamed) training result cannot be folded in, or None."""
    problems = incompatibilities(expected, result.weights)
    if problems:
        return "model does not match: " + "; ".join(problems)
    return _too_large(result)


def _too_large(result: TrainResult) -> str | None:
    """Why a float64 update could overflow the float64 sum, or None (checked before folding in,
    so a refused site leaves nothing of itself in the aggregate)."""
    for name, array in result.weights.items():
        if array.dtype == np.float64:
            problem = values_problem(name, array, result.num_samples)
            if problem:
                return problem
    return None
