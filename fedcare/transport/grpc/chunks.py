"""Cutting codec messages into gRPC Chunks and putting them back together, bounded."""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence

import xxhash

from fedcare.core.errors import TransportError
from fedcare.transport import checksum
from fedcare.transport.codec import payload_offset
from fedcare.transport.grpc import fedcare_pb2 as pb

#: 2 MiB: large enough that per-chunk overhead is negligible, small enough to keep gRPC
#: buffers and latency low.
CHUNK_BYTES = 2 * 1024 * 1024
#: gRPC's own per-message cap; a Chunk is never bigger than CHUNK_BYTES plus a few bytes.
GRPC_MESSAGE_LIMIT = CHUNK_BYTES + 64 * 1024
#: The largest reply the server sends an admin (a long job's ``Metrics``): what the server
#: *receives* stays capped at GRPC_MESSAGE_LIMIT, and only admin channels accept this much.
ADMIN_REPLY_LIMIT = 64 * 1024 * 1024


def _slices(parts: Sequence[bytes | memoryview], chunk_bytes: int, first_bytes: int = 0
            ) -> Iterator[tuple[list[memoryview], int, bool]]:
    """(buffers of one chunk, total size on the first chunk else 0, is last) per chunk.

    ``first_bytes``: if positive, the first chunk ends after that many bytes.
    """
    views = [memoryview(p).cast("B") for p in parts]
    total = sum(len(v) for v in views)
    if total == 0:
        yield [], 0, True
        return
    first_limit = min(first_bytes, chunk_bytes) if first_bytes > 0 else chunk_bytes
    sent = 0
    pending: list[memoryview] = []
    pending_bytes = 0
    for view in views:
        offset = 0
        while offset < len(view):
            limit = first_limit if sent == 0 else chunk_bytes
            take = min(limit - pending_bytes, len(view) - offset)
            pending.append(view[offset:offset + take])
            pending_bytes += take
            offset += take
            if pending_bytes == limit:
                first = sent == 0
                sent += pending_bytes
                yield pending, total if first else 0, sent == total
                pending, pending_bytes = [], 0
    if pending_bytes:
        yield pending, total if sent == 0 else 0, True


def to_chunks(parts: Sequence[bytes | memoryview], chunk_bytes: int = CHUNK_BYTES
              ) -> Iterator[pb.Chunk]:
    """The chunks of one message given as buffers (see ``codec.encode_parts``).

    The first chunk carries the total size and the last says so. Only one chunk's worth of
    bytes is copied at a time, so streaming a 1 GiB model costs no second 1 GiB.
    """
    for pending, total, last in _slices(parts, chunk_bytes):
        yield pb.Chunk(data=b"".join(pending), total_size=total, last=last)


