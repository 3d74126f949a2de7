"""Site side of the gRPC transport: dial out, authenticate, serve tasks, come back after outages.

Hospitals open no inbound port: the site connects to the server and keeps one stream. Whenever
that stream ends for any reason but the site operator's own stop (the network drops, the server
restarts or is stopped for maintenance, the server closes a stalled stream, the stream breaks
the chunk framing), the site logs why and retries with capped exponential backoff, rejoining
with the same identity; the server treats the new stream as the same site. Only a fatal refusal
ends the loop, with a TransportError saying why: a certificate the server does not accept
(revoked, wrong role), or another process connected with the same site kit for longer than
``duplicate_grace_s``.

Nothing the server sends can end the site process: a task that cannot be decoded (a bad shape,
a forbidden dtype, a checksum mismatch) is answered with an error reply naming the problem, a
handler that raises or a result that cannot be encoded costs that task only.
"""

from __future__ import annotations

import logging
import mmap
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import grpc

from fedcare.core.errors import TransportError
from fedcare.core.message import Reply, Task
from fedcare.core.site_profile import PolicySummary, version_problem
from fedcare.core.text import one_line
from fedcare.transport.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Hello,
    decode,
    encode_parts,
    header_size,
    peek_task_id,
)
from fedcare.transport.grpc.chunks import GRPC_MESSAGE_LIMIT, Reassembler, to_wire_chunks
from fedcare.transport.grpc.tls import (
    ACCEPTED,
    KEEPALIVE_OPTIONS,
    POLICY_KEY,
    VERSION_KEY,
    TlsFiles,
    channel_credentials,
)

log = logging.getLogger(__name__)
Handler = Callable[[Task], Reply]
#: A stream that lasted this long was serving: the next reconnect starts with a short wait
#: again; one a server accepts and drops at once keeps backing off.
STEADY_S = 5.0
#: Told of every reply just before its bytes are handed to the stream: (task, reply, the
#: message's buffers). It must not change or keep the buffers past hashing them.
UploadHook = Callable[[Task, Reply, Sequence[bytes | memoryview]], None]
#: Refusals that retrying cannot change: the certificate, or what this site states about itself.
_FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
          grpc.StatusCode.INVALID_ARGUMENT)


def secure_channel(address: str, tls: TlsFiles, *,
                   max_receive_bytes: int = GRPC_MESSAGE_LIMIT) -> grpc.Channel:
    """A mutually authenticated channel to the server, with fedcare's chunk and keepalive set-up.

    ``max_receive_bytes``: the largest message taken from the server; an admin's channel
    takes ``ADMIN_REPLY_LIMIT`` (a long job's metrics), a site's stays at one chunk.
    """
    return grpc.secure_channel(address, channel_credentials(tls), options=[
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT), *KEEPALIVE_OPTIONS,
        # No BDP probing, and a fixed 8 MiB receive window instead: the model being
        # downloaded waits at the server instead of piling up in this site's memory (with
        # probing: 4.2x the model above idle at 25 M x 8; now 2.4x), and a distant server is
        # still fast (100 MB model through a 40 ms round-trip relay: 5.1 s a round; 4.8 s with
        # probing; about 9 s with probing off and gRPC's default window).
        ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 8 * 1024 * 1024),
    ])


