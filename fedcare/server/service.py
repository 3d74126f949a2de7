"""The federation server process: runs admins' jobs over the gRPC transport, durably.

Jobs run one at a time, in submission order. State lives in SQLite in the workspace and the
global model is checkpointed after every round, so a server killed at any moment resumes its
running job from the last completed round when it starts again; sites reconnect by themselves.
One server holds a workspace at a time (:mod:`fedcare.server.lock`). A job whose disk or
database fails fails alone; the runner goes on with the next job, and while it cannot even
record how a job ended, it starts none and new jobs are refused with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict
from pathlib import Path

import grpc

from fedcare.core.config import build_job
from fedcare.core.errors import (
    ConfigError,
    FedcareError,
    JobAborted,
    StorageError,
    Unavailable,
)
from fedcare.core.ids import site_id_problem
from fedcare.core.job import JobSource
from fedcare.core.message import JobRef, Reply, Task
from fedcare.core.package import JobPackage, read_package
from fedcare.core.policy import CodePolicy
from fedcare.core.stream import StreamTarget
from fedcare.core.tracking import TrackingConfig
from fedcare.core.workflow import SiteFailure
from fedcare.server.audit import AUDIT_FILE, AuditLog, HeadSigner
from fedcare.server.checkpoint import Checkpointer
from fedcare.server.controller import Checkpoint, RoundController
from fedcare.server.events import ListenerGroup, RunListener
from fedcare.server.history import RoundRecord, record_from_dict
from fedcare.server.lock import WorkspaceLock
from fedcare.server.packages import PackageService, PackageStore
from fedcare.server.presence import PresenceBook
from fedcare.server.store import JobRow, Store
from fedcare.server.tracking import Tracker
from fedcare.transport.base import Transport
from fedcare.transport.grpc import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.grpc.server import GrpcServerTransport
from fedcare.transport.grpc.tls import PeerIdentity, TlsFiles

log = logging.getLogger(__name__)

#: Checkpoints kept per job: the newest may be of a round not yet recorded (written, then the
#: server stopped), and one more lets a damaged checkpoint fall back to the round before it.
KEEP_CHECKPOINTS = 3
#: Longest wait between two attempts to write to a store that failed (seconds).
MAX_RETRY_S = 30.0


class JobTransport(Transport):
    """Stamps every task with its job's entry point, so a real site can build the trainer.

    Each site's index (and the site count) is fixed for the whole job, so no two sites ever
    share an index: a job that declares its sites numbers them in the declared order (as the
    simulator does); otherwise the sites connected when the first task goes out are numbered
    in sorted order and a site first seen later gets the next free index. A late site is told
    the count as it stands then, so it may partition pooled data differently from the others.
    """

    def __init__(self, inner: Transport, row: JobRow,
                 site_ids: Sequence[str] | None = None, *, streamed_fold: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self._streamed_fold = streamed_fold
        self._entry_point = row.entry_point
        self._params_json = json.dumps(row.params, sort_keys=True)
        self._package = row.package
        self._index: dict[str, int] = {s: i for i, s in enumerate(site_ids or ())}

    def site_ids(self) -> list[str]:
        return self.inner.site_ids()

    def wait_for_sites(self, count: int, timeout_s: float) -> list[str]:
        return self.inner.wait_for_sites(count, timeout_s)

    def site_index(self, site_id: str) -> int:
        """The site's index in this job, assigned once and never changed."""
        if not self._index:
            for site in sorted(self.inner.site_ids()):
                self._index[site] = len(self._index)
        return self._index.setdefault(site_id, len(self._index))

    def send(self, site_id: str, task: Task) -> None:
        index = self.site_index(site_id)
        job = JobRef(self._entry_point, self._params_json, index, len(self._index),
                     self._package)
        self.inner.send(site_id, dataclasses.replace(task, job=job))

    def receive(self, timeout_s: float) -> Reply | None:
        return self.inner.receive(timeout_s)

    def stream_into(self, target: StreamTarget | None) -> None:
        if self._streamed_fold:  # else every upload arrives whole and is folded in then
            self.inner.stream_into(target)

    def may_still_connect(self) -> bool:
        return self.inner.may_still_connect()


