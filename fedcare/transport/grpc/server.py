"""Server side of the gRPC transport: sites dial in over mutual TLS and hold one stream each.

Identity is the client certificate's common name; a pluggable ``authorize`` callback (the
server process checks its site list and the revocation list) refuses the rest with a log line.
A training reply the round can take as it arrives (see ``stream_into``) is folded into the
aggregate chunk by chunk and never held whole; any other reply is reassembled. Either way,
uploads are taken under a small number of receive permits: a permit is taken when a message
starts and given back when the controller asks for the next reply, so the server never works
on more than ``receive_permits`` uploads at once, whatever the number of sites. A site whose
upload, or whose reading of a task, stops making progress for ``stall_timeout_s`` is
disconnected, so a stalled (or malicious) site cannot hold a permit and starve the honest ones.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from fedcare.core.errors import TransportError, Unavailable
from fedcare.core.message import Reply, Task
from fedcare.core.site_profile import PolicySummary, parse_policy, version_problem
from fedcare.core.stream import StreamTarget
from fedcare.core.text import one_line
from fedcare.transport.base import Transport
from fedcare.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, Hello, decode, encode_parts
from fedcare.transport.grpc import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.grpc.chunks import (
    ADMIN_REPLY_LIMIT,
    GRPC_MESSAGE_LIMIT,
    Reassembler,
    WireChunk,
    to_wire_chunks,
)
from fedcare.transport.grpc.tls import (
    ACCEPTED,
    KEEPALIVE_OPTIONS,
    POLICY_KEY,
    VERSION_KEY,
    PeerIdentity,
    TlsFiles,
    peer_identity,
    server_credentials,
)
from fedcare.transport.streaming import StreamedUpload, peek_train_reply
from fedcare.transport.traffic import Traffic

log = logging.getLogger(__name__)
Authorize = Callable[[PeerIdentity], str | None]
#: Told of every site stream: ``(event, identity or None, detail)``, event ``connected``,
#: ``disconnected`` or ``refused`` (refusals of TLS itself, a foreign CA or an expired
#: certificate, happen before any call and are not seen here).
ConnectionListener = Callable[[str, PeerIdentity | None, str], None]
_HELLO_LIMIT = 64 * 1024
#: No BDP probing: with it gRPC grows each stream's receive window towards the bandwidth-delay
#: product, so on a fast link every site waiting for the receive permit pushes tens of MB of
#: its upload into server memory (measured: 6.3x the model above idle for 8 x 100 MB, 4.7x
#: without). Without it a waiting upload stays at its site, and loopback speed is unchanged.
FLOW_OPTIONS = [("grpc.http2.bdp_probe", 0)]
#: gRPC sets SO_REUSEPORT by default: a second server on the same port would bind too, and
#: the kernel would spread the sites between the two. One port, one server.
BIND_OPTIONS = [("grpc.so_reuseport", 0)]


@dataclass(frozen=True)
class SiteDetail:
    """What the server knows of a connected site beyond its name (admin ``Sites``).

    ``version`` and ``policy`` are what the site stated when it connected (None: a site that
    predates them); ``org`` is its certificate's organisation; ``last_message_age_s`` the
    seconds since the last message (its Hello, or a reply) ended on its stream. A site sends
    nothing while it waits for tasks (gRPC keepalive pings, below the messages, check the
    connection meanwhile), so an idle site's age grows while it is still connected.
    """

    version: str | None
    policy: PolicySummary | None
    org: str | None
    last_message_age_s: float


class _Session:
    """One live stream of one site."""

    def __init__(self, site_id: str, context: grpc.ServicerContext | None = None,
                 identity: PeerIdentity | None = None, instance: str = "",
                 version: str | None = None, policy: PolicySummary | None = None) -> None:
        self.site_id = site_id
        self.context = context
        self.identity = identity
        self.instance = instance
        self.version = version
        self.policy = policy
        #: When the last whole message ended on this stream (monotonic); written by the
        #: stream's reader thread alone, read without a lock (a float is swapped atomically).
        self.last_message_at = time.monotonic()
        # Why the server ended the stream, told to the site as the call's status.
        self.end_reason: str | None = None
        self.end_code = grpc.StatusCode.UNAVAILABLE
        self.outbox: queue.Queue[list[bytes | memoryview] | None] = queue.Queue()
        self.closed = threading.Event()
        self.upload_progress_at: float | None = None  # set while an upload is in flight
        self.send_progress_at: float | None = None  # set while a task is being streamed


class GrpcServerTransport(Transport, pb_grpc.FederationServicer):
    """Listens for sites; implements the Transport interface for the round controller."""

    def __init__(
        self,
        tls: TlsFiles,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        authorize: Authorize | None = None,
        on_connection: ConnectionListener | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        receive_permits: int = 1,
        send_permits: int = 2,
        stall_timeout_s: float = 60.0,
        hello_timeout_s: float = 30.0,
        max_sites: int = 1000,
        add_services: Callable[[grpc.Server], None] | None = None,
        receive_window_bytes: int = 0,
    ) -> None:
        """``receive_window_bytes``: each site stream's HTTP/2 receive window (0: gRPC's
        default). Larger makes uploads from distant sites faster (a 100 MB upload through a
        40 ms round trip: 8 MiB brought the round from 5.1 s to 1.5 s) at the cost of up to that
        much per waiting site in server memory (25 M x 8 on loopback: 4.8x -> 6.0x the model)."""
        super().__init__()
        if receive_window_bytes < 0:
            raise ValueError(f"receive_window_bytes must be >= 0, got {receive_window_bytes}")
        window = ([("grpc.http2.lookahead_bytes", receive_window_bytes)]
                  if receive_window_bytes else [])
        self._authorize = authorize
        self._on_connection = on_connection
        self._max = max_message_bytes
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._outstanding: dict[str, set[str]] = {}
        self._replies: queue.Queue[tuple[Reply, bool]] = queue.Queue()
        self._permits = threading.BoundedSemaphore(receive_permits)
        self._send_permits = threading.BoundedSemaphore(send_permits)
        self._held = False
        self._stream_target: StreamTarget | None = None
        self._stall_timeout_s = stall_timeout_s
        self._hello_timeout_s = hello_timeout_s
        #: Bytes of the sites' streams (tasks out, replies in), for the admin API.
        self.traffic = Traffic()
        # Each site's stream holds a worker thread for as long as it is connected, so the pool
        # is sized for max_sites plus admin calls (threads are only created when needed). Past
        # that, gRPC refuses new calls with RESOURCE_EXHAUSTED instead of queueing them.
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=max_sites + 32, thread_name_prefix="grpc"),
            maximum_concurrent_rpcs=max_sites + 32,
            options=[("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
                     # what this server sends: task chunks are smaller anyway; an admin's
                     # Metrics of a long job may not be
                     ("grpc.max_send_message_length", ADMIN_REPLY_LIMIT),
                     *KEEPALIVE_OPTIONS, *FLOW_OPTIONS, *BIND_OPTIONS, *window],
        )
        # The model stream carries Chunks serialized by to_wire_chunks and parsed by the
        # Reassembler (no protobuf message in between: two copies fewer per chunk); the wire
        # format is still fedcare.proto's Chunk.
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "fedcare.v1.Federation",
            {"Connect": grpc.stream_stream_rpc_method_handler(self.Connect)}),))
        if add_services is not None:
            add_services(self._server)
        try:
            self.port = self._server.add_secure_port(f"{host}:{port}", server_credentials(tls))
        except RuntimeError:  # gRPC's "Failed to bind", whatever the reason
            self.port = 0
        if self.port == 0:
            raise TransportError(f"cannot listen on {host}:{port}: the address is in use "
                                 "(another server?) or not this machine's")
        self.address = f"{host}:{self.port}"
        self._closing = threading.Event()
        self._server.start()
        threading.Thread(target=self._watch_uploads, name="grpc-upload-watchdog",
                         daemon=True).start()

    # -- the Federation service ----------------------------------------------------------
    def Connect(self, request_iterator: Iterator[bytes],  # type: ignore[override]
                context: grpc.ServicerContext) -> Iterator[bytes]:
        # Raw bytes both ways: registered without (de)serializers (see chunks.to_wire_chunks)
        identity = peer_identity(context)
        if identity is None:
            log.warning("refused a connection from %s: no verified client certificate",
                        context.peer())
            self._tell("refused", None, f"no verified client certificate, from {context.peer()}")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate required")
        assert identity is not None
        try:
            reason = self._authorize(identity) if self._authorize else None
        except Unavailable as exc:  # e.g. the revocation list is being replaced: retry
            self._tell("refused", identity, f"{exc}, from {identity.address}")
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if reason:
            log.warning("refused site %s from %s: %s", identity.name, identity.address, reason)
            self._tell("refused", identity, f"{reason}, from {identity.address}")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        # A connection that never introduces itself must not keep a worker thread for good.
        hello_timer = threading.Timer(self._hello_timeout_s, context.cancel)
        hello_timer.daemon = True
        hello_timer.start()
        try:
            hello = self._read_hello(request_iterator)
        finally:
            hello_timer.cancel()
        if not isinstance(hello, Hello) or hello.site_id != identity.name:
            claimed = hello.site_id if isinstance(hello, Hello) else type(hello).__name__
            message = (f"certificate is for {identity.name!r} but the site introduced itself "
                       f"as {claimed!r}")
            log.warning("refused a connection from %s: %s", identity.address, message)
            self._tell("refused", identity, f"{message}, from {identity.address}")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        version, policy = self._profile(identity, context)
        session = self._open(identity, context, hello.instance or "", version, policy)
        if session is None:
            message = (f"site {identity.name} is already connected from another process using "
                       "the same site kit; stop one of them")
            log.warning("refused site %s from %s: %s", identity.name, identity.address, message)
            self._tell("refused", identity, f"{message}, from {identity.address}")
            context.abort(grpc.StatusCode.ALREADY_EXISTS, message)
        assert session is not None
        context.send_initial_metadata(((ACCEPTED, "1"),))  # tells the site it is in
        log.info("site %s connected from %s", identity.name, identity.address)
        self._tell("connected", identity, f"from {identity.address}")
        threading.Thread(target=self._read_replies, args=(session, request_iterator),
                         name=f"grpc-read-{identity.name}", daemon=True).start()
        context.add_callback(lambda: self._close_session(session, "connection closed"))
        while (parts := session.outbox.get()) is not None:
            # Stream at most ``send_permits`` messages at once: gRPC buffers what it is handed,
            # so N concurrent broadcasts of a large model would cost N copies in memory.
            with self._send_permits:
                for chunk in to_wire_chunks(parts):
                    session.send_progress_at = time.monotonic()
                    yield chunk  # returns once gRPC has taken the chunk: the site is reading
                    self.traffic.sent(len(chunk))
                session.send_progress_at = None
            del parts  # sent: hold no model while waiting for the next task
        if session.end_reason is not None:  # tell the site why, e.g. a planned server stop
            context.set_code(session.end_code)
            context.set_details(session.end_reason)

    def _profile(self, identity: PeerIdentity, context: grpc.ServicerContext
                 ) -> tuple[str | None, PolicySummary | None]:
        """The version and policy summary the site stated in its call's metadata (None for
        what it did not state); a malformed one refuses the site (INVALID_ARGUMENT)."""
        stated = {k: v for k, v in context.invocation_metadata() or ()
                  if k in (VERSION_KEY, POLICY_KEY) and isinstance(v, str)}
        version = stated.get(VERSION_KEY)
        problem = version_problem(version) if version is not None else None
        policy = None
        if problem is None and POLICY_KEY in stated:
            try:
                policy = parse_policy(stated[POLICY_KEY])
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            message = f"site {identity.name} stated a bad profile: {one_line(problem, 400)}"
            log.warning("refused a connection from %s: %s", identity.address, message)
            self._tell("refused", identity, f"{message}, from {identity.address}")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return version, policy

    def site_details(self) -> dict[str, SiteDetail]:
        """What each connected site stated, its organisation and how long ago its last
        message ended."""
        now = time.monotonic()
        with self._lock:
            sessions = list(self._sessions.values())
        return {s.site_id: SiteDetail(s.version, s.policy,
                                      s.identity.org if s.identity is not None else None,
                                      max(0.0, now - s.last_message_at))
                for s in sessions}

    def _read_hello(self, request_iterator: Iterator[bytes]) -> object:
        reassembler = Reassembler(_HELLO_LIMIT)
        try:
            for chunk in request_iterator:
                data = reassembler.feed(chunk)
                if data is not None:
                    return decode(data, max_bytes=_HELLO_LIMIT)
        except TransportError as exc:
            return f"a malformed Hello ({exc})"
        return "nothing"

    def _tell(self, event: str, identity: PeerIdentity | None, detail: str) -> None:
        if self._on_connection is None:
            return
        try:
            self._on_connection(event, identity, detail)
        except Exception:  # the listener's failure (a full disk) must not drop the site
            log.exception("connection listener failed on %s", event)

    def _open(self, identity: PeerIdentity, context: grpc.ServicerContext,
              instance: str, version: str | None = None,
              policy: PolicySummary | None = None) -> _Session | None:
        """The site's new session; None if another process of the same site is connected.

        A site process names itself with a random ``instance`` in its Hello: the same instance
        coming back replaces its stale stream (a reconnect after an outage), a different one
        while the old stream lives is a second process with a copy of the kit, and is refused.
        """
        site_id = identity.name
        session = _Session(site_id, context, identity, instance, version, policy)
        with self._lock:
            old = self._sessions.get(site_id)
            if (old is not None and not old.closed.is_set() and old.instance and instance
                    and old.instance != instance):
                return None
            self._sessions[site_id] = session
            self._outstanding.setdefault(site_id, set())
        if old is not None:  # a reconnect replaces a stale stream
            log.info("site %s reconnected; closing its previous stream", site_id)
            self._close_session(old, "replaced by a new connection")
        self._set_connected(site_id, True)
        return session

    def _read_replies(self, session: _Session, request_iterator: Iterator[bytes]) -> None:
        reassembler = Reassembler(self._max)
        upload: StreamedUpload | None = None
        holding = False
        reason = "connection closed"
        try:
            for raw in request_iterator:
                if not holding:
                    self._permits.acquire()  # backpressure: at most N uploads held in memory
                    holding = True
                session.upload_progress_at = time.monotonic()
                self.traffic.received(len(raw))
                chunk = WireChunk(raw)
                if upload is None and not reassembler.in_progress:
                    upload = self._start_upload(session, chunk)
                if upload is not None:  # folded into the round as it arrives
                    reply = upload.feed(chunk)
                    if reply is None:
                        continue
                    upload = None
                else:
                    data = reassembler.feed(chunk)
                    if data is None:
                        continue
                    message = decode(data, max_bytes=self._max, adopt=True,
                                     payload_checksum=reassembler.payload_checksum,
                                     sender=f"site {session.site_id}")
                    del data
                    reply = message if isinstance(message, Reply) else None
                session.upload_progress_at = None
                session.last_message_at = time.monotonic()
                if reply is None or reply.site_id != session.site_id:
                    raise TransportError(f"expected a Reply from {session.site_id}")
                with self._lock:
                    expected = reply.task_id in self._outstanding[session.site_id]
                    self._outstanding[session.site_id].discard(reply.task_id)
                if expected:
                    self._replies.put((reply, True))
                else:
                    log.warning("site %s: discarding reply to unknown task %s",
                                session.site_id, one_line(reply.task_id, 200))
                    self._permits.release()
                holding = False
                # Drop our references now: this thread next blocks until the site's next
                # message, possibly a round later, and must not keep this one alive meanwhile.
                del raw, chunk, reply
        except TransportError as exc:
            reason = f"protocol violation: {exc}"
            log.error("site %s: %s; closing its connection", session.site_id, exc)
        except grpc.RpcError:
            reason = "connection lost"
        except Exception as exc:  # a bug (ours or a strategy's): this site's stream ends
            reason = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("site %s: error while receiving its upload", session.site_id)
        finally:
            if upload is not None:
                upload.discard()
            if holding:
                self._permits.release()
            self._close_session(session, reason)

    def _start_upload(self, session: _Session, chunk: WireChunk) -> StreamedUpload | None:
        """A StreamedUpload if ``chunk`` starts a training reply the round can fold in as it
        arrives; None to reassemble the message whole (anything else, or anything odd)."""
        target = self._stream_target
        if target is None or not 0 < chunk.total_size <= self._max:
            return None
        head = peek_train_reply(chunk.data, chunk.total_size)
        if head is None or head.site_id != session.site_id:
            return None
        with self._lock:
            if head.task_id not in self._outstanding.get(session.site_id, ()):
                return None
        try:
            sink = target.open(head.task_id, head.site_id, head.num_samples, head.metrics,
                               head.specs)
        except ValueError as exc:  # refused on its header: count its bytes, report why
            return StreamedUpload(head, chunk.total_size, None, error=str(exc))
        if sink is None:
            return None
        log.debug("site %s: folding its upload for %s into the round as it arrives",
                  session.site_id, head.task_id)
        return StreamedUpload(head, chunk.total_size, sink)

    def _watch_uploads(self) -> None:
        """Disconnect a site whose upload, or whose reading of a task (it holds a send permit
        meanwhile), has made no progress for ``stall_timeout_s``; and, about every second, a
        site no longer authorised (its certificate revoked since it connected)."""
        while not self._closing.wait(min(1.0, self._stall_timeout_s / 4)):
            now = time.monotonic()
            with self._lock:
                sessions = list(self._sessions.values())
            self._reauthorize(sessions)
            for session in sessions:
                for what, since in (("upload", session.upload_progress_at),
                                    ("download", session.send_progress_at)):
                    if since is None or now - since <= self._stall_timeout_s:
                        continue
                    log.error("site %s: %s stalled for %.0f s (stall_timeout_s=%g); closing its "
                              "connection", session.site_id, what, now - since,
                              self._stall_timeout_s)
                    session.upload_progress_at = session.send_progress_at = None
                    if session.context is not None:
                        session.context.cancel()  # type: ignore[no-untyped-call]

    def _reauthorize(self, sessions: list[_Session]) -> None:
        """Close the streams of sites the ``authorize`` callback now refuses (it raises
        Unavailable when it cannot tell now: then they stay)."""
        if self._authorize is None:
            return
        for session in sessions:
            if session.identity is None or session.closed.is_set():
                continue
            try:
                reason = self._authorize(session.identity)
            except Unavailable:  # cannot check now: who was admitted stays (the server logs)
                return
            if reason:
                log.warning("site %s is no longer authorised (%s); closing its connection",
                            session.site_id, reason)
                self._close_session(session, reason, code=grpc.StatusCode.PERMISSION_DENIED)

    def _close_session(self, session: _Session, reason: str,
                       code: grpc.StatusCode | None = None) -> None:
        """End a site's stream. With a status ``code`` the site is told ``reason`` with it
        (the stream ends cleanly unless it is stuck sending); without, the stream is cancelled."""
        if session.closed.is_set():
            return
        session.end_reason, session.end_code = reason, code or grpc.StatusCode.CANCELLED
        session.closed.set()
        session.outbox.put(None)
        if session.context is not None and (code is None or session.send_progress_at is not None):
            # End the stream itself too: a replaced stream stuck sending to a site that stopped
            # reading would otherwise keep its send permit, unwatched, for good.
            session.context.cancel()  # type: ignore[no-untyped-call]
        with self._lock:
            if self._sessions.get(session.site_id) is not session:
                return  # already replaced by a newer connection, which keeps its tasks
            del self._sessions[session.site_id]
            lost, self._outstanding[session.site_id] = self._outstanding[session.site_id], set()
        log.warning("site %s disconnected: %s", session.site_id, reason)
        self._set_connected(session.site_id, False)
        self._tell("disconnected", session.identity, reason)
        for task_id in sorted(lost):
            self._replies.put((Reply(task_id, session.site_id,
                                     error=f"site disconnected: {reason}",
                                     connection_lost=True), False))

    # -- the Transport interface ----------------------------------------------------------
    def send(self, site_id: str, task: Task) -> None:
        parts = encode_parts(task)
        with self._lock:
            session = self._sessions.get(site_id)
            if session is None:
                raise TransportError(f"site is not connected, task {task.task_id}",
                                     site_id=site_id)
            self._outstanding[site_id].add(task.task_id)
        session.outbox.put(parts)

    def stream_into(self, target: StreamTarget | None) -> None:
        self._stream_target = target

    def receive(self, timeout_s: float) -> Reply | None:
        if self._held:
            self._held = False
            self._permits.release()
        try:
            reply, holds_permit = self._replies.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None
        self._held = holds_permit
        return reply

    def close(self, grace_s: float = 2.0) -> None:
        self._closing.set()
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            self._close_session(session, "server shutting down",
                                code=grpc.StatusCode.UNAVAILABLE)
        self._server.stop(grace_s).wait()