class SiteConnection:
    """Keeps a site connected to the server and answers its tasks with ``handler``."""

    def __init__(self, site_id: str, address: str, tls: TlsFiles, handler: Handler, *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 reconnect_max_s: float = 10.0, duplicate_grace_s: float = 60.0,
                 on_upload: UploadHook | None = None, version: str | None = None,
                 policy: PolicySummary | None = None) -> None:
        """``duplicate_grace_s``: how long the server may keep saying that this site is
        already connected by another process with the same kit before this site gives up
        with a fatal error (that process may be this machine's previous one, killed, whose
        stream the server has not yet found dead: keepalive takes up to about 30 s).
        ``on_upload``: called with each task, its reply and the reply's encoded buffers as
        they are sent (the site's ledger). ``version``, ``policy``: what this site states
        about itself when it connects (its fedcare version, its policy summary), shown to
        the admins who may see it; None: not stated.

        Raises:
            ValueError: ``version`` is not 1 to 64 printable ASCII characters.
        """
        problem = version_problem(version) if version is not None else None
        if problem:
            raise ValueError(f"site {site_id}: {problem}")
        self.profile: tuple[tuple[str, str], ...] = (
            *(((VERSION_KEY, version),) if version is not None else ()),
            *(((POLICY_KEY, policy.to_json()),) if policy is not None else ()))
        self.site_id = site_id
        self.instance = secrets.token_hex(8)
        self.duplicate_grace_s = duplicate_grace_s
        self.address = address
        self.tls = tls
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.reconnect_max_s = reconnect_max_s
        self.on_upload = on_upload
        self.connected = threading.Event()
        self._connected_at = 0.0
        self._stop: threading.Event | None = None
        self._responses: grpc.CallIterator[bytes] | None = None

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; raises TransportError if the server refuses this site."""
        self._stop = stop
        watcher = threading.Thread(target=self._cancel_on, args=(stop,), daemon=True)
        watcher.start()
        backoff = 0.2
        duplicate_since: float | None = None
        while not stop.is_set():
            try:
                self._serve_once()
                why = "the server closed the stream"
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()
                if stop.is_set():  # our own operator's stop: cancelled by _cancel_on
                    break
                if code in _FATAL:
                    raise TransportError(f"server {self.address} refused this site: {details}",
                                         site_id=self.site_id) from None
                if code is grpc.StatusCode.ALREADY_EXISTS:
                    now = time.monotonic()
                    duplicate_since = duplicate_since if duplicate_since is not None else now
                    if now - duplicate_since > self.duplicate_grace_s:
                        raise TransportError(
                            f"server {self.address} refused this site for "
                            f"{now - duplicate_since:.0f} s: {details}",
                            site_id=self.site_id) from None
                why = f"{code.name}: {details}"
            except TransportError as exc:  # the stream itself broke the protocol: dial again
                why = f"the server broke the protocol: {exc}"
            finally:
                was_connected = self.connected.is_set()
                if was_connected and time.monotonic() - self._connected_at >= STEADY_S:
                    backoff, duplicate_since = 0.2, None  # it was serving: short waits again
                self.connected.clear()
            if stop.is_set():
                break
            log.warning("site %s: connection to %s %s (%s); reconnecting in %.1f s",
                        self.site_id, self.address, "ended" if was_connected else "failed",
                        why, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _cancel_on(self, stop: threading.Event) -> None:
        stop.wait()
        if self._responses is not None:
            self._responses.cancel()  # type: ignore[no-untyped-call]

    def _serve_once(self) -> None:
        outbox: queue.Queue[list[bytes | memoryview] | None] = queue.Queue()
        outbox.put(encode_parts(Hello(site_id=self.site_id, instance=self.instance)))

        def requests() -> Iterator[bytes]:
            while (parts := outbox.get()) is not None:
                yield from to_wire_chunks(parts, first_bytes=header_size(parts))
                # Sent: drop it now. Kept until the next reply, the last trained model would
                # still be alive when the next one is made (measured: 2x the model in the
                # site's heap instead of 1x).
                del parts

        channel = secure_channel(self.address, self.tls)
        try:
            # Serialized Chunks both ways (see chunks.to_wire_chunks), hence no (de)serializer.
            connect = channel.stream_stream("/fedcare.v1.Federation/Connect",
                                            request_serializer=None, response_deserializer=None)
            responses = connect(requests(), metadata=self.profile)
            self._responses = responses
            if self._stop is not None and self._stop.is_set():  # stopped while dialling
                responses.cancel()  # type: ignore[no-untyped-call]
            # The server sends this mark once it has accepted this site; a refused call ends
            # without it (and the loop below raises the refusal).
            if (ACCEPTED, "1") in tuple(responses.initial_metadata() or ()):
                self._connected_at = time.monotonic()
                self.connected.set()
                log.info("site %s: connected to %s", self.site_id, self.address)
            reassembler = Reassembler(self.max_message_bytes, reuse=True)
            for chunk in responses:
                data = reassembler.feed(chunk)
                if data is None:
                    continue
                parts = self._answer(data, reassembler.payload_checksum)
                if parts is not None:
                    outbox.put(parts)
                # Hold nothing of this task while waiting for the next: its buffer can then
                # be filled again with the next model instead of fresh memory.
                del data, parts
        finally:
            outbox.put(None)
            channel.close()

    def _answer(self, data: bytearray | mmap.mmap,
                payload_checksum: str | None) -> list[bytes | memoryview] | None:
        """The encoded reply to one received message: the handler's, or an error reply if
        the task cannot be decoded, handled or its result encoded; None if the message names
        no task to answer (it is logged)."""
        sender = f"server {self.address}"
        try:
            task = decode(data, max_bytes=self.max_message_bytes, adopt=True,
                          payload_checksum=payload_checksum, sender=sender)
        except TransportError as exc:
            task_id = peek_task_id(data)
            log.error("site %s: refused a task%s: %s", self.site_id,
                      f" {one_line(task_id, 200)}" if task_id else "", exc)
            if task_id is None:
                return None
            return encode_parts(Reply(task_id, self.site_id,
                                      error=one_line(f"task refused: {exc}")))
        if not isinstance(task, Task):
            log.error("site %s: %s sent a %s, not a task; ignored", self.site_id, sender,
                      type(task).__name__)
            return None
        try:
            reply = self.handler(task)
        except Exception as exc:  # a failing handler costs one task, not the site
            reply = Reply(task.task_id, self.site_id,
                          error=one_line(f"{type(exc).__name__}: {exc}"))
        try:
            parts = encode_parts(reply)
        except (TransportError, ValueError) as exc:  # e.g. a metric name the codec refuses
            log.error("site %s: the reply to task %s cannot be sent: %s", self.site_id,
                      one_line(task.task_id, 200), exc)
            reply = Reply(task.task_id, self.site_id, error=one_line(
                f"the site's result cannot be sent: {exc}"))
            parts = encode_parts(reply)
        if self.on_upload is not None:
            self.on_upload(task, reply, parts)
        return parts

def fetch_package(address: str, tls: TlsFiles, package_id: str, *,
                  timeout_s: float = 120.0) -> bytes:
    """A signed job package's bytes, downloaded from the server (verified by the caller)."""
    from fedcare.core.package import MAX_PACKAGE_BYTES
    from fedcare.transport.grpc import fedcare_pb2 as pb
    from fedcare.transport.grpc import fedcare_pb2_grpc as pb_grpc

    channel = secure_channel(address, tls)
    try:
        data = bytearray()
        for chunk in pb_grpc.PackagesStub(channel).Fetch(pb.PackageRef(package_id=package_id),
                                                         timeout=timeout_s):
            data += chunk.data
            if len(data) > MAX_PACKAGE_BYTES:
                raise TransportError(f"package {package_id[:12]} from {address} exceeds "
                                     f"{MAX_PACKAGE_BYTES} bytes")
        return bytes(data)
    except grpc.RpcError as exc:
        raise TransportError(f"cannot fetch package {package_id[:12]} from {address}: "
                             f"{exc.details()}") from None
    finally:
        channel.close()
