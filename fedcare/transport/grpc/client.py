"""Site side of the gRPC transport: dial out, authenticate, serve tasks, come back after outages.

Hospitals open no inbound port: the site connects to the server and keeps one stream. When the
network drops, the site retries with capped exponential backoff and rejoins with the same
identity; the server treats the new stream as the same site. A server that refuses the site's
certificate ends the loop with a TransportError saying so, instead of retrying forever.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import grpc

from fedcare.core.errors import TransportError
from fedcare.core.message import Reply, Task
from fedcare.transport.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Hello,
    decode,
    encode_parts,
    header_size,
)
from fedcare.transport.grpc.chunks import GRPC_MESSAGE_LIMIT, Reassembler, to_wire_chunks
from fedcare.transport.grpc.tls import KEEPALIVE_OPTIONS, TlsFiles, channel_credentials

log = logging.getLogger(__name__)
Handler = Callable[[Task], Reply]
#: Told of every reply just before its bytes are handed to the stream: (task, reply, the
#: message's buffers). It must not change or keep the buffers past hashing them.
UploadHook = Callable[[Task, Reply, Sequence[bytes | memoryview]], None]
_FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def secure_channel(address: str, tls: TlsFiles) -> grpc.Channel:
    """A mutually authenticated channel to the server, with fedcare's chunk and keepalive set-up."""
    return grpc.secure_channel(address, channel_credentials(tls), options=[
        ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
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
                 reconnect_max_s: float = 10.0, on_upload: UploadHook | None = None) -> None:
        self.site_id = site_id
        self.address = address
        self.tls = tls
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.reconnect_max_s = reconnect_max_s
        self.on_upload = on_upload
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
                task = decode(data, max_bytes=self.max_message_bytes, adopt=True,
                              payload_checksum=reassembler.payload_checksum)
                if not isinstance(task, Task):
                    raise TransportError(f"expected a Task, got {type(task).__name__}",
                                         site_id=self.site_id)
                try:
                    reply = self.handler(task)
                except Exception as exc:  # a failing handler costs one task, not the site
                    reply = Reply(task.task_id, self.site_id,
                                  error=f"{type(exc).__name__}: {exc}")
                parts = encode_parts(reply)
                if self.on_upload is not None:
                    self.on_upload(task, reply, parts)
                outbox.put(parts)
                # Hold nothing of this task while waiting for the next: its buffer can then
                # be filled again with the next model instead of fresh memory.
                del data, task, reply, parts
            log.warning("site %s: server %s closed the stream", self.site_id, self.address)
        finally:
            outbox.put(None)
            channel.close()
