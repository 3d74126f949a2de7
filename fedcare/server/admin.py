"""The admin API of the server: submit, status, sites, abort, download, metrics, watch, result.

``Sites`` answers ``{"connected": [...], "count": N, "presence": {site: {"connected": bool,
"since_s": float | None, "org": str | None, "version": str | None, "policy": {...} | None,
"last_message_age_s": float | None}}, "received_bytes": N, "sent_bytes": N}``: who is
connected now, how many, since when each site the caller may see is connected or gone, its
certificate's organisation, what a connected site stated when it connected (its fedcare
version and policy summary, :mod:`fedcare.core.site_profile`; None: not stated) and seconds
since its last message ended, and the bytes the sites' streams carried (replies in, tasks out),
all since this server process started.

Every call is authorised from the caller's verified certificate: a project admin may do
everything, a site admin may read (status, sites, metrics, watch), a viewer may read and
download results. Every call, allowed or refused, is audited with who asked for what
(:mod:`fedcare.server.audited`); each refusal is logged too. What a read shows depends on the
role too (:mod:`fedcare.server.visibility`): a site admin sees the aggregates and its own site's
data only, a viewer the aggregates only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import grpc

from fedcare.core.errors import FedcareError, StorageError, Unavailable
from fedcare.core.message import Reply, TrainResult
from fedcare.core.text import one_line
from fedcare.server.audited import audited
from fedcare.server.checkpoint import Checkpointer
from fedcare.server.visibility import (
    Scope,
    cross_site_view,
    failures_view,
    job_view,
    round_view,
    scope_of,
    site_names,
)
from fedcare.transport.codec import encode_parts
from fedcare.transport.grpc import fedcare_pb2 as pb
from fedcare.transport.grpc import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.grpc.chunks import to_chunks
from fedcare.transport.grpc.tls import PeerIdentity, peer_identity

if TYPE_CHECKING:
    from fedcare.server.service import FederationServer

log = logging.getLogger(__name__)

READ = {"Status", "Sites", "Metrics", "Watch", "Result"}
#: The ids the server gives jobs (``Store.add_job``): nothing else names a job.
JOB_ID = re.compile(r"job-[0-9a-f]{10}")
#: What names a workflow's result (``run_dir/<name>.json``): nothing else is read.
RESULT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: Results a caller other than a project admin may read, each through its view.
RESULT_VIEWS: dict[str, Callable[[Mapping[str, object], Scope], dict[str, object]]] = {
    "cross_site": cross_site_view,
}
PERMISSIONS = {
    "project_admin": READ | {"Submit", "Abort", "Download"},
    "site_admin": READ,
    "viewer": READ | {"Download"},
}


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, server: FederationServer) -> None:
        self.server = server

    def _caller(self, context: grpc.ServicerContext, action: str) -> PeerIdentity:
        identity = peer_identity(context)
        if identity is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate required")
        assert identity is not None
        role = (identity.role or "").split(":")[0]
        try:
            revocation = self.server.revocation_problem(identity)
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if revocation:
            reason = revocation
        elif action not in PERMISSIONS.get(role, set()):
            reason = f"role {role or 'none'} may not {action.lower()}"
        else:
            return identity
        log.warning("refused admin %s (%s): %s", identity.name, action, reason)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{identity.name}: {reason}")
        raise AssertionError  # abort raises

    @audited
    def Submit(self, request: pb.SubmitRequest, context: grpc.ServicerContext) -> pb.SubmitReply:
        caller = self._caller(context, "Submit")
        try:
            params = json.loads(request.params_json or "{}")
            if not isinstance(params, dict):
                raise ValueError("params must be a JSON object")
            job_id = self.server.submit(request.entry_point, params, caller.name,
                                        package=request.package)
        except StorageError as exc:  # the job is fine; the server cannot take it now
            context.abort(grpc.StatusCode.UNAVAILABLE, f"job refused: {exc}")
        except (FedcareError, ValueError) as exc:
            what = "a package" if request.package else one_line(request.entry_point, 200)
            log.warning("refused a job from %s (%s): %s", caller.name, what, one_line(exc, 500))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"job refused: {exc}")
        return pb.SubmitReply(job_id=job_id)

    @audited
    def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.JsonReply:
        scope = scope_of(self._caller(context, "Status").role)
        store = self.server.store
        jobs = [self._job_view({**row.as_dict(), "failed_sites": store.failed_sites(row.job_id)},
                               scope) for row in store.jobs()]
        return pb.JsonReply(json=json.dumps({"jobs": jobs}))

    def _job_view(self, job: dict[str, object], scope: Scope) -> dict[str, object]:
        """``job`` (a store row as a dict) as the caller of ``scope`` may see it."""
        if scope.all_sites:
            return job
        job_id = str(job["job_id"])
        store = self.server.store
        known = list(self.server.transport.site_ids())
        current = self.server.current
        if current is not None and current.job_id == job_id:
            known += current.job.site_ids or ()
        names = site_names(job, store.rounds(job_id), store.failures(job_id), known)
        return job_view(job, names, scope)

    @audited
    def Sites(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.JsonReply:
        scope = scope_of(self._caller(context, "Sites").role)
        connected = self.server.transport.site_ids()
        sites = [s for s in connected if scope.sees(s)]
        details = self.server.transport.site_details()
        presence = {s: p for s, p in self.server.presence.view(connected, details).items()
                    if scope.sees(s)}
        received, sent = self.server.transport.traffic.totals()
        return pb.JsonReply(json=json.dumps({"connected": sites, "count": len(connected),
                                             "presence": presence, "received_bytes": received,
                                             "sent_bytes": sent}))

    def _job_id(self, request: pb.JobRef, context: grpc.ServicerContext, caller: PeerIdentity,
                action: str) -> str:
        """The request's job id, if it is one the server could have made; else refused (and
        audited) before it names a file or a database row: ``../../x`` reads nothing."""
        job_id = request.job_id
        if JOB_ID.fullmatch(job_id):
            return job_id
        shown = one_line(job_id, 80)
        log.warning("refused admin %s (%s): %r is not a job id", caller.name, action, shown)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{shown!r} is not a job id")
        raise AssertionError  # abort raises

    @audited
    def Abort(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JsonReply:
        caller = self._caller(context, "Abort")
        self._job_id(request, context, caller, "Abort")
        outcome = self.server.abort(request.job_id, caller.name)
        if outcome == "unknown":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        return pb.JsonReply(json=json.dumps({"job_id": request.job_id, "result": outcome}))

    @audited
    def Metrics(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JsonReply:
        caller = self._caller(context, "Metrics")
        self._job_id(request, context, caller, "Metrics")
        if self.server.store.job(request.job_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        scope = scope_of(caller.role)
        rounds = [round_view(r, scope) for r in self.server.store.rounds(request.job_id)]
        return pb.JsonReply(json=json.dumps(rounds))

    @audited
    def Download(self, request: pb.JobRef, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        self._job_id(request, context, self._caller(context, "Download"), "Download")
        checkpoints = self.server.workspace / "jobs" / request.job_id / "checkpoints"
        saved = (Checkpointer(checkpoints, job_id=request.job_id).load_latest()
                 if checkpoints.exists() else None)
        if saved is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model for job {request.job_id} yet")
        assert saved is not None
        round_num, weights = saved
        reply = Reply(f"{request.job_id}/download", "server",
                      result=TrainResult(weights, max(round_num, 1), {"round_num": round_num}))
        yield from to_chunks(encode_parts(reply))

    @audited
    def Result(self, request: pb.ResultRef, context: grpc.ServicerContext) -> pb.JsonReply:
        caller = self._caller(context, "Result")
        job_id = self._job_id(pb.JobRef(job_id=request.job_id), context, caller, "Result")
        name = request.name
        if not RESULT_NAME.fullmatch(name):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{one_line(name, 80)!r} is not a result name")
        scope = scope_of(caller.role)
        view = RESULT_VIEWS.get(name)
        if view is None and not scope.all_sites:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"{caller.name}: only a project admin may read result {name}")
        if self.server.store.job(job_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id}")
        path = self.server.workspace / "jobs" / job_id / f"{name}.json"
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            shown = view(document, scope) if view is not None else document
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id} has no result {name} (yet)")
        except (OSError, ValueError) as exc:  # a damaged file: said, not served
            log.error("job %s: cannot read result %s at %s: %s", job_id, name, path, exc)
            context.abort(grpc.StatusCode.DATA_LOSS,
                          f"job {job_id}: result {name} cannot be read: {one_line(exc, 200)}")
        return pb.JsonReply(json=json.dumps(shown))

    @audited
    def Watch(self, request: pb.JobRef, context: grpc.ServicerContext) -> Iterator[pb.JsonReply]:
        caller = self._caller(context, "Watch")
        self._job_id(request, context, caller, "Watch")
        scope = scope_of(caller.role)
        store = self.server.store
        last = None
        seen = 0  # id of the last failure sent
        while context.is_active():
            try:
                revocation = self.server.revocation_problem(caller)
            except Unavailable:  # cannot check now: a watch admitted before goes on
                revocation = None
            if revocation:  # revoked while watching: the stream ends now
                log.warning("ending admin %s's watch: %s", caller.name, revocation)
                self.server.store.audit(caller.name, "refused:Watch", revocation,
                                        role=caller.role or "")
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{caller.name}: {revocation}")
            row = store.job(request.job_id)
            if row is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
            assert row is not None
            failures = store.failures(request.job_id, after_id=seen)
            visible = failures_view(failures, scope)
            state = (row.status, row.round_num, row.summary)
            if state != last or visible:
                rounds = store.rounds(request.job_id)
                latest = rounds[-1]["eval_metrics"] if rounds else {}
                yield pb.JsonReply(json=json.dumps({
                    **self._job_view(row.as_dict(), scope), "eval_metrics": latest,
                    "new_failures": visible}))
                last = state
            seen = int(failures[-1]["id"]) if failures else seen  # type: ignore[call-overload]
            if row.status not in ("queued", "running"):
                return
            time.sleep(0.2)
