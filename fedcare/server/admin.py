"""The admin API of the server: submit, status, sites, abort, download, metrics, watch.

Every call is authorised from the caller's verified certificate: a project admin may do
everything, a site admin may read (status, sites, metrics, watch), a viewer may read and
download results. Every call, allowed or refused, is audited with who asked for what
(:mod:`fedcare.server.audited`); each refusal is logged too.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from fedcare.core.errors import FedcareError
from fedcare.core.message import Reply, TrainResult
from fedcare.core.text import one_line
from fedcare.server.audited import audited
from fedcare.server.checkpoint import Checkpointer
from fedcare.transport.codec import encode_parts
from fedcare.transport.grpc import fedcare_pb2 as pb
from fedcare.transport.grpc import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.grpc.chunks import to_chunks
from fedcare.transport.grpc.tls import PeerIdentity, peer_identity

if TYPE_CHECKING:
    from fedcare.server.service import FederationServer

log = logging.getLogger(__name__)

READ = {"Status", "Sites", "Metrics", "Watch"}
#: The ids the server gives jobs (``Store.add_job``): nothing else names a job.
JOB_ID = re.compile(r"job-[0-9a-f]{10}")
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
        if identity.serial in self.server.revoked():
            reason = "certificate is revoked"
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
            job_id = self.server.submit(request.entry_point, params, caller.name)
        except (FedcareError, ValueError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"job refused: {exc}")
        return pb.SubmitReply(job_id=job_id)

    @audited
    def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.JsonReply:
        self._caller(context, "Status")
        store = self.server.store
        jobs = [{**row.as_dict(), "failed_sites": store.failed_sites(row.job_id)}
                for row in store.jobs()]
        return pb.JsonReply(json=json.dumps({"jobs": jobs}))

    @audited
    def Sites(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.JsonReply:
        caller = self._caller(context, "Sites")
        sites = self.server.transport.site_ids()
        role = caller.role or ""
        if role.startswith("site_admin:"):
            sites = [s for s in sites if s == role.split(":", 1)[1]]
        return pb.JsonReply(json=json.dumps({"connected": sites}))

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
        self._job_id(request, context, self._caller(context, "Metrics"), "Metrics")
        if self.server.store.job(request.job_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        return pb.JsonReply(json=json.dumps(self.server.store.rounds(request.job_id)))

    @audited
    def Download(self, request: pb.JobRef, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        self._job_id(request, context, self._caller(context, "Download"), "Download")
        checkpoints = self.server.workspace / "jobs" / request.job_id / "checkpoints"
        saved = Checkpointer(checkpoints).load_latest() if checkpoints.exists() else None
        if saved is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model for job {request.job_id} yet")
        assert saved is not None
        round_num, weights = saved
        reply = Reply(f"{request.job_id}/download", "server",
                      result=TrainResult(weights, max(round_num, 1), {"round_num": round_num}))
        yield from to_chunks(encode_parts(reply))

    @audited
    def Watch(self, request: pb.JobRef, context: grpc.ServicerContext) -> Iterator[pb.JsonReply]:
        self._job_id(request, context, self._caller(context, "Watch"), "Watch")
        store = self.server.store
        last = None
        seen = 0  # id of the last failure sent
        while context.is_active():
            row = store.job(request.job_id)
            if row is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
            assert row is not None
            failures = store.failures(request.job_id, after_id=seen)
            state = (row.status, row.round_num, row.summary)
            if state != last or failures:
                rounds = store.rounds(request.job_id)
                latest = rounds[-1]["eval_metrics"] if rounds else {}
                yield pb.JsonReply(json=json.dumps({**row.as_dict(), "eval_metrics": latest,
                                                    "new_failures": failures}))
                last = state
                seen = int(failures[-1]["id"]) if failures else seen  # type: ignore[call-overload]
            if row.status not in ("queued", "running"):
                return
            time.sleep(0.2)
