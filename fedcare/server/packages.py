"""The server's store of signed job packages, and the service sites fetch them from.

Packages are kept by id (``workspace/packages/<id>.fcjob``), written atomically, and verified
again whenever they are read: a file altered on the server's disk is refused, not run. Only
sites may fetch a package (mutual TLS, not revoked); a site verifies it again by itself.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from fedcare.core.config import build_package_job
from fedcare.core.errors import ConfigError, Unavailable
from fedcare.core.job import Job
from fedcare.core.package import PACKAGE_ID, JobPackage, read_package
from fedcare.transport.grpc import fedcare_pb2 as pb
from fedcare.transport.grpc import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.grpc.chunks import to_chunks
from fedcare.transport.grpc.tls import PeerIdentity, peer_identity

log = logging.getLogger(__name__)


class PackageStore:
    """Content-addressed package files, and each one's extracted code for the server's use."""

    def __init__(self, root: Path, ca_pem: bytes) -> None:
        self.root = root
        self._ca_pem = ca_pem
        self._lock = threading.Lock()  # one extraction at a time: two submits of one package

    def path(self, package_id: str) -> Path:
        if not PACKAGE_ID.fullmatch(package_id):
            raise ConfigError(f"{package_id[:80]!r} is not a package id")
        return self.root / f"{package_id}.fcjob"

    def add(self, package: JobPackage) -> None:
        target = self.path(package.package_id)
        if target.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{package.package_id[:12]}-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(package.data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, target)  # two submits of one package: the same bytes
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise

    def data(self, package_id: str) -> bytes | None:
        path = self.path(package_id)
        return path.read_bytes() if path.is_file() else None

    def load(self, package_id: str) -> JobPackage:
        """The stored package, verified again (ConfigError if missing or altered)."""
        data = self.data(package_id)
        if data is None:
            raise ConfigError(f"package {package_id[:12]} is not in the server's store")
        package = read_package(data, self._ca_pem)
        if package.package_id != package_id:
            raise ConfigError(f"stored package {package_id[:12]} holds another package")
        return package

    def build(self, package: JobPackage) -> Job:
        """The package's job, built from the server's own extracted copy of its code."""
        with self._lock:
            return build_package_job(package.extract(self.root / "code"), package.entry_point,
                                     package.params)


class PackageService(pb_grpc.PackagesServicer):
    """``Packages.Fetch``: a connected, authorised site downloads a stored package."""

    def __init__(self, store: PackageStore,
                 authorize: Callable[[PeerIdentity], str | None]) -> None:
        self.store = store
        self.authorize = authorize

    def Fetch(self, request: pb.PackageRef, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        identity = peer_identity(context)
        if identity is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate required")
        assert identity is not None
        try:
            reason = self.authorize(identity)
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if reason:
            log.warning("refused package fetch by %s: %s", identity.name, reason)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        try:
            data = self.store.data(request.package_id)
        except ConfigError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no package {request.package_id[:12]}")
        assert data is not None
        log.info("site %s fetched package %s", identity.name, request.package_id[:12])
        yield from to_chunks([data])