def to_wire_chunks(parts: Sequence[bytes | memoryview], chunk_bytes: int = CHUNK_BYTES,
                   first_bytes: int = 0) -> Iterator[bytes]:
    """Like ``to_chunks``, but each Chunk already serialized, for the model stream.

    The bytes are exactly the protobuf encoding of ``Chunk`` (fedcare.proto stays the contract:
    any protobuf client can read and write this stream), built in a single copy of the tensor
    bytes; going through the protobuf message costs two more copies per chunk.
    ``first_bytes``: if positive, the first chunk ends after that many bytes (a site sends its
    reply's header alone, so while it waits for the server's receive permit the server holds
    that header, not 2 MiB of its upload).
    """
    for pending, total, last in _slices(parts, chunk_bytes, first_bytes):
        size = sum(len(v) for v in pending)
        head = b"\x0a" + _varint(size) if size else b""
        tail = (b"\x10" + _varint(total) if total else b"") + (b"\x18\x01" if last else b"")
        yield b"".join([head, *pending, tail])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise TransportError("malformed chunk: bad varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise TransportError("malformed chunk: varint above 64 bits")
            return value, pos
        shift += 7


class WireChunk:
    """A Chunk parsed from its protobuf bytes; ``data`` is a view of them, not a copy."""

    __slots__ = ("data", "last", "total_size")

    def __init__(self, raw: bytes) -> None:
        buf = memoryview(raw)
        self.data: memoryview = buf[0:0]
        self.total_size = 0
        self.last = False
        pos = 0
        while pos < len(buf):  # proto3 rules: any field order, last value wins, skip unknown
            key, pos = _read_varint(buf, pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _read_varint(buf, pos)
                if field == 2:
                    self.total_size = value
                elif field == 3:
                    self.last = value != 0
            elif wire == 2:
                size, pos = _read_varint(buf, pos)
                if pos + size > len(buf):
                    raise TransportError("malformed chunk: field longer than the chunk")
                if field == 1:
                    self.data = buf[pos:pos + size]
                pos += size
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:  # groups (3, 4) are deprecated protobuf and never written for a Chunk
                raise TransportError(f"malformed chunk: wire type {wire}")
        if pos != len(buf):
            raise TransportError("malformed chunk: truncated field")


_MAP_AT = 1024 * 1024


class Reassembler:
    """Accumulates chunks into whole messages, refusing oversized or inconsistent streams.

    It also checksums the codec payload as the chunks arrive; ``payload_checksum`` then lets
    ``codec.decode`` check the message's checksum without a second pass over the bytes.
    """

    def __init__(self, max_bytes: int, *, reuse: bool = False) -> None:
        self.max_bytes = max_bytes
        #: Keep the last large buffer and fill it again with the next message of the same size
        #: once nothing views it any more (a site receiving the global model every round):
        #: fresh memory costs more than the copy on some machines (0.1 s per 100 MB measured).
        self.reuse = reuse
        self._spare: mmap.mmap | None = None
        self._buffer: bytearray | mmap.mmap | None = None
        self._expected = 0
        self._filled = 0
        self._hash: xxhash.xxh3_128 | None = None
        self._payload_at: int | None = None
        #: checksum of the last completed message's payload (None: not computed)
        self.payload_checksum: str | None = None

    @property
    def in_progress(self) -> bool:
        return self._buffer is not None

    def feed(self, chunk: pb.Chunk | WireChunk | bytes) -> bytearray | mmap.mmap | None:
        """Add one chunk; returns the whole message (not copied) when ``chunk`` completes it.

        ``chunk`` may be the serialized bytes of a Chunk, as the model stream delivers them.
        """
        if isinstance(chunk, bytes):
            chunk = WireChunk(chunk)
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
            self._buffer = self._new_buffer(chunk.total_size)
            self._expected = chunk.total_size
            self._filled = 0
            self._hash, self._payload_at, self.payload_checksum = checksum.new(), None, None
        elif chunk.total_size:
            raise TransportError("chunk announces a new message before the last one ended")
        end = self._filled + len(chunk.data)
        if end > self._expected:
            self._buffer = None
            raise TransportError(f"message longer than the {self._expected} bytes announced")
        start = self._filled
        self._buffer[start:end] = chunk.data
        self._filled = end
        self._hash_payload(start, end)
        if not chunk.last:
            return None
        if self._filled != self._expected:
            filled, self._buffer = self._filled, None
            raise TransportError(f"message ended after {filled} of {self._expected} bytes "
                                 "announced")
        data, self._buffer = self._buffer, None
        if self._hash is not None and self._payload_at is not None:
            self.payload_checksum = self._hash.hexdigest()
        self._hash = None
        return data

    def _new_buffer(self, size: int) -> bytearray | mmap.mmap:
        spare = self._spare
        if spare is not None and len(spare) == size:
            try:
                spare.resize(size)  # BufferError while any array still views the last message
                return spare
            except (BufferError, OSError, SystemError, ValueError):  # in use, or no mremap
                pass
        if size < _MAP_AT:
            return bytearray(size)
        buffer = mmap.mmap(-1, size)
        if self.reuse:
            self._spare = buffer
        return buffer

    def _hash_payload(self, start: int, end: int) -> None:
        if self._hash is None or self._buffer is None:
            return
        with memoryview(self._buffer) as view:
            if self._payload_at is None:
                self._payload_at = payload_offset(view[:end])
                if self._payload_at is None:
                    if end >= 8:  # not a fedcare message: decode will say so
                        self._hash = None
                    return
                start = 0  # the bytes so far are in the buffer: hash from the payload's start
            begin = max(start, self._payload_at)
            if begin < end:
                self._hash.update(view[begin:end])
