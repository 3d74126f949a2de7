"""Chunking a message for the gRPC stream and reassembling it, bounded and checked."""

import os

import pytest

from fedcare.core.errors import TransportError
from fedcare.transport.grpc import fedcare_pb2 as pb
from fedcare.transport.grpc.chunks import Reassembler, WireChunk, to_chunks, to_wire_chunks

PARTS = [b"head", os.urandom(5_000_000), b"", memoryview(os.urandom(300))]
WHOLE = b"".join(bytes(memoryview(p)) for p in PARTS)


def test_wire_chunks_are_exactly_protobuf_chunks():
    wire = list(to_wire_chunks(PARTS))
    assert wire == [c.SerializeToString() for c in to_chunks(PARTS)]
    assert len(wire) == 3 and all(len(w) <= 2 * 1024 * 1024 + 16 for w in wire)
    first, last = pb.Chunk.FromString(wire[0]), pb.Chunk.FromString(wire[-1])
    assert first.total_size == len(WHOLE) and not first.last and last.last
    assert list(to_wire_chunks([])) == [pb.Chunk(last=True).SerializeToString()]


def test_reassembled_from_wire_or_protobuf_chunks():
    for chunks in (list(to_wire_chunks(PARTS)), list(to_chunks(PARTS))):
        reassembler = Reassembler(10**8)
        out = [reassembler.feed(c) for c in chunks]
        assert out[:-1] == [None] * (len(chunks) - 1)
        assert bytes(out[-1]) == WHOLE


def test_wire_chunk_reads_any_field_order_and_skips_unknown_fields():
    # last, total_size, an unknown fixed64 field 9, then data: what any protobuf writer may do
    raw = b"\x18\x01" + b"\x10\x05" + b"\x49" + bytes(8) + b"\x0a\x05hello"
    chunk = WireChunk(raw)
    assert (bytes(chunk.data), chunk.total_size, chunk.last) == (b"hello", 5, True)
    assert pb.Chunk.FromString(raw).data == b"hello"


@pytest.mark.parametrize("raw, problem", [
    (b"\x0a\x09short", "longer than the chunk"),
    (b"\x10" + b"\xff" * 11, "bad varint"),
    (b"\x0b", "wire type 3"),
    (b"\x49\x00", "truncated field"),
    (b"\x10" + b"\xff" * 9 + b"\x7f", "above 64 bits"),
])
def test_malformed_wire_chunks_are_refused(raw, problem):
    with pytest.raises(TransportError, match=problem):
        Reassembler(100).feed(raw)


def test_announced_size_above_the_limit_is_refused_before_any_allocation():
    with pytest.raises(TransportError, match="limit is 1000"):
        Reassembler(1000).feed(pb.Chunk(data=b"x", total_size=2**40).SerializeToString())


@pytest.mark.parametrize("chunk_bytes", [7, 4096, 2 * 1024 * 1024])
def test_payload_is_hashed_as_it_arrives_and_corruption_still_caught(chunk_bytes):
    import numpy as np
    import xxhash

    from fedcare import TrainResult, Weights
    from fedcare.core.message import Reply
    from fedcare.transport.codec import decode, encode, encode_parts

    reply = Reply("t", "site-1", result=TrainResult(
        Weights({"w": np.arange(1_000_000, dtype=np.float32)}), 3))
    whole = encode(reply)
    payload_at = 8 + int.from_bytes(whole[4:8], "little")
    chunks = list(to_wire_chunks(encode_parts(reply), chunk_bytes))
    reassembler = Reassembler(10**8)
    data = [reassembler.feed(c) for c in chunks][-1]
    assert reassembler.payload_checksum == xxhash.xxh3_128(whole[payload_at:]).hexdigest()
    assert decode(data, payload_checksum=reassembler.payload_checksum).result.num_samples == 3
    # flip one payload bit in transit: the digest computed on arrival no longer matches
    last = pb.Chunk.FromString(chunks[-1])
    last.data = last.data[:-1] + bytes([last.data[-1] ^ 1])
    reassembler = Reassembler(10**8)
    data = [reassembler.feed(c) for c in [*chunks[:-1], last.SerializeToString()]][-1]
    with pytest.raises(TransportError, match="checksum mismatch"):
        decode(data, payload_checksum=reassembler.payload_checksum)


def test_a_reusing_reassembler_refills_its_buffer_only_once_nothing_views_it():
    import numpy as np

    messages = [os.urandom(3 * 1024 * 1024) for _ in range(3)]
    reassembler = Reassembler(10**8, reuse=True)

    def receive(message):
        out = [reassembler.feed(c) for c in to_wire_chunks([message])]
        return out[-1]

    first = receive(messages[0])
    held = np.frombuffer(first, np.uint8)  # e.g. a trainer that keeps the last global model
    second = receive(messages[1])
    assert second is not first and bytes(held[:16]) == messages[0][:16]  # not overwritten
    del held
    third = receive(messages[2])
    assert third is second and bytes(third) == messages[2]  # refilled: no fresh memory


@pytest.mark.parametrize("first_bytes", [1, 37, 2 * 1024 * 1024, 10**9])
def test_the_first_chunk_can_end_early_and_the_rest_stay_whole_chunks(first_bytes):
    message = os.urandom(5 * 1024 * 1024 + 11)
    chunks = [pb.Chunk.FromString(c) for c in to_wire_chunks([message], first_bytes=first_bytes)]
    sizes = [len(c.data) for c in chunks]
    first = min(first_bytes, 2 * 1024 * 1024)
    assert sizes[0] == first and all(s == 2 * 1024 * 1024 for s in sizes[1:-1])
    assert b"".join(c.data for c in chunks) == message
    assert chunks[0].total_size == len(message) and [c.last for c in chunks][-1]
    assert not any(c.total_size for c in chunks[1:]) and not any(c.last for c in chunks[:-1])


def test_a_sites_reply_header_travels_alone_in_its_first_chunk():
    import numpy as np

    from fedcare import TrainResult, Weights
    from fedcare.core.message import Reply
    from fedcare.transport.codec import encode, encode_parts, header_size
    from fedcare.transport.streaming import peek_train_reply

    reply = Reply("t", "site-1", result=TrainResult(
        Weights({"w": np.arange(1_000_000, dtype=np.float32)}), 3))
    parts = encode_parts(reply)
    chunks = [pb.Chunk.FromString(c)
              for c in to_wire_chunks(parts, first_bytes=header_size(parts))]
    whole = encode(reply)
    assert len(chunks[0].data) == 8 + int.from_bytes(whole[4:8], "little")  # the header only
    head = peek_train_reply(memoryview(chunks[0].data), len(whole))
    assert head is not None and head.payload_at == len(chunks[0].data) and head.num_samples == 3
    assert b"".join(c.data for c in chunks) == whole
