"""Site side of the gRPC transport: dial out, authenticate, serve tasks, come back after outages.

Hospitals open no inbound port: the site connects to the server and keeps one stream. When the
network drops, the site retries with capped exponential backoff and rejoins with the same
identity; the server treats the new stream as the same site. A server that refuses the site's
certificate ends the loop with a TransportError saying so, instead of retrying forever.

Nothing the server sends can end the site process: a task that cannot be decoded (a bad shape,
a forbidden dtype, a checksum mismatch) is answered with an error reply naming the problem, a
handler that raises or a result that cannot be encoded costs that task only, and a stream that
breaks the chunk framing is dropped and dialled again.
"""

from __future__ import annotations

import logging
import mmap
import queue
import threading
from collections.abc import Callable, Iterator

import grpc

from fedcare.core.errors import TransportError
from fedcare.core.message import Reply, Task
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
from fedcare.transport.grpc.tls import KEEPALIVE_OPTIONS, TlsFiles, channel_credentials

log = logging.getLogger(__name__)
Handler = Callable[[Task], Reply]
_FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


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
                 reconnect_max_s: float = 10.0) -> None:
        self.site_id = site_id
        self.address = address
        self.tls = tls
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.reconnect_max_s = reconnect_max_s
        self.connected = threading.Event()
        self._responses: grpc.CallIterator[bytes] | None = None

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; raises TransportError if the server refuses this site."""
        watcher = threading.Thread(target=self._cancel_on, args=(stop,), daemon=True)
        watcher.start()
        backoff = 0.2
        while not stop.is_set():
            try:
                self._serve_once()
                backoff = 0.2
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()
                if stop.is_set() or code is grpc.StatusCode.CANCELLED:
                    break
                if code in _FATAL:
                    raise TransportError(f"server {self.address} refused this site: {details}",
                                         site_id=self.site_id) from None
                log.warning("site %s: connection to %s failed (%s: %s); retrying in %.1f s",
                            self.site_id, self.address, code.name, details, backoff)
            except TransportError as exc:  # the stream itself broke the protocol: dial again
                log.error("site %s: server %s broke the protocol (%s); reconnecting in %.1f s",
                          self.site_id, self.address, exc, backoff)
            finally:
                self.connected.clear()
            stop.wait(backoff)
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _cancel_on(self, stop: threading.Event) -> None:
        stop.wait()
        if self._responses is not None:
            self._responses.cancel()  # type: ignore[no-untyped-call]

    def _serve_once(self) -> None:
        outbox: queue.Queue[list[bytes | memoryview] | None] = queue.Queue()
        outbox.put(encode_parts(Hello(site_id=self.site_id)))

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
            responses = connect(requests())
            self._responses = responses
            reassembler = Reassembler(self.max_message_bytes, reuse=True)
            for chunk in responses:
                self.connected.set()
                data = reassembler.feed(chunk)
                if data is None:
                    continue
                parts = self._answer(data, reassembler.payload_checksum)
                if parts is not None:
                    outbox.put(parts)
                # Hold nothing of this task while waiting for the next: its buffer can then
                # be filled again with the next model instead of fresh memory.
                del data, parts
            log.warning("site %s: server %s closed the stream", self.site_id, self.address)
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
            return encode_parts(reply)
        except (TransportError, ValueError) as exc:  # e.g. a metric name the codec refuses
            log.error("site %s: the reply to task %s cannot be sent: %s", self.site_id,
                      one_line(task.task_id, 200), exc)
            return encode_parts(Reply(task.task_id, self.site_id, error=one_line(
                f"the site's result cannot be sent: {exc}")))
