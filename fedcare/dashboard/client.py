"""The dashboard's only way to the federation: the admin gRPC API, with one admin kit's certificate.

:class:`AdminApi` is what the web app needs of the server; :class:`GrpcAdminApi` is the real
one (tests give the app a fake). The dashboard holds no state of the federation and no rights
of its own: every page is one or more admin calls made as the kit's admin, and the server
filters and refuses them by that admin's role as it does for ``fedcare admin``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np
from cryptography import x509

from fedcare.core.errors import ConfigError, FedcareError
from fedcare.core.message import TrainResult
from fedcare.core.text import one_line
from fedcare.provision import load_kit
from fedcare.server.admin import PERMISSIONS
from fedcare.transport.codec import decode
from fedcare.transport.grpc import fedcare_pb2 as pb
from fedcare.transport.grpc import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.grpc.chunks import ADMIN_REPLY_LIMIT
from fedcare.transport.grpc.client import secure_channel
from fedcare.transport.grpc.tls import TlsFiles

#: gRPC status -> the HTTP status the dashboard answers with.
HTTP_STATUS = {"NOT_FOUND": 404, "PERMISSION_DENIED": 403, "INVALID_ARGUMENT": 400,
               "UNAUTHENTICATED": 401, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
CALL_TIMEOUT_S = 30.0

JsonDict = dict[str, object]


class AdminCallError(FedcareError):
    """The server refused or failed an admin call; ``code`` is the gRPC status name."""

    def __init__(self, method: str, code: str, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"{method}: {details or code}")

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 502)


class WatchStream(Protocol):
    """A job's live updates (``Admin.Watch`` documents), ended early by ``cancel``."""

    def __iter__(self) -> Iterator[JsonDict]: ...

    def cancel(self) -> None: ...


class AdminApi(Protocol):
    """What the dashboard asks of the server, as one admin.

    ``role`` is the admin's certificate role (``project_admin``, ``site_admin:<site>``,
    ``viewer``): the dashboard offers only the actions the server grants it (:func:`may`).
    """

    role: str
    name: str
    server: str

    def status(self) -> list[JsonDict]: ...

    def sites(self) -> JsonDict: ...

    def metrics(self, job_id: str) -> list[JsonDict]: ...

    def watch(self, job_id: str) -> WatchStream: ...

    def abort(self, job_id: str) -> JsonDict: ...

    def model_npz(self, job_id: str) -> bytes: ...

    def result(self, job_id: str, name: str) -> JsonDict | None: ...

    def submit_package(self, package: bytes) -> str: ...


def may(role: str, action: str) -> bool:
    """Whether the server lets ``role`` call ``action`` (an Admin method name)."""
    return action in PERMISSIONS.get(role.split(":")[0], set())


@dataclass
class _GrpcWatch:
    call: grpc.CallIterator[pb.JsonReply]

    def __iter__(self) -> Iterator[JsonDict]:
        try:
            for reply in self.call:
                yield json.loads(reply.json)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise _error("Watch", exc) from None

    def cancel(self) -> None:
        self.call.cancel()  # type: ignore[no-untyped-call]


def _error(method: str, exc: grpc.RpcError) -> AdminCallError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return AdminCallError(method, code.name if code is not None else "UNKNOWN",
                          one_line(details or "", 500))


def role_of(cert_pem: bytes) -> str:
    """The role in a certificate's title, as the server reads it (``peer_identity``)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    titles = cert.subject.get_attributes_for_oid(x509.NameOID.TITLE)
    return str(titles[0].value) if titles else ""


class GrpcAdminApi:
    """The admin API over mTLS with an admin kit's certificate (as ``fedcare admin``)."""

    def __init__(self, kit_dir: Path, server: str | None = None) -> None:
        kit = load_kit(kit_dir)
        if kit.config.kind != "admin":
            raise ConfigError(f"kit {kit_dir} is a {kit.config.kind} kit, not an admin kit")
        tls = TlsFiles(kit.read_ca(), kit.read_cert(), kit.read_key())
        self.name = kit.config.name
        self.role = role_of(tls.cert)
        self.server = server or f"{kit.config.server_host}:{kit.config.server_port}"
        self._channel = secure_channel(self.server, tls, max_receive_bytes=ADMIN_REPLY_LIMIT)
        self._stub = pb_grpc.AdminStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _json(self, method: str, request: object) -> object:
        try:
            reply = getattr(self._stub, method)(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise _error(method, exc) from None
        return json.loads(reply.json)

    def status(self) -> list[JsonDict]:
        jobs = self._json("Status", pb.Empty())
        assert isinstance(jobs, dict) and isinstance(jobs["jobs"], list)
        return jobs["jobs"]

    def sites(self) -> JsonDict:
        sites = self._json("Sites", pb.Empty())
        assert isinstance(sites, dict)
        return sites

    def metrics(self, job_id: str) -> list[JsonDict]:
        rounds = self._json("Metrics", pb.JobRef(job_id=job_id))
        assert isinstance(rounds, list)
        return rounds

    def watch(self, job_id: str) -> WatchStream:
        return _GrpcWatch(self._stub.Watch(pb.JobRef(job_id=job_id)))

    def abort(self, job_id: str) -> JsonDict:
        outcome = self._json("Abort", pb.JobRef(job_id=job_id))
        assert isinstance(outcome, dict)
        return outcome

    def model_npz(self, job_id: str) -> bytes:
        """The job's latest global model as a numpy ``.npz`` file (as ``admin download``)."""
        try:
            data = b"".join(c.data for c in self._stub.Download(pb.JobRef(job_id=job_id),
                                                                timeout=CALL_TIMEOUT_S))
        except grpc.RpcError as exc:
            raise _error("Download", exc) from None
        result = decode(data).result  # type: ignore[union-attr]
        if not isinstance(result, TrainResult):
            raise AdminCallError("Download", "DATA_LOSS", "the server sent no model")
        out = io.BytesIO()
        np.savez(out, **dict(result.weights))  # type: ignore[arg-type]
        return out.getvalue()

    def result(self, job_id: str, name: str) -> JsonDict | None:
        """A workflow's saved result, or None when the job has none (yet)."""
        try:
            document = self._json("Result", pb.ResultRef(job_id=job_id, name=name))
        except AdminCallError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise
        assert isinstance(document, dict)
        return document

    def submit_package(self, package: bytes) -> str:
        try:
            reply = self._stub.Submit(pb.SubmitRequest(package=package), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise _error("Submit", exc) from None
        return str(reply.job_id)
