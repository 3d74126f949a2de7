"""The federation server process: runs admins' jobs over the gRPC transport, durably.

Jobs run one at a time, in submission order. State lives in SQLite in the workspace and the
global model is checkpointed after every round, so a server killed at any moment resumes its
running job from the last completed round when it starts again; sites reconnect by themselves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from fedcare.core.config import build_job
from fedcare.core.errors import FedcareError, JobAborted
from fedcare.core.job import JobSource
from fedcare.core.message import JobRef, Reply, Task
from fedcare.core.stream import StreamTarget
from fedcare.core.workflow import SiteFailure
from fedcare.server.audit import AUDIT_FILE, AuditLog, HeadSigner
from fedcare.server.checkpoint import Checkpointer
from fedcare.server.controller import Checkpoint, RoundController
from fedcare.server.events import RunListener
from fedcare.server.history import RoundRecord, record_from_dict
from fedcare.server.store import JobRow, Store
from fedcare.transport.base import Transport
from fedcare.transport.grpc.server import GrpcServerTransport
from fedcare.transport.grpc.tls import PeerIdentity, TlsFiles

log = logging.getLogger(__name__)


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
        job = JobRef(self._entry_point, self._params_json, index, len(self._index))
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
                 port: int = 0, revoked: Callable[[], set[int]] = set,
                 connect_timeout_s: float = 300.0,
                 stall_timeout_s: float = 60.0, streamed_fold: bool = True,
                 receive_window_bytes: int = 0,
                 add_services: Callable[[FederationServer, object], None] | None = None
                 ) -> None:
        self.workspace = workspace
        self.store = Store(workspace / "server.db",
                           AuditLog(workspace / AUDIT_FILE, HeadSigner(tls.key, tls.cert)))
        self.revoked = revoked
        self.connect_timeout_s = connect_timeout_s
        self.streamed_fold = streamed_fold
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._aborts: dict[str, threading.Event] = {}
        self.current: RoundController | None = None
        self.transport = GrpcServerTransport(
            tls, host=host, port=port, authorize=self.authorize_site,
            on_connection=self._audit_connection,
            stall_timeout_s=stall_timeout_s, receive_window_bytes=receive_window_bytes,
            add_services=(lambda server: add_services(self, server)) if add_services else None)
        self.port = self.transport.port
        self._runner = threading.Thread(target=self._run_jobs, name="job-runner", daemon=True)

    def start(self) -> None:
        self.store.audit("server", "start", f"listening on {self.transport.address}")
        self.store.audit_log.start()
        self._runner.start()

    def _audit_connection(self, event: str, identity: PeerIdentity | None, detail: str) -> None:
        """A site connected, disconnected or was refused (``event``), as the transport saw it."""
        self.store.audit(identity.name if identity else "(no certificate)",
                         f"site_{event}", detail, role=(identity.role or "") if identity else "")

    def authorize_site(self, identity: PeerIdentity) -> str | None:
        if identity.serial in self.revoked():
            return f"certificate serial {identity.serial:x} is revoked"
        if identity.role != "site":
            return f"certificate is for a {identity.role or 'participant without role'}, not a site"
        return None

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, entry_point: str, params: dict[str, object], actor: str) -> str:
        job = build_job(JobSource(entry_point, params))  # refuses a bad job before it queues
        job_id = self.store.add_job(entry_point, params, actor, job.num_rounds)
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
        while not self._stop.is_set():
            row = self.store.next_job()
            if row is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self._run_job(row)
            except Exception as exc:  # e.g. an unreadable checkpoint: fail the job, go on
                log.exception("job %s failed", row.job_id)
                self.store.set_status(row.job_id, "failed", f"{type(exc).__name__}: {exc}")

    def _run_job(self, row: JobRow) -> None:
        try:
            job = build_job(JobSource(row.entry_point, row.params))
        except FedcareError as exc:
            self.store.set_status(row.job_id, "failed", str(exc))
            return
        run_dir = self.workspace / "jobs" / row.job_id
        resume = self._resume_point(row, Checkpointer(run_dir / "checkpoints", keep=2))
        stop = self._aborts.setdefault(row.job_id, threading.Event())
        if stop.is_set():  # aborted between being picked up and starting
            self.store.set_status(row.job_id, "aborted", "aborted before it started")
            self._aborts.pop(row.job_id, None)
            return
        self.store.set_status(row.job_id, "running")
        self.store.audit("server", "resume" if resume else "start", row.job_id)
        controller = RoundController(
            job, JobTransport(self.transport, row, job.site_ids,
                              streamed_fold=self.streamed_fold), run_dir=run_dir,
            job_id=row.job_id,
            listener=_StoreListener(self.store, row.job_id), resume=resume, stop=stop,
            connect_timeout_s=self.connect_timeout_s, keep_checkpoints=2,
            save_in_background=True)
        self.current = controller
        try:
            result = controller.run()
            self.store.set_status(row.job_id, "finished", summary=result.summary)
            log.info("job %s %s", row.job_id, result.summary)
        except JobAborted as exc:
            if not self._stop.is_set():  # a server shutting down leaves the job to resume
                self.store.set_status(row.job_id, "aborted", str(exc))
        except FedcareError as exc:
            log.error("%s", exc)
            self.store.set_status(row.job_id, "failed", str(exc))
        except Exception as exc:  # a bug in job code fails its job, not the job runner
            log.exception("job %s failed", row.job_id)
            self.store.set_status(row.job_id, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            self.current = None
            self._aborts.pop(row.job_id, None)

    def _resume_point(self, row: JobRow, checkpoints: Checkpointer) -> Checkpoint | None:
        if row.status != "running":
            return None
        records = [record_from_dict(r) for r in self.store.rounds(row.job_id)]
        if not records:
            return None
        last = records[-1].round_num
        weights = checkpoints.load(last)
        if weights is None:
            log.warning("job %s: no checkpoint of round %d; starting over", row.job_id, last)
            return None
        return Checkpoint(last, weights, records, checkpoints.load_strategy_state(last))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for event in list(self._aborts.values()):
            event.set()
        self.transport.close()
        self._runner.join(timeout=10)
        self.store.audit("server", "stop", "clean stop")
        self.store.close()
