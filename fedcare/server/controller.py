"""The round controller: drives a Job over any Transport.

Per round: select sites, send training tasks, validate and fold in results as they arrive (at
most ``round_timeout_s``), require ``min_sites`` valid results, aggregate, checkpoint, then run
federated evaluation on every site's held-out data. A site that fails is recorded and the round
goes on without it; a round that cannot meet ``min_sites`` stops the job with an
AggregationError, and the last good global model stays on disk untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedcare.core.errors import (
    AggregationError,
    FedcareError,
    JobAborted,
    SiteError,
    TransportError,
)
from fedcare.core.job import Job
from fedcare.core.message import (
    EvalResult,
    Reply,
    Result,
    StatsResult,
    Task,
    TaskKind,
    TrainResult,
)
from fedcare.core.validation import incompatibilities, non_finite
from fedcare.core.weights import Weights
from fedcare.server.checkpoint import Checkpointer
from fedcare.server.checks import count_problem, metrics_problem, values_problem
from fedcare.server.events import RunListener, RunState, RunStatus
from fedcare.server.history import History, RoundRecord, SiteEval, SiteFailure
from fedcare.server.metrics import WeightedMetrics
from fedcare.server.statistics import SumAggregator
from fedcare.server.streams import RoundStreams
from fedcare.transport.base import Transport

log = logging.getLogger(__name__)
_RESULT_TYPES: dict[TaskKind, type] = {
    TaskKind.TRAIN: TrainResult, TaskKind.EVALUATE: EvalResult, TaskKind.STATISTICS: StatsResult,
}


@dataclass(frozen=True)
class Checkpoint:
    """Where a resumed job starts: the last completed round, its model and the records so far."""

    round_num: int
    weights: Weights
    records: list[RoundRecord]
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """The final global model and the per-round history of a run."""

    weights: Weights
    history: History
    run_dir: Path | None


class RoundController:
    """Runs one job to completion over a transport."""

    def __init__(
        self,
        job: Job,
        transport: Transport,
        *,
        run_dir: Path | None = None,
        listener: RunListener | None = None,
        job_id: str | None = None,
        connect_timeout_s: float = 120.0,
        resume: Checkpoint | None = None,
        stop: threading.Event | None = None,
        keep_checkpoints: int = 1,
        save_in_background: bool = False,
    ) -> None:
        self.job = job
        self.job_id = job_id or job.name
        self.transport = transport
        self.run_dir = run_dir
        self.listener = listener or RunListener()
        self.connect_timeout_s = connect_timeout_s
        self.history = History()
        self._resume = resume
        self._stop = stop or threading.Event()
        self._outage_in_round = False  # a site lost its connection during the current round
        self._attempt = 0  # how many times the current round was started again
        if resume is not None:
            for record in resume.records:
                self.history.append(record)
        self._checkpointer = (Checkpointer(run_dir / "checkpoints", keep=keep_checkpoints)
                              if run_dir else None)
        # Writing a round's checkpoint (0.1-0.4 s per 100 MB with fsync here) can overlap the
        # next round; the listener hears ``on_round_saved`` only once it is on disk, in order.
        self._saver = (ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
                       if save_in_background and self._checkpointer else None)
        self._saved: Future[object] | None = None
        self._state = RunState.PENDING
        self._round = 0
        self._error: str | None = None

    # -- read-only view -------------------------------------------------------------------
    def status(self) -> RunStatus:
        last = self.history.rounds[-1].eval_metrics if self.history.rounds else {}
        return RunStatus(self.job_id, self._state, self._round, self.job.num_rounds,
                         self.transport.site_ids(), dict(last), self._error)

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunResult:
        self._state = RunState.RUNNING
        try:
            weights = self._run()
            self._await_saved()
        except FedcareError as exc:
            self._state, self._error = RunState.FAILED, str(exc)
            self._await_saved(quietly=True)
            raise
        except Exception as exc:  # a bug in job code must not leave the run "running"
            self._state, self._error = RunState.FAILED, f"{type(exc).__name__}: {exc}"
            self._await_saved(quietly=True)
            raise
        finally:
            if self._saver is not None:
                self._saver.shutdown()
        self._state = RunState.FINISHED
        return RunResult(weights, self.history, self.run_dir)

    def _run(self) -> Weights:
        job = self.job
        expected = len(job.site_ids) if job.site_ids else job.min_sites
        self.transport.wait_for_sites(expected, self.connect_timeout_s)
        sites = self._available()
        if len(sites) < job.min_sites:
            raise AggregationError(
                f"only {len(sites)} site(s) connected {sites}, min_sites={job.min_sites}",
                job_id=self.job_id,
            )
        if self._resume is not None:
            weights, first = self._resume.weights, self._resume.round_num + 1
            job.strategy.load_state(self._resume.strategy_state)
            log.info("job %s: resuming after round %d", self.job_id, self._resume.round_num)
        else:
            weights, first = Weights(job.initial_weights()), 1
            if job.statistics is not None:
                weights = self._statistics(weights)
            self._finish_round(0, weights, [], {}, [], time.monotonic())
        for round_num in range(first, job.num_rounds + 1):
            weights = self._train_round_through_outages(round_num, weights)
        return weights

    def _train_round_through_outages(self, round_num: int, weights: Weights) -> Weights:
        """One round; if it falls short because sites dropped off, wait for them and rerun it.

        A round that fails on bad results stops the job as before; one that falls short because
        sites lost their connection is run again once ``min_sites`` are connected, within one
        ``rejoin_timeout_s`` budget per round.
        """
        waited_since: float | None = None
        self._attempt = 0
        while True:
            self._check_stop(round_num)
            if len(self._available()) < self.job.min_sites:
                waited_since = waited_since if waited_since is not None else time.monotonic()
                self._await_sites(round_num, waited_since)
            self._outage_in_round = False
            try:
                return self._train_round(round_num, weights)
            except AggregationError:
                # Decided by what happened in the round, not by who is connected now: a site
                # that dropped mid-round has often reconnected by the time the round fails.
                if not self._outage_in_round and len(self._available()) >= self.job.min_sites:
                    raise
                # a flapping link must not rerun the round forever: one budget for the round
                waited_since = waited_since if waited_since is not None else time.monotonic()
                if time.monotonic() - waited_since > self.job.rejoin_timeout_s:
                    raise
                log.warning("job %s round %d: sites dropped off mid-round; the round will run "
                            "again when %d are connected", self.job_id, round_num,
                            self.job.min_sites)
                self._attempt += 1

    def _await_sites(self, round_num: int, since: float) -> None:
        need, limit = self.job.min_sites, self.job.rejoin_timeout_s
        log.warning("job %s round %d: %d of min_sites=%d connected %s; waiting up to %.0f s for "
                    "sites to rejoin", self.job_id, round_num, len(self._available()), need,
                    self._available(), limit - (time.monotonic() - since))
        while len(available := self._available()) < need:
            self._check_stop(round_num)
            remaining = since + limit - time.monotonic()
            if not self.transport.may_still_connect():
                raise AggregationError(
                    f"only {len(available)} site(s) connected {available}, min_sites={need}, "
                    "and no site can connect any more", job_id=self.job_id, round_num=round_num)
            if remaining <= 0:
                raise AggregationError(
                    f"only {len(available)} site(s) connected {available}, min_sites={need}, "
                    f"after waiting rejoin_timeout_s={limit:g} for sites to come back",
                    job_id=self.job_id, round_num=round_num)
            self.transport.wait_for_sites(need, min(remaining, 0.5))
            if len(self._available()) < need:  # others connected, not this job's sites
                self._stop.wait(min(remaining, 0.2))
        log.warning("job %s round %d: %d sites connected again %s", self.job_id, round_num,
                 len(available), available)

    def _check_stop(self, round_num: int) -> None:
        if self._stop.is_set():
            raise JobAborted("aborted on request; the last checkpoint stays valid",
                             job_id=self.job_id, round_num=round_num)

    def _statistics(self, weights: Weights) -> Weights:
        stat = self.job.statistics
        assert stat is not None
        totals = SumAggregator()
        failures: list[SiteFailure] = []
        sites = self._available()
        for site_id, result, _ in self._gather(TaskKind.STATISTICS, 0, sites, None,
                                            lambda s: {"name": stat.name}, failures):
            assert isinstance(result, StatsResult)
            try:
                totals.add(result.values, result.num_samples)
            except ValueError as exc:
                self._fail(failures, SiteFailure(site_id, 0, "statistics", str(exc)))
        self._require(totals.num_results, 0, "statistics", failures)
        return totals.finalize(stat, weights)

    def _train_round(self, round_num: int, weights: Weights) -> Weights:
        started = time.monotonic()
        self._round = round_num
        strategy = self.job.strategy
        selected = strategy.select_sites(round_num, self._available())
        self.listener.on_round_start(round_num, self.job.num_rounds, selected)
        aggregator = strategy.aggregator(round_num, weights)
        expected = strategy.result_spec(weights)
        train_metrics = WeightedMetrics()
        failures: list[SiteFailure] = []
        trained: list[str] = []
        configure = lambda s: strategy.configure_train(round_num, s)  # noqa: E731
        payload = strategy.train_payload(round_num, weights)
        # A transport that can (gRPC) folds each upload into the aggregate as it arrives.
        attempt = self._attempt
        streams = RoundStreams(aggregator, expected, lambda s: _task_id(
            self.job_id, round_num, TaskKind.TRAIN, s, attempt))
        self.transport.stream_into(streams)
        try:
            for site_id, result, folded in self._gather(
                    TaskKind.TRAIN, round_num, selected, payload, configure, failures, streams):
                assert isinstance(result, TrainResult)
                if not folded:
                    problem = self._train_problem(expected, result)
                    if problem:
                        self._fail(failures, SiteFailure(site_id, round_num, "train", problem))
                        continue
                    streams.add(site_id, result)
                train_metrics.add(result.num_samples, result.metrics)
                trained.append(site_id)
                del result  # dropped before the next one is received: one upload in memory
        finally:
            self.transport.stream_into(None)
            streams.close()  # uploads still arriving are taken back out
        self._require(aggregator.num_results, round_num, "train", failures)
        new_weights = aggregator.finish()
        bad = non_finite(new_weights)
        if bad:
            raise AggregationError(f"aggregated model is not finite in {bad}; keeping the last "
                                   "good model", job_id=self.job_id, round_num=round_num)
        self._finish_round(round_num, new_weights, trained, train_metrics.result(), failures,
                           started)
        return new_weights

    def _finish_round(self, round_num: int, weights: Weights, trained: list[str],
                      train_metrics: dict[str, float], failures: list[SiteFailure],
                      started: float) -> None:
        if round_num == 0:
            self.listener.on_round_start(0, self.job.num_rounds, self._available())
        saving: Future[Path] | None = None
        if self._checkpointer is not None:
            self._await_saved()  # the last round's, before this one's: one write at a time
            if self._saver is not None:  # strategies replace their state arrays, never mutate
                saving = self._saver.submit(self._checkpointer.save, round_num, weights,
                                            dict(self.job.strategy.state()))
                self._saved = saving  # awaited (its error raised) even if this round fails
            else:
                self._checkpointer.save(round_num, weights, self.job.strategy.state())
        site_eval: dict[str, SiteEval] = {}
        overall = WeightedMetrics()
        strategy = self.job.strategy
        every = self.job.evaluate_every
        evaluate = every > 0 and (round_num % every == 0 or round_num == self.job.num_rounds)
        for site_id, result, _ in self._gather(
            TaskKind.EVALUATE, round_num, self._available() if evaluate else [], weights,
            lambda s: strategy.configure_evaluate(round_num, s), failures,
        ):
            assert isinstance(result, EvalResult)
            site_eval[site_id] = SiteEval(result.num_samples, dict(result.metrics))
            overall.add(result.num_samples, result.metrics)
        record = RoundRecord(round_num, sorted(trained), train_metrics, overall.result(),
                             dict(sorted(site_eval.items())), failures,
                             time.monotonic() - started)
        self.history.append(record)
        if self.run_dir is not None:
            self.history.write(self.run_dir)
        self.listener.on_round_end(record)
        if saving is None:
            self.listener.on_round_saved(record)
        else:
            assert self._saver is not None
            self._saved = self._saver.submit(self._announce_saved, saving, record)

    def _announce_saved(self, saving: Future[Path], record: RoundRecord) -> None:
        saving.result()  # a failed write raises here, and the round is never announced saved
        self.listener.on_round_saved(record)

    def _await_saved(self, *, quietly: bool = False) -> None:
        """Wait for the checkpoint being written in the background, if any; its error, if it
        failed, is raised (or only logged, ``quietly``, when the run fails anyway)."""
        saved, self._saved = self._saved, None
        if saved is None:
            return
        try:
            saved.result()
        except Exception:
            if not quietly:
                raise
            log.exception("job %s: writing a checkpoint failed", self.job_id)

    # -- helpers ----------------------------------------------------------------------------
    def _available(self) -> list[str]:
        """Connected sites this job may use (its own site list, when it declares one)."""
        sites = self.transport.site_ids()
        if self.job.site_ids is None:
            return sites
        return [s for s in sites if s in self.job.site_ids]

    def _gather(
        self,
        kind: TaskKind,
        round_num: int,
        site_ids: list[str],
        weights: Weights | None,
        configure: Callable[[str], object],
        failures: list[SiteFailure],
        streams: RoundStreams | None = None,
    ) -> Iterator[tuple[str, Result, bool]]:
        """Send one task per site; yield each valid result as it arrives, until the deadline.

        Yields (site, result, folded): a folded result's tensors are already in the round's
        aggregate (``streams`` accepted them); its ``weights`` are empty.
        """
        deadline = time.monotonic() + self.job.round_timeout_s
        pending: dict[str, str] = {}
        for site_id in site_ids:
            task_id = _task_id(self.job_id, round_num, kind, site_id, self._attempt)
            task = Task(task_id, self.job_id, round_num, kind, weights, configure(site_id))  # type: ignore[arg-type]
            try:
                self.transport.send(site_id, task)
                pending[task_id] = site_id
            except FedcareError as exc:
                self._outage_in_round |= isinstance(exc, TransportError)  # not connected
                self._fail(failures, SiteFailure(site_id, round_num, kind.value, exc.message))
        while pending:
            self._check_stop(round_num)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            reply = self.transport.receive(min(remaining, 0.5))
            if reply is None:
                continue
            site_id = pending.get(reply.task_id)
            if site_id is None or site_id != reply.site_id:
                log.warning("job %s: discarding late or unknown reply %s from site %s",
                            self.job_id, reply.task_id, reply.site_id)
                continue
            del pending[reply.task_id]
            self._outage_in_round |= reply.connection_lost
            problem = self._check(kind, reply)
            if problem is None and reply.folded and (streams is None
                                                     or not streams.accept(reply.task_id)):
                problem = "its streamed upload was not complete when the round took it"
            self.listener.on_reply(round_num, site_id, problem is None)
            if problem is not None:
                self._fail(failures, SiteFailure(site_id, round_num, kind.value, problem))
                continue
            assert reply.result is not None
            result, folded = reply.result, reply.folded
            del reply  # hold no reference while waiting for the next reply (memory)
            yield site_id, result, folded
            del result
        for site_id in pending.values():
            self._fail(failures, SiteFailure(
                site_id, round_num, kind.value,
                f"no result within round_timeout_s={self.job.round_timeout_s}"))

    @staticmethod
    def _train_problem(expected: Weights, result: TrainResult) -> str | None:
        """Why a whole (not streamed) training result cannot be folded in, or None."""
        problems = incompatibilities(expected, result.weights)
        if problems:
            return "model does not match: " + "; ".join(problems)
        return _too_large(result)

    @staticmethod
    def _check(kind: TaskKind, reply: Reply) -> str | None:
        """Why a reply cannot be used, or None. Names the offending field."""
        if reply.error is not None:
            return reply.error
        result = reply.result
        if not isinstance(result, _RESULT_TYPES[kind]):
            return f"sent {type(result).__name__} for a {kind.value} task"
        problem = count_problem(result.num_samples)
        if problem is None and isinstance(result, TrainResult | EvalResult):
            problem = metrics_problem(result.metrics)
        if problem is not None:
            return problem
        if isinstance(result, TrainResult | StatsResult):
            values = result.weights if isinstance(result, TrainResult) else result.values
            bad = non_finite(values)
            if bad:
                return f"returned NaN or infinity in {bad}"
        return None

    def _fail(self, failures: list[SiteFailure], failure: SiteFailure) -> None:
        error = SiteError(failure.message, job_id=self.job_id, round_num=failure.round_num,
                          site_id=failure.site_id)
        log.error("%s", error)
        failures.append(failure)
        self.listener.on_failure(failure)

    def _require(self, count: int, round_num: int, kind: str, failures: list[SiteFailure]) -> None:
        if count >= self.job.min_sites:
            return
        details = "; ".join(f"site {f.site_id}: {f.message}" for f in failures) or "no sites"
        raise AggregationError(
            f"{kind}: only {count} valid result(s), min_sites={self.job.min_sites} ({details}); "
            "the last good global model is kept",
            job_id=self.job_id, round_num=round_num,
        )


def _task_id(job_id: str, round_num: int, kind: TaskKind, site_id: str, attempt: int = 0
             ) -> str:
    """A task's id; a round run again (after an outage) gets new ids, so a reply or a refusal
    meant for its first attempt can never be taken for one of the second."""
    again = f"/a{attempt}" if attempt else ""
    return f"{job_id}/r{round_num}{again}/{kind.value}/{site_id}"


def _too_large(result: TrainResult) -> str | None:
    """Why a float64 update could overflow the float64 sum, or None (checked before folding in,
    so a refused site leaves nothing of itself in the aggregate)."""
    for name, array in result.weights.items():
        if array.dtype == np.float64:
            problem = values_problem(name, array, result.num_samples)
            if problem:
                return problem
    return None