class _StoreListener(RunListener):
    def __init__(self, store: Store, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self._waiting = False

    def on_round_saved(self, record: RoundRecord) -> None:
        # Recorded once its checkpoint is on disk: resuming starts after the last round the
        # store knows, so it must never know a round whose model could be missing.
        self.store.add_round(self.job_id, record.round_num, asdict(record))

    def on_failure(self, failure: SiteFailure) -> None:
        self.store.add_failure(self.job_id, failure.round_num, failure.site_id, failure.kind,
                               failure.message)
        self.store.audit("server", "site_failure",
                         f"{self.job_id}: site {failure.site_id} round {failure.round_num} "
                         f"{failure.kind}")

    def on_waiting(self, missing: list[str], connected: int, expected: int, waited_s: float,
                   limit_s: float) -> None:
        who = f"missing {', '.join(missing)}" if missing else f"{connected} of {expected} there"
        self._waiting = True
        self.store.set_summary(self.job_id, f"waiting for sites to connect: {who} "
                                            f"({waited_s:.0f} s of site_wait_s={limit_s:g})")

    def on_reply(self, round_num: int, site_id: str, ok: bool) -> None:
        if self._waiting:  # the wait is over: sites answer
            self._waiting = False
            self.store.set_summary(self.job_id, None)


class FederationServer:
    """Owns the transport, the store and the job runner of one federation server."""

    def __init__(self, tls: TlsFiles, workspace: Path, *, host: str = "127.0.0.1",
                 port: int = 0, revoked: Callable[[], AbstractSet[int]] = set,
                 connect_timeout_s: float = 300.0,
                 stall_timeout_s: float = 60.0, streamed_fold: bool = True,
                 receive_window_bytes: int = 0, code: CodePolicy | None = None,
                 add_services: Callable[[FederationServer, object], None] | None = None,
                 tracking: TrackingConfig | None = None, project: str = "fedcare"
                 ) -> None:
        """``code``: which job code this server runs (default: fedcare's built-in jobs
        only); see :class:`fedcare.core.policy.CodePolicy`. ``tracking``: where every job's
        per-round metrics are tracked besides its history (a relative TensorBoard folder is
        taken from the current directory); ``project``: the federation's name, for them."""
        self.workspace = workspace
        self.tls = tls
        self.code = code or CodePolicy()
        self.tracking = tracking or TrackingConfig()
        self.project = project
        self.packages = PackageStore(workspace / "packages", tls.ca)
        self.revoked = revoked
        self._crl_complaint = (0.0, "")
        self.connect_timeout_s = connect_timeout_s
        self.streamed_fold = streamed_fold
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._aborts: dict[str, threading.Event] = {}
        self.current: RoundController | None = None
        #: Since when each site is connected, or gone (admin ``Sites``).
        self.presence = PresenceBook()
        #: Why the runner cannot run jobs now (None: it can); submit refuses while it is set.
        self.runner_problem: str | None = None
        # how each job the store could not record ended: (status, error, summary)
        self._unrecorded: dict[str, tuple[str, str | None, str | None]] = {}
        with contextlib.ExitStack() as undo:  # a server that cannot start holds nothing
            self._lock = WorkspaceLock(workspace)
            undo.callback(self._lock.release)
            self.store = Store(workspace / "server.db",
                               AuditLog(workspace / AUDIT_FILE, HeadSigner(tls.key, tls.cert)))
            undo.callback(self.store.close)
            self.transport = GrpcServerTransport(
                tls, host=host, port=port, authorize=self.authorize_site,
                on_connection=self._audit_connection,
                stall_timeout_s=stall_timeout_s, receive_window_bytes=receive_window_bytes,
                add_services=lambda server: self._add_services(server, add_services))
            undo.pop_all()
        self.port = self.transport.port
        self._runner = threading.Thread(target=self._run_jobs, name="job-runner", daemon=True)

    def _add_services(self, server: grpc.Server,
                      more: Callable[[FederationServer, object], None] | None) -> None:
        pb_grpc.add_PackagesServicer_to_server(
            PackageService(self.packages, self.authorize_site), server)
        if more is not None:
            more(self, server)

    def start(self) -> None:
        self.store.audit("server", "start", f"listening on {self.transport.address}")
        self.store.audit_log.start()
        self._runner.start()

    def _audit_connection(self, event: str, identity: PeerIdentity | None, detail: str) -> None:
        """A site connected, disconnected or was refused (``event``), as the transport saw it."""
        if identity is not None and event in ("connected", "disconnected"):
            self.presence.record(identity.name, event == "connected", org=identity.org)
        self.store.audit(identity.name if identity else "(no certificate)",
                         f"site_{event}", detail, role=(identity.role or "") if identity else "")

    def revocation_problem(self, identity: PeerIdentity) -> str | None:
        """Why ``identity`` must be refused on revocation grounds, or None.

        Raises:
            Unavailable: The revocation list cannot be read or verified now (missing, half
                copied, forged). It must never un-revoke anybody, so nobody new is admitted
                meanwhile; the detail is logged here, not told to the peer.
        """
        try:
            revoked = self.revoked()
        except FedcareError as exc:
            now, said = time.monotonic(), str(exc)
            if said != self._crl_complaint[1] or now - self._crl_complaint[0] > 10:
                self._crl_complaint = (now, said)  # each new problem, then every 10 s
                log.error("%s", said)
            raise Unavailable("the server cannot check certificates against its revocation "
                              "list now; retry later") from None
        if identity.serial in revoked:
            return f"certificate serial {identity.serial:x} is revoked"
        return None

    def authorize_site(self, identity: PeerIdentity) -> str | None:
        problem = self.revocation_problem(identity)
        if problem:
            return problem
        if identity.role != "site":
            return f"certificate is for a {identity.role or 'participant without role'}, not a site"
        # the name becomes a file name (a site's model in cross-site validation)
        return site_id_problem(identity.name)

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, entry_point: str, params: dict[str, object], actor: str,
               package: bytes = b"") -> str:
        """Queue a job: a built-in or locally installed entry point, or a signed package.

        The job's code runs here only if this server's code policy allows it; a package is
        verified completely (content, signature, signer) first, and its signer must not be
        revoked. Raises ConfigError, naming why, for anything refused.
        """
        if package:
            if params or entry_point:
                raise ConfigError("a package names its entry point and params, signed with "
                                  "its code; pack it again to change them")
            pkg = read_package(package, self.tls.ca)
            self._check_package(pkg)
            self.packages.add(pkg)
            job = self.packages.build(pkg)  # refuses a bad job before it queues
            entry_point, params = pkg.entry_point, pkg.params
            what = f"package {pkg.package_id} signed by {pkg.signer}: {entry_point}"
        else:
            problem = self.code.refuses_entry_point(entry_point)
            if problem:
                raise ConfigError(f"this server's code policy refuses the job: {problem}")
            job = build_job(JobSource(entry_point, params))  # refuses a bad job before it queues
            what = entry_point
        problem = self.runner_problem
        if problem is None and self._runner.ident is not None and (
                not self._runner.is_alive() and not self._stop.is_set()):
            problem = "the job runner has stopped; see the server's log"
        if problem is not None:  # a job queued now would never run
            raise StorageError(f"the server cannot run jobs now: {problem}")
        job_id = self.store.add_job(entry_point, params, actor, job.num_rounds,
                                    package=pkg.package_id if package else None)
        # what was queued, beside the audited admin call: e.g. which package, by whom signed
        try:
            self.store.audit(actor, "queued", f"{job_id} {what} {json.dumps(params)}")
        except FedcareError as exc:  # queued already: the admin must learn its id
            log.error("job %s queued, but its audit entry cannot be written: %s", job_id, exc)
        self._wake.set()
        return job_id

    def abort(self, job_id: str, actor: str) -> str:
        row = self.store.job(job_id)
        if row is None:
            return "unknown"
        # Set the job's stop event whatever its state: the runner may have picked a queued job
        # up a moment ago and not yet marked it running; it checks the event before starting.
        if row.status in ("queued", "running"):
            self._aborts.setdefault(job_id, threading.Event()).set()
        if row.status == "queued":
            self.store.set_status(job_id, "aborted", f"aborted by {actor} before it started")
        return "aborting"

    def _run_jobs(self) -> None:
        """Run jobs until stopped: whatever one job or the store does, the runner goes on."""
        failures = 0  # consecutive rounds of the loop the store failed
        while not self._stop.is_set():
            try:
                self._record_unrecorded()
                row = self.store.next_job()
            except Exception as exc:  # the store (or a bug) fails: say so, start nothing
                failures += 1
                self._cannot_run(exc, retry_s=min(MAX_RETRY_S, 2.0 ** failures))
                continue
            if failures:
                log.warning("job runner: the server database works again; running jobs")
                failures, self.runner_problem = 0, None
            if row is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self._run_job(row)
            except Exception as exc:  # e.g. the store failed before the job started: fail it
                log.exception("job %s failed", row.job_id)
                self._end(row.job_id, "failed", _reason(exc))

    def _cannot_run(self, exc: Exception, retry_s: float) -> None:
        problem = _reason(exc)
        if problem != self.runner_problem:
            log.error("job runner: cannot run jobs: %s; new jobs are refused until this is "
                      "fixed (retrying every %.0f s or less)", problem, MAX_RETRY_S)
        self.runner_problem = problem
        self._stop.wait(retry_s)

    def _end(self, job_id: str, status: str, error: str | None = None,
             summary: str | None = None) -> None:
        """Record how a job ended; if the store cannot, keep it to record later (never
        raises: the runner must go on)."""
        try:
            self.store.set_status(job_id, status, error, summary)  # audited by the store
        except Exception as exc:
            log.error("job %s %s (%s), but the server database cannot record it: %s",
                      job_id, status, error or summary or "", _reason(exc))
            self._unrecorded[job_id] = (status, error, summary)

    def _record_unrecorded(self) -> None:
        """Record the jobs that ended while the store failed; raises while it still fails,
        so no other job starts (it would pick one of these up again as still running)."""
        for job_id, (status, error, summary) in list(self._unrecorded.items()):
            self.store.set_status(job_id, status, error, summary)
            del self._unrecorded[job_id]
            log.warning("job %s: recorded as %s now that the database works again", job_id,
                        status)

    def _check_package(self, pkg: JobPackage) -> None:
        """Refuse (ConfigError) a package whose signer is revoked or not allowed here."""
        revocation = self.revocation_problem(
            PeerIdentity(pkg.signer, pkg.signer_serial, "", "project_admin"))
        if revocation:
            raise ConfigError(f"package {pkg.package_id[:12]} signed by {pkg.signer}: "
                              f"{revocation}")
        problem = self.code.refuses_package(pkg.package_id, pkg.signer)
        if problem:
            raise ConfigError(f"this server's code policy refuses the job: {problem}")

    def _run_job(self, row: JobRow) -> None:
        try:
            if row.package:  # verified again: the stored file may have been altered since,
                pkg = self.packages.load(row.package)  # its signer revoked, the policy changed
                self._check_package(pkg)
                job = self.packages.build(pkg)
            else:
                problem = self.code.refuses_entry_point(row.entry_point)
                if problem:  # the policy may have changed since the job was queued
                    raise ConfigError(f"this server's code policy refuses the job: {problem}")
                job = build_job(JobSource(row.entry_point, row.params))
        except FedcareError as exc:
            self._end(row.job_id, "failed", str(exc))
            return
        run_dir = self.workspace / "jobs" / row.job_id
        resume = self._resume_point(row, Checkpointer(
            run_dir / "checkpoints", keep=KEEP_CHECKPOINTS, job_id=row.job_id))
        stop = self._aborts.setdefault(row.job_id, threading.Event())
        if stop.is_set():  # aborted between being picked up and starting
            self._aborts.pop(row.job_id, None)
            self._end(row.job_id, "aborted", "aborted before it started")
            return
        self.store.set_status(row.job_id, "running")
        self.store.audit("server", "resume" if resume else "start", row.job_id)
        listener: RunListener = _StoreListener(self.store, row.job_id)
        if self.tracking.enabled:
            listener = ListenerGroup(listener, Tracker(
                self.tracking, row.job_id, project=self.project,
                tags={"job_name": job.name, "entry_point": row.entry_point}))
        controller = RoundController(
            job, JobTransport(self.transport, row, job.site_ids,
                              streamed_fold=self.streamed_fold), run_dir=run_dir,
            job_id=row.job_id, listener=listener, resume=resume, stop=stop,
            connect_timeout_s=self.connect_timeout_s, keep_checkpoints=KEEP_CHECKPOINTS,
            save_in_background=True)
        self.current = controller
        try:
            result = controller.run()
            log.info("job %s %s", row.job_id, result.summary)
            self._end(row.job_id, "finished", summary=result.summary)
        except JobAborted as exc:
            if self._stop.is_set():  # a server shutting down leaves the job to resume
                return
            self._end(row.job_id, "aborted", str(exc))
        except FedcareError as exc:  # a StorageError too: this job's disk or database failed
            log.error("%s", exc)
            self._end(row.job_id, "failed", str(exc))
        except Exception as exc:  # a bug in job code fails its job, not the job runner
            log.exception("job %s failed", row.job_id)
            self._end(row.job_id, "failed", _reason(exc))
        finally:
            self.current = None
            self._aborts.pop(row.job_id, None)

    def _resume_point(self, row: JobRow, checkpoints: Checkpointer) -> Checkpoint | None:
        """Where a job the server was running when it stopped goes on: the newest good
        checkpoint of a recorded round. A damaged one falls back to the one before it (the
        warning names the file and why); the records after the round resumed from are
        discarded, as are the checkpoints after it, and those rounds run again."""
        if row.status != "running":
            return None
        records = [record_from_dict(r) for r in self.store.rounds(row.job_id)]
        if not records:
            return None
        last = records[-1].round_num
        saved = checkpoints.latest(max_round=last)
        resumed = saved.round_num if saved is not None else -1
        if resumed < last:
            how = (f"resuming from round {resumed}" if saved is not None
                   else "starting over")
            again = (f"round {last} runs again" if resumed + 1 == last
                     else f"rounds {resumed + 1}-{last} run again")
            log.warning("job %s: no good checkpoint of its last recorded round %d; %s, and %s",
                        row.job_id, last, how, again)
            self.store.discard_rounds_after(row.job_id, resumed)
            self.store.audit("server", "fallback", f"{row.job_id}: {how} (recorded {last})")
        checkpoints.discard_after(resumed)
        if saved is None:
            return None
        return Checkpoint(resumed, saved.weights, [r for r in records if r.round_num <= resumed],
                          saved.strategy_state)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for event in list(self._aborts.values()):
            event.set()
        self.transport.close()
        if self._runner.ident is not None:  # started
            self._runner.join(timeout=10)
        try:
            self.store.audit("server", "stop", "clean stop")
        except FedcareError as exc:
            log.error("cannot record the server's stop in the audit log: %s", exc)
        finally:
            self.store.close()
            self._lock.release()


def _reason(exc: BaseException) -> str:
    """One line for the job's error: a fedcare error's own words, else the exception's."""
    return str(exc) if isinstance(exc, FedcareError) else f"{type(exc).__name__}: {exc}"
