"""Cutting codec messages into gRPC Chunks and putting them back together, bounded."""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence

from fedcare.core.errors import TransportError
from fedcare.transport.grpc import fedcare_pb2 as pb

#: 2 MiB: large enough that per-chunk overhead is negligible, small enough to keep gRPC
#: buffers and latency low.
CHUNK_BYTES = 2 * 1024 * 1024
#: gRPC's own per-message cap; a Chunk is never bigger than CHUNK_BYTES plus a few bytes.
GRPC_MESSAGE_LIMIT = CHUNK_BYTES + 64 * 1024


def to_chunks(parts: Sequence[bytes | memoryview], chunk_bytes: int = CHUNK_BYTES
              ) -> Iterator[pb.Chunk]:
    """The chunks of one message given as buffers (see ``codec.encode_parts``).

    The first chunk carries the total size and the last says so. Only one chunk's worth of
    bytes is copied at a time, so streaming a 1 GiB model costs no second 1 GiB.
    """
    views = [memoryview(p).cast("B") for p in parts]
    total = sum(len(v) for v in views)
    if total == 0:
        yield pb.Chunk(data=b"", total_size=0, last=True)
        return
    sent = 0
    pending: list[memoryview] = []
    pending_bytes = 0
    for view in views:
        offset = 0
        while offset < len(view):
            take = min(chunk_bytes - pending_bytes, len(view) - offset)
            pending.append(view[offset:offset + take])
            pending_bytes += take
            offset += take
            if pending_bytes == chunk_bytes:
                sent += pending_bytes
                yield pb.Chunk(data=b"".join(pending), total_size=total if sent == pending_bytes
                               else 0, last=sent == total)
                pending, pending_bytes = [], 0
    if pending_bytes:
        sent += pending_bytes
        yield pb.Chunk(data=b"".join(pending), total_size=total if sent == pending_bytes else 0,
                       last=True)


_MAP_AT = 1024 * 1024


class Reassembler:
    """Accumulates chunks into whole messages, refusing oversized or inconsistent streams."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer: bytearray | mmap.mmap | None = None
        self._expected = 0
        self._filled = 0

    @property
    def in_progress(self) -> bool:
        return self._buffer is not None

    def feed(self, chunk: pb.Chunk) -> bytearray | mmap.mmap | None:
        """Add one chunk; returns the whole message (not copied) when ``chunk`` completes it."""
        if self._buffer is None:
            if chunk.total_size > self.max_bytes:
                raise TransportError(f"message of {chunk.total_size} bytes announced, "
                                     f"limit is {self.max_bytes}")
            if chunk.total_size == 0 and not (chunk.last and not chunk.data):
                raise TransportError("first chunk of a message does not announce its size")
            # Sized once, with no doubling as appends would cost. A large message goes into an
            # anonymous memory map: its pages are only backed as bytes arrive (a bytearray
            # would be zero-filled, all of it, at once), so announcing a huge size costs
            # nothing until the bytes come, and the memory goes back to the system as soon
            # as the decoded model is dropped.
            size = chunk.total_size
            self._buffer = mmap.mmap(-1, size) if size >= _MAP_AT else bytearray(size)
            self._expected = chunk.total_size
            self._filled = 0
        elif chunk.total_size:
            raise TransportError("chunk announces a new message before the last one ended")
        end = self._filled + len(chunk.data)
        if end > self._expected:
            self._buffer = None
            raise TransportError(f"message longer than the {self._expected} bytes announced")
        self._buffer[self._filled:end] = chunk.data
        self._filled = end
        if not chunk.last:
            return None
        if self._filled != self._expected:
            filled, self._buffer = self._filled, None
            raise TransportError(f"message ended after {filled} of {self._expected} bytes "
                                 "announced")
        data, self._buffer = self._buffer, None
        return data
