"""The job runner: drives a Job's workflows over any Transport.

The runner owns what every workflow shares: the connection to the sites (one gather primitive:
send one task per site, validate and hand back results as they arrive until the deadline,
record every failure), ``min_sites``, checkpoints, federated evaluation, the round history and
the run's listener. What a job *does* is its workflows (:mod:`fedcare.server.workflows`): by
default federated statistics (if the job has any) and then ``num_rounds`` training rounds. A
site that fails is recorded, reported and left out; a step that cannot meet ``min_sites``
stops the job with an AggregationError, and the last good global model stays on disk untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Generator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.core.errors import (
    AggregationError,
    FedcareError,
    JobAborted,
    SiteError,
    StorageError,
    TransportError,
)
from fedcare.core.job import Job
from fedcare.core.message import EvalResult, Reply, StatsResult, Task, TaskKind, TrainResult
from fedcare.core.metric_parts import is_bin
from fedcare.core.text import one_line
from fedcare.core.validation import non_finite
from fedcare.core.weights import Weights
from fedcare.core.workflow import Arrival, Gather, SiteFailure, StepOutcome
from fedcare.server.checkpoint import Checkpointer
from fedcare.server.checks import count_problem, metrics_problem
from fedcare.server.events import RunListener, RunState, RunStatus
from fedcare.server.history import History, RoundRecord, SiteEval
from fedcare.server.metrics import WeightedMetrics
from fedcare.server.workflows import default_workflows
from fedcare.transport.base import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """Where a resumed job starts: the last completed round, its model and the records so far."""

    round_num: int
    weights: Weights
    records: list[RoundRecord]
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """The final global model, the per-round history of a run, and the workflows' results
    (e.g. ``cross_site_validation``), by name."""

    weights: Weights
    history: History
    run_dir: Path | None
    results: dict[str, dict[str, object]] = field(default_factory=dict)
    #: Every site failure of the run, in order (those of every round and workflow).
    failures: list[SiteFailure] = field(default_factory=list)
    #: The job's sites: those it declares, and any other that was sent a task.
    sites: list[str] = field(default_factory=list)
    #: ``finished with N of M sites``: M the job's sites, N those whose last task succeeded
    #: (a site that failed and then recovered counts); then each failing site's last reason.
    summary: str = ""

    @property
    def failed_sites(self) -> list[str]:
        """Sites that failed at least one task (or never connected), sorted."""
        return sorted({f.site_id for f in self.failures})


#: Failures that any later valid result of the same site makes good (it connected, it started,
#: another site sent the initial model).
_STARTING = ("absent", "prepare", "initial_model")
#: Tasks sent again every round: the last one's outcome is the site's. Any other kind (a
#: statistics pass, a model to validate, a workflow's own) is a one-off: a later success,
#: which is another pass or another model, does not make up for a failed one.
_REPEATED = (TaskKind.TRAIN, TaskKind.EVALUATE)


def completion_summary(sites: list[str],
                       outcome: Mapping[str, Mapping[str, SiteFailure | None]],
                       failures: list[SiteFailure]) -> str:
    """One line for the people responsible: how many sites ended the job well, the last reason
    of each site that did not, and the sites that failed earlier and recovered.

    A site ends well when its last training and evaluation tasks succeeded and it failed no
    one-off task (a statistics pass, a model to validate); a site that was absent or could
    not start, and later answered, counts as recovered.
    """
    order = {id(f): i for i, f in enumerate(failures)}
    failed: dict[str, SiteFailure] = {}
    for site, kinds in outcome.items():
        pending = [f for f in kinds.values() if f is not None]
        if pending:
            failed[site] = max(pending, key=lambda f: order.get(id(f), -1))
    everyone = sorted(set(sites) | set(outcome))
    line = f"finished with {len(everyone) - len(failed)} of {len(everyone)} sites"
    if failed:
        line += "; " + "; ".join(
            f"{site}: round {f.round_num} {f.kind}: {f.message}"
            for site, f in sorted(failed.items()))
    counts = Counter(f.site_id for f in failures if f.site_id not in failed)
    if counts:
        line += "; recovered after failing: " + ", ".join(
            f"{site} ({n} {'failure' if n == 1 else 'failures'})"
            for site, n in sorted(counts.items()))
    return line


class RoundController:
    """Runs one job to completion over a transport; the context its workflows run in."""

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
        self._job = job
        self._job_id = job_id or job.name
        self.transport = transport
        self._run_dir = run_dir
        self.listener = listener or RunListener()
        self.connect_timeout_s = (job.site_wait_s if job.site_wait_s is not None
                                  else connect_timeout_s)
        self.history = History()
        self.results: dict[str, dict[str, object]] = {}
        self._resume = resume
        self._stop = stop or threading.Event()
        self._pre_failures: list[SiteFailure] = []  # before round 0 is recorded (absent sites)
        self.failures: list[SiteFailure] = []  # all of the run's, in order
        # exact names of the parameters that never leave the sites (FedBN), set once the
        # job's model is known: a site compares names, it runs no pattern the server sends
        self._local_names: tuple[str, ...] = ()
        self._trained = False  # the training workflow has run (in this process)
        self._step = 0  # index of the workflow running: part of its task ids
        # each site's last outcome per task kind: None (a valid result) or its last failure
        self._outcome: dict[str, dict[str, SiteFailure | None]] = {}
        self._asked: set[str] = set(job.site_ids or ())  # the job's sites, and all sent tasks
        if resume is not None:
            for record in resume.records:
                self.history.append(record)
        self._checkpointer = (Checkpointer(run_dir / "checkpoints", keep=keep_checkpoints,
                                           job_id=self._job_id) if run_dir else None)
        # Writing a round's checkpoint (0.1-0.4 s per 100 MB with fsync here) can overlap the
        # next round; the listener hears ``on_round_saved`` only once it is on disk, in order.
        self._saver = (ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
                       if save_in_background and self._checkpointer else None)
        self._saved: Future[Any] | None = None
        self._state = RunState.PENDING
        self._round = 0
        self._error: str | None = None

    # -- the context's read-only side ----------------------------------------------------
    @property
    def job(self) -> Job:
        return self._job

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def run_dir(self) -> Path | None:
        return self._run_dir

    @property
    def resume_round(self) -> int | None:
        """The resumed run's last round, until its training workflow has run again: a step
        after it (statistics of the final model, cross-site validation) runs afresh."""
        if self._resume is None or self._trained:
            return None
        return self._resume.round_num

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
        else:
            self._state = RunState.FINISHED
        finally:
            if self._saver is not None:
                self._saver.shutdown()
            self.listener.on_run_end(self._state, self._error)
        return RunResult(weights, self.history, self.run_dir, dict(self.results),
                         list(self.failures), sorted(self._asked),
                         completion_summary(sorted(self._asked), self._outcome,
                                            self.failures))

    def _run(self) -> Weights:
        job = self.job
        self._wait_for_sites()
        sites = self.sites()
        for site_id in job.site_ids or ():
            if site_id not in sites:
                self.fail(self._pre_failures, SiteFailure(
                    site_id, 0, "absent", f"not connected after waiting site_wait_s="
                    f"{self.connect_timeout_s:g} for the job's sites; going on without it"))
        if len(sites) < job.min_sites:
            raise AggregationError(
                f"only {len(sites)} site(s) connected {sites}, min_sites={job.min_sites}",
                job_id=self.job_id,
            )
        self._prepare(sites)
        if self._resume is not None:
            weights = self._resume.weights
            job.strategy.load_state(self._resume.strategy_state)
            log.info("job %s: resuming after round %d", self.job_id, self._resume.round_num)
        else:
            weights = self._initial_weights()
        self._local_names = tuple(sorted(job.strategy.local_names(weights)))
        model = [weights]  # handed over, not kept here: the first model need not outlive step 1
        del weights
        for step, workflow in enumerate(job.workflows or default_workflows(job)):
            self.check_stop(self._round)
            log.info("job %s: workflow %s", self.job_id, workflow.name)
            self._step = step
            model.append(workflow.run(self, model.pop()))
            self._trained |= workflow.trains
        weights = model.pop()
        if not self.history.rounds:  # nothing trained (statistics alone): keep the result
            self.finish_round(0, weights, StepOutcome(), time.monotonic(), evaluate=False)
        return weights

    def _wait_for_sites(self, report_every_s: float = 5.0) -> None:
        """Wait up to the job's ``site_wait_s`` for its sites (all declared ones, else
        ``min_sites``), telling the listener every few seconds who is still missing."""
        job = self.job
        expected = len(job.site_ids) if job.site_ids else job.min_sites
        started = time.monotonic()
        while True:
            self.check_stop(0)
            waited = time.monotonic() - started
            remaining = self.connect_timeout_s - waited
            self.transport.wait_for_sites(expected, max(0.0, min(remaining, report_every_s)))
            connected = self.sites()
            if len(connected) >= expected or remaining <= report_every_s or (
                    not self.transport.may_still_connect()):
                return
            missing = ([s for s in job.site_ids if s not in connected] if job.site_ids
                       else [])
            waited = time.monotonic() - started
            log.warning("job %s: waiting for sites to connect: %d of %d there, missing %s "
                        "(%.0f s of site_wait_s=%g)", self.job_id, len(connected), expected,
                        missing or "-", waited, self.connect_timeout_s)
            self.listener.on_waiting(missing, len(connected), expected, waited,
                                     self.connect_timeout_s)

    def _prepare(self, sites: list[str]) -> None:
        """Every site builds its trainer for this job now (imports, data), so round 1 pays for
        no set-up and a site that cannot start the job is reported before any training."""
        started = time.monotonic()
        request = Gather(TaskKind.PREPARE, 0, sites, EvalResult)
        prepared = 0
        with contextlib.closing(self.gather(request, self._pre_failures)) as arrivals:
            for _ in arrivals:
                prepared += 1
        self.require(prepared, 0, "prepare", self._pre_failures)
        log.info("job %s: %d site(s) prepared in %.2f s", self.job_id, prepared,
                 time.monotonic() - started)

    def _initial_weights(self) -> Weights:
        """The job's initial model: built here, or (``initial_weights=None``) sent by the
        first site that can, in site order, so the server imports no deep-learning code."""
        if self.job.initial_weights is not None:
            return Weights(self.job.initial_weights())
        failures: list[SiteFailure] = []
        for attempt, site_id in enumerate(sorted(self.sites())):
            request = Gather(TaskKind.INITIAL_MODEL, 0, [site_id], TrainResult,
                             attempt=attempt)
            with contextlib.closing(self.gather(request, failures)) as arrivals:
                for arrival in arrivals:
                    assert isinstance(arrival.result, TrainResult)
                    log.info("job %s: initial model from site %s", self.job_id, site_id)
                    return arrival.result.weights
        self.require(0, 0, "initial_model", failures)  # raises, naming every site's failure
        raise AssertionError("unreachable")

    # -- the context: sites and the gather primitive ---------------------------------------
    def sites(self) -> list[str]:
        """Connected sites this job may use (its own site list, when it declares one)."""
        sites = self.transport.site_ids()
        if self.job.site_ids is None:
            return sites
        return [s for s in sites if s in self.job.site_ids]

    def task_id(self, request: Gather, site_id: str) -> str:
        step = f"/w{self._step}" if self._step else ""
        return _task_id(self.job_id + step, request.round_num, request.kind, site_id,
                        request.attempt)

    def gather(self, request: Gather, failures: list[SiteFailure]
               ) -> Generator[Arrival, None, None]:
        """Send one task per site; yield each valid result as it arrives, until the deadline.

        A folded result's tensors are already in the round's aggregate (``request.streams``
        accepted them); its ``weights`` are empty.
        """
        timeout = request.timeout_s if request.timeout_s is not None else (
            self.job.round_timeout_s)
        limit = (f"timeout_s={timeout:g}" if request.timeout_s is not None
                 else f"round_timeout_s={timeout:g}")
        deadline = time.monotonic() + timeout
        kind, round_num = request.kind, request.round_num
        streams = request.streams
        pending: dict[str, str] = {}
        local_names = self._local_names
        if streams is not None:
            self.transport.stream_into(streams)
        try:
            for site_id in request.site_ids:
                task_id = self.task_id(request, site_id)
                config = request.configure(site_id) if request.configure else {}
                payload = (request.payload_for(site_id) if request.payload_for is not None
                           else request.payload)
                task = Task(task_id, self.job_id, round_num, kind, payload, config,
                            local_names=local_names)
                self._asked.add(site_id)
                try:
                    self.transport.send(site_id, task)
                    pending[task_id] = site_id
                except FedcareError as exc:
                    self.fail(failures, SiteFailure(
                        site_id, round_num, kind, exc.message,
                        connection_lost=isinstance(exc, TransportError)))  # not connected
            while pending:
                self.check_stop(round_num)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                reply = self.transport.receive(min(remaining, 0.5))
                if reply is None:
                    continue
                asked = pending.get(reply.task_id)
                if asked is None or asked != reply.site_id:
                    log.warning("job %s: discarding late or unknown reply %s from site %s",
                                self.job_id, one_line(reply.task_id, 200), reply.site_id)
                    continue
                site_id = asked
                del pending[reply.task_id]
                problem = _check(request.expect, kind, reply)
                if problem is None and reply.folded and (
                        streams is None or not streams.accept(reply.task_id)):
                    problem = "its streamed upload was not complete when the round took it"
                self.listener.on_reply(round_num, site_id, problem is None)
                if problem is not None:
                    self.fail(failures, SiteFailure(site_id, round_num, kind, problem,
                                                    connection_lost=reply.connection_lost))
                    continue
                assert reply.result is not None
                self._succeeded(site_id, kind)
                arrival = Arrival(site_id, reply.result, reply.folded)
                del reply  # hold no reference while waiting for the next reply (memory)
                yield arrival
                del arrival
            for site_id in pending.values():
                self.fail(failures, SiteFailure(
                    site_id, round_num, kind, f"no result within {limit}"))
        finally:
            if streams is not None:
                self.transport.stream_into(None)
                streams.close()  # uploads still arriving go back out

    def fail(self, failures: list[SiteFailure], failure: SiteFailure) -> None:
        # A site's own words (its error text) become one bounded, printable line here, before
        # any log, record, store or terminal sees them.
        failure = dataclasses.replace(failure, message=one_line(failure.message),
                                      kind=one_line(failure.kind, 64))
        error = SiteError(failure.message, job_id=self.job_id, round_num=failure.round_num,
                          site_id=failure.site_id)
        log.error("%s", error)
        failures.append(failure)
        self.failures.append(failure)
        self._outcome.setdefault(failure.site_id, {})[failure.kind] = failure
        self.listener.on_failure(failure)

    def _succeeded(self, site_id: str, kind: str) -> None:
        outcome = self._outcome.setdefault(site_id, {})
        if kind in _REPEATED or outcome.get(kind) is None:
            outcome[kind] = None
        for start in _STARTING:  # any answer shows the site is there and runs the job
            outcome.pop(start, None)

    def require(self, count: int, round_num: int, kind: str,
                failures: list[SiteFailure]) -> None:
        if count >= self.job.min_sites:
            return
        details = "; ".join(f"site {f.site_id}: {f.message}" for f in failures) or "no sites"
        kept = "; the last good global model is kept" if self.history.rounds else ""
        raise AggregationError(
            f"{kind}: only {count} valid result(s), min_sites={self.job.min_sites} ({details})"
            f"{kept}", job_id=self.job_id, round_num=round_num,
        )

    def check_stop(self, round_num: int) -> None:
        if self._stop.is_set():
            raise JobAborted("aborted on request; the last checkpoint stays valid",
                             job_id=self.job_id, round_num=round_num)

    def await_sites(self, round_num: int, since: float) -> None:
        need, limit = self.job.min_sites, self.job.rejoin_timeout_s
        log.warning("job %s round %d: %d of min_sites=%d connected %s; waiting up to %.0f s for "
                    "sites to rejoin", self.job_id, round_num, len(self.sites()), need,
                    self.sites(), limit - (time.monotonic() - since))
        while len(available := self.sites()) < need:
            self.check_stop(round_num)
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
            if len(self.sites()) < need:  # others connected, not this job's sites
                self._stop.wait(min(remaining, 0.2))
        log.warning("job %s round %d: %d sites connected again %s", self.job_id, round_num,
                    len(available), available)

    # -- the context: records, checkpoints, results ---------------------------------------
    def begin_round(self, round_num: int, site_ids: list[str]) -> None:
        """Announce a round (to progress bars and the status view)."""
        self._round = round_num
        self.listener.on_round_start(round_num, self.job.num_rounds, site_ids)

    def finish_round(self, round_num: int, weights: Weights, outcome: StepOutcome,
                     started: float, *, evaluate: bool = True) -> None:
        if round_num == 0:
            self.begin_round(0, self.sites())
        failures = [*self._pre_failures, *outcome.failures]
        self._pre_failures = []
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
        evaluate = evaluate and every > 0 and (round_num % every == 0
                                               or round_num == self.job.num_rounds)
        request = Gather(TaskKind.EVALUATE, round_num, self.sites() if evaluate else [],
                         EvalResult, weights,
                         lambda s: strategy.configure_evaluate(round_num, s))
        with contextlib.closing(self.gather(request, failures)) as arrivals:
            for arrival in arrivals:
                result = arrival.result
                assert isinstance(result, EvalResult)
                site_eval[arrival.site_id] = SiteEval(  # histogram bins: summed only
                    result.num_samples, {k: v for k, v in result.metrics.items() if not is_bin(k)})
                overall.add(result.num_samples, result.metrics)
        record = RoundRecord(round_num, sorted(outcome.trained), dict(outcome.train_metrics),
                             overall.result(), dict(sorted(site_eval.items())), failures,
                             time.monotonic() - started, dict(sorted(outcome.site_train.items())))
        self.history.append(record)
        if self.run_dir is not None:
            with _disk_errors(self.job_id, round_num, f"the run's metrics in {self.run_dir}"):
                self.history.write(self.run_dir)
        self.listener.on_round_end(record)
        if saving is None:
            self.listener.on_round_saved(record)
        else:
            assert self._saver is not None
            self._saved = self._saver.submit(self._announce_saved, saving, record)

    def save_result(self, name: str, data: Mapping[str, object]) -> None:
        document = dict(data)
        self.results[name] = document
        if self.run_dir is not None:
            path = self.run_dir / f"{name}.json"
            with _disk_errors(self.job_id, None, str(path)):
                self.run_dir.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(document, indent=1))
        self.listener.on_result(name, document)

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


@contextlib.contextmanager
def _disk_errors(job_id: str, round_num: int | None, what: str) -> Iterator[None]:
    """A file of the run that cannot be written (a full disk) fails the job naming it."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"cannot write {what}: {exc.strerror or exc}", job_id=job_id,
                           round_num=round_num) from exc


def _check(expect: type, kind: str, reply: Reply) -> str | None:
    """Why a reply cannot be used, or None. Names the offending field."""
    if reply.error is not None:
        return reply.error
    result = reply.result
    if result is None or not isinstance(result, expect):
        return f"sent {type(result).__name__} for a {kind} task"
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


def _task_id(job_id: str, round_num: int, kind: str, site_id: str, attempt: int = 0) -> str:
    """A task's id; a round run again (after an outage) gets new ids, so a reply or a refusal
    meant for its first attempt can never be taken for one of the second."""
    again = f"/a{attempt}" if attempt else ""
    return f"{job_id}/r{round_num}{again}/{kind}/{site_id}"
