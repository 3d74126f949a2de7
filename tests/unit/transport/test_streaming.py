"""Streamed aggregation: an upload folded into the round as its bytes arrive, and taken back
out exactly when it turns out bad."""

import numpy as np
import pytest

from fedcare import FedAvg, TrainResult, Weights
from fedcare.algorithms import FedAdam, TrimmedMean
from fedcare.core.errors import TransportError
from fedcare.core.message import EvalResult, Reply, Task, TaskKind
from fedcare.server.streams import RoundStreams
from fedcare.transport.codec import encode
from fedcare.transport.grpc.chunks import WireChunk, to_wire_chunks
from fedcare.transport.streaming import PayloadRouter, StreamedUpload, peek_train_reply

MIXED = Weights({
    "half": np.arange(7, dtype=np.float16),  # odd byte count: the next tensor is misaligned
    "w": np.linspace(-1, 1, 13, dtype=np.float32).reshape(13, 1),
    "empty": np.zeros((0, 4), np.float32),
    "d": np.array([1e-300, -2.5, 3.0], np.float64),
    "steps": np.array(5, np.int64),
    "flag": np.array([True, False, True]),
})


class Recorder:
    """A sink that rebuilds the tensors it is fed."""

    def __init__(self, weights):
        self.out = [np.zeros(a.size, a.dtype) for a in weights.values()]
        self.seen = [np.zeros(a.size, bool) for a in weights.values()]
        self.completed = self.discarded = False

    def write(self, index, start, values):
        assert not self.seen[index][start:start + values.size].any(), "element written twice"
        self.out[index][start:start + values.size] = values
        self.seen[index][start:start + values.size] = True

    def complete(self):
        self.completed = True

    def discard(self):
        self.discarded = True


def payload_of(weights):
    message = encode(Reply("t", "s", result=TrainResult(weights, 3)))
    head = peek_train_reply(memoryview(message), len(message))
    assert head is not None
    return message[head.payload_at:], head


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, 64, 10_000])
def test_router_rebuilds_every_tensor_from_pieces_of_any_size(piece):
    payload, head = payload_of(MIXED)
    sink = Recorder(MIXED)
    router = PayloadRouter(head.specs, sink)
    for start in range(0, len(payload), piece):
        router.feed(memoryview(payload[start:start + piece]))
    router.finish(head.payload_checksum)
    for (name, array), out, seen in zip(MIXED.items(), sink.out, sink.seen, strict=True):
        assert seen.all(), name
        np.testing.assert_array_equal(out.reshape(array.shape), array)


def test_router_refuses_a_payload_of_the_wrong_length_or_checksum():
    payload, head = payload_of(MIXED)
    router = PayloadRouter(head.specs, Recorder(MIXED))
    router.feed(memoryview(payload[:-3]))
    with pytest.raises(TransportError, match="shorter"):
        router.finish(head.payload_checksum)
    router = PayloadRouter(head.specs, Recorder(MIXED))
    with pytest.raises(TransportError, match="longer"):
        router.feed(memoryview(payload + b"x"))
    router = PayloadRouter(head.specs, Recorder(MIXED))
    router.feed(memoryview(payload[:-1] + bytes([payload[-1] ^ 1])))
    with pytest.raises(TransportError, match="checksum"):
        router.finish(head.payload_checksum)


def test_only_training_replies_with_their_whole_header_are_streamed():
    train = encode(Reply("t", "s", result=TrainResult(MIXED, 3, {"loss": 0.5})))
    head = peek_train_reply(memoryview(train), len(train))
    assert (head.task_id, head.site_id, head.num_samples, head.metrics) == ("t", "s", 3,
                                                                            {"loss": 0.5})
    assert [s.name for s in head.specs] == list(MIXED)
    others = [encode(Reply("t", "s", result=EvalResult(3))),
              encode(Reply("t", "s", error="boom")),
              encode(Task("t", "j", 1, TaskKind.TRAIN, MIXED))]
    for message in others:
        assert peek_train_reply(memoryview(message), len(message)) is None
    assert peek_train_reply(memoryview(train[:40]), len(train)) is None  # header not all in
    assert peek_train_reply(memoryview(train), len(train) + 1) is None  # sizes disagree
    assert peek_train_reply(memoryview(b"NOPE" + train[4:]), len(train)) is None


def test_a_training_reply_with_a_bad_shape_is_left_to_the_decoder_to_refuse():
    """(0, 2**40, 2**40) needs no payload byte: without the shape check it would be streamed,
    sized by its shape, into the round."""
    import json

    from fedcare.transport.codec import HEADER_AT, decode

    train = encode(Reply("t", "s", result=TrainResult(MIXED, 3)))
    at = peek_train_reply(memoryview(train), len(train)).payload_at
    head = json.loads(train[HEADER_AT:at])
    head["tensors"][2]["shape"] = [0, 2**40, 2**40]  # "empty": 0 bytes either way
    header = json.dumps(head).encode()
    bad = train[:4] + len(header).to_bytes(4, "little") + header + train[at:]
    assert peek_train_reply(memoryview(bad), len(bad)) is None
    with pytest.raises(TransportError, match="reply 't' from site s: tensor 'empty': bad shape"):
        decode(bad)


def model(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return Weights({"w": (rng.standard_normal((300, 7)) * scale).astype(np.float32),
                    "b": rng.standard_normal(5).astype(np.float32),
                    "steps": np.array(seed, np.int64)})


def stream_in(aggregator, site, weights, n, piece, stop_after=None):
    """Fold ``weights`` into ``aggregator`` through a stream, in ``piece``-element runs."""
    stream = aggregator.stream(site, n, weights.specs())
    written = 0
    for index, array in enumerate(weights.values()):
        flat = array.reshape(-1)
        for start in range(0, flat.size, piece):
            if stop_after is not None and written >= stop_after:
                return stream
            stream.write(index, start, flat[start:start + piece])
            written += 1
    return stream


@pytest.mark.parametrize("strategy", [FedAvg(), FedAdam(server_lr=0.1)])
def test_streamed_results_give_the_same_bits_and_discarded_ones_leave_no_trace(strategy):
    start = model(0)
    sites = [(f"s{i}", model(i + 1), 10 * i + 3) for i in range(5)]
    whole = strategy.aggregator(1, start)
    for site, weights, n in sites:
        whole.add(site, TrainResult(weights, n))
    expected = whole.finish()

    streamed = type(strategy)(**({"server_lr": 0.1} if isinstance(strategy, FedAdam) else {}))
    aggregator = streamed.aggregator(1, start)
    # a bad site first (its values are in the sum when it is taken out), one in the middle
    stream_in(aggregator, "bad", model(99, scale=1e3), 7, piece=64, stop_after=20).discard()
    for i, (site, weights, n) in enumerate(sites):
        if i == 2:
            stream_in(aggregator, "bad2", model(98), 5, piece=100, stop_after=5).discard()
        if i % 2:
            aggregator.add(site, TrainResult(weights, n))  # streamed and whole, mixed
        else:
            stream_in(aggregator, site, weights, n, piece=97 + i).commit()
    assert aggregator.num_results == 5
    got = aggregator.finish()
    for name in expected:
        assert got[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(got[name], expected[name])


def test_an_aggregator_that_needs_whole_updates_does_not_stream():
    assert TrimmedMean(trim=0.2).aggregator(1, model(0)).stream("s", 1, model(0).specs()) is None


def round_streams(aggregator, expected):
    return RoundStreams(aggregator, expected, lambda site: f"job/r1/train/{site}")


def test_round_streams_check_the_header_before_any_byte_is_folded_in():
    start = model(0)
    streams = round_streams(FedAvg().aggregator(1, start), start)
    specs = start.specs()
    assert streams.open("job/r2/train/s1", "s1", 3, {}, specs) is None  # not this round's task
    with pytest.raises(ValueError, match="num_samples"):
        streams.open("job/r1/train/s1", "s1", 0, {}, specs)
    with pytest.raises(ValueError, match="not finite"):
        streams.open("job/r1/train/s1", "s1", 3, {"loss": float("nan")}, specs)
    wrong = Weights({**start, "w": np.zeros((7, 300), np.float32)}).specs()
    with pytest.raises(ValueError, match=r"model does not match: w: shape \[7, 300\]"):
        streams.open("job/r1/train/s1", "s1", 3, {}, wrong)
    assert streams.open("job/r1/train/s1", "s1", 3, {}, specs) is not None
    assert streams.open("job/r1/train/s1", "s1", 3, {}, specs) is None  # only once


def test_round_streams_count_a_result_only_once_it_is_complete_and_accepted():
    start = model(0)
    aggregator = FedAvg().aggregator(1, start)
    streams = round_streams(aggregator, start)
    good, late, bad = (streams.open(f"job/r1/train/{s}", s, 4, {}, start.specs())
                       for s in ("good", "late", "bad"))
    for sink, weights in ((good, model(1)), (late, model(2))):
        for index, array in enumerate(weights.values()):
            sink.write(index, 0, array.reshape(-1))
        sink.complete()
    poisoned = model(3).copy()
    poisoned["b"][4] = np.inf
    bad.write(0, 0, poisoned["w"].reshape(-1))
    with pytest.raises(ValueError, match=r"NaN or infinity in \['b'\]"):
        bad.write(1, 0, poisoned["b"])
    bad.discard()
    assert not streams.accept("job/r1/train/bad")
    assert streams.accept("job/r1/train/good")
    streams.close()  # "late" completed, but the round ended before the controller took it
    assert not streams.accept("job/r1/train/late")
    with pytest.raises(ValueError, match="round ended"):
        late.complete()
    assert aggregator.num_results == 1
    got = aggregator.finish()
    np.testing.assert_array_equal(got["w"], model(1)["w"])
    np.testing.assert_array_equal(got["b"], model(1)["b"])


def wire(weights, task_id="job/r1/train/s1", site="s1", n=4, piece=1000):
    message = encode(Reply(task_id, site, result=TrainResult(weights, n, {"loss": 0.25})))
    return [WireChunk(c) for c in to_wire_chunks([message], piece)], len(message)


def upload(streams, chunks, size):
    head = peek_train_reply(chunks[0].data, size)
    sink = streams.open(head.task_id, head.site_id, head.num_samples, head.metrics, head.specs)
    return StreamedUpload(head, size, sink)


def test_a_streamed_upload_is_folded_in_and_delivered_as_a_folded_reply():
    start = model(0)
    aggregator = FedAvg().aggregator(1, start)
    streams = round_streams(aggregator, start)
    chunks, size = wire(model(5))
    up = upload(streams, chunks, size)
    replies = [up.feed(c) for c in chunks]
    assert replies[:-1] == [None] * (len(chunks) - 1)
    reply = replies[-1]
    assert reply.folded and reply.error is None and reply.result.num_samples == 4
    assert dict(reply.result.metrics) == {"loss": 0.25} and len(reply.result.weights) == 0
    assert streams.accept(reply.task_id)
    np.testing.assert_array_equal(aggregator.finish()["w"], model(5)["w"])


@pytest.mark.parametrize("damage, problem", [
    ("checksum", "checksum mismatch"),
    ("longer", "longer than"),
    ("early_end", "message ended after"),
    ("new_message", "announces a new message"),
])
def test_a_broken_upload_is_taken_back_out(damage, problem):
    start = model(0)
    aggregator = FedAvg().aggregator(1, start)
    streams = round_streams(aggregator, start)
    # a good site first, then one whose stream breaks after some of its values are folded in
    chunks, size = wire(model(1), "job/r1/train/good", "good")
    good = upload(streams, chunks, size)
    reply = [good.feed(c) for c in chunks][-1]
    assert streams.accept(reply.task_id)
    chunks, size = wire(model(2))
    raw = [bytes(c.data) for c in chunks]
    assert len(raw) > 3
    if damage == "checksum":
        raw[-1] = raw[-1][:-1] + bytes([raw[-1][-1] ^ 1])
    if damage == "longer":
        raw[-1] += b"xx"
    if damage == "early_end":
        raw = raw[:-1]
    wired = [_first(raw[0], size)] + [_plain(r, False) for r in raw[1:-1]] + [_plain(raw[-1], True)]
    if damage == "new_message":
        wired[-2] = _first(raw[-2], size)
    chunks = [WireChunk(w) for w in wired]
    up = upload(streams, chunks, size)
    with pytest.raises(TransportError, match=problem):
        for chunk in chunks:
            up.feed(chunk)
    assert not streams.accept("job/r1/train/s1")
    streams.close()
    got = aggregator.finish()
    np.testing.assert_array_equal(got["w"], model(1)["w"])  # exactly the good site's model


def test_values_refused_mid_upload_become_the_sites_error_reply():
    start = model(0)
    aggregator = FedAvg().aggregator(1, start)
    streams = round_streams(aggregator, start)
    bad = model(2).copy()
    bad["b"][0] = np.nan  # "b" comes after "w", which is folded in by then
    chunks, size = wire(Weights(bad))
    up = upload(streams, chunks, size)
    reply = [up.feed(c) for c in chunks][-1]
    assert reply.error == "returned NaN or infinity in ['b']" and not reply.folded
    assert not streams.accept(reply.task_id)
    chunks, size = wire(model(3), "job/r1/train/s2", "s2")
    other = upload(streams, chunks, size)
    assert streams.accept([other.feed(c) for c in chunks][-1].task_id)
    np.testing.assert_array_equal(aggregator.finish()["w"], model(3)["w"])


def _plain(data, last):
    from fedcare.transport.grpc import fedcare_pb2 as pb
    return pb.Chunk(data=data, last=last).SerializeToString()


def _first(data, size):
    from fedcare.transport.grpc import fedcare_pb2 as pb
    return pb.Chunk(data=data, total_size=size).SerializeToString()


def test_a_huge_upload_taken_back_out_does_not_erase_what_it_absorbed():
    # 25 + 2.7e54 - 2.7e54 is 0 in float64: subtracting alone would erase site a's values
    start = Weights({"w": np.zeros(8, np.float32)})
    aggregator = FedAvg().aggregator(1, start)
    streams = round_streams(aggregator, start)

    def send(site, value, n, complete=True):
        sink = streams.open(f"job/r1/train/{site}", site, n, {}, start.specs())
        sink.write(0, 0, np.full(8, value, np.float32))
        if complete:
            sink.complete()
            assert streams.accept(f"job/r1/train/{site}")
        return sink

    send("a", 0.25, 100)
    send("m", 3e38, 2**53, complete=False).discard()  # e.g. its checksum then fails
    send("b", 0.75, 100)
    np.testing.assert_array_equal(aggregator.finish()["w"], np.full(8, 0.5, np.float32))


def test_an_upload_that_could_not_be_taken_back_out_within_bounds_is_refused_in_time():
    start = Weights({"w": np.zeros(100_000, np.float32)})
    aggregator = FedAvg().aggregator(1, start)
    streams = round_streams(aggregator, start)
    first = streams.open("job/r1/train/a", "a", 3, {}, start.specs())
    first.write(0, 0, np.full(100_000, 0.25, np.float32))
    first.complete()
    assert streams.accept("job/r1/train/a")
    huge = streams.open("job/r1/train/m", "m", 2**53, {}, start.specs())
    huge.write(0, 0, np.full(50_000, 3e38, np.float32))  # folded on the sink's own thread
    with pytest.raises(ValueError, match="could not be undone exactly"):
        huge.complete()
    with pytest.raises(ValueError, match="could not be undone exactly"):  # and stays refused
        huge.write(0, 50_000, np.full(50_000, 3e38, np.float32))
    huge.discard()
    np.testing.assert_array_equal(aggregator.finish()["w"], np.full(100_000, 0.25, np.float32))


def test_an_upload_still_being_folded_when_the_round_ends_is_taken_back_out_whole():
    start = Weights({"w": np.zeros(1 << 20, np.float32)})
    aggregator = FedAvg().aggregator(1, start)
    streams = round_streams(aggregator, start)
    good = streams.open("job/r1/train/a", "a", 3, {}, start.specs())
    good.write(0, 0, np.full(1 << 20, 0.25, np.float32))
    good.complete()
    assert streams.accept("job/r1/train/a")
    late = streams.open("job/r1/train/b", "b", 5, {}, start.specs())
    runs = np.array_split(np.full(1 << 20, 0.75, np.float32), 64)
    at = 0
    for run in runs[:40]:  # queued faster than they are folded: the round ends meanwhile
        late.write(0, at, run)
        at += run.size
    streams.close()
    with pytest.raises(ValueError, match="round ended"):
        late.complete()
    late.discard()
    assert aggregator.num_results == 1
    np.testing.assert_array_equal(aggregator.finish()["w"], np.full(1 << 20, 0.25, np.float32))


def test_an_upload_refused_while_folding_is_freed_at_once():
    import gc
    import weakref

    start = Weights({"w": np.zeros(1000, np.float32)})
    streams = round_streams(FedAvg().aggregator(1, start), start)
    sink = streams.open("job/r1/train/b", "b", 5, {}, start.specs())
    sink.write(0, 0, np.full(500, 0.75, np.float32))
    streams.close()
    sink.write(0, 500, np.full(500, 0.75, np.float32))  # folded after the round ended
    with pytest.raises(ValueError, match="round ended"):
        sink.complete()
    sink.discard()
    inner = weakref.ref(sink.inner)  # holds the undo copy: model-sized memory
    gc.disable()
    try:
        del sink
        streams._sinks.clear()
        assert inner() is None  # no reference cycle through a kept traceback
    finally:
        gc.enable()


def test_a_fold_thread_that_cannot_start_fails_its_upload_only(monkeypatch):
    import threading

    start = Weights({"w": np.zeros(1000, np.float32)})
    aggregator = FedAvg().aggregator(1, start)
    streams = round_streams(aggregator, start)
    sink = streams.open("job/r1/train/b", "b", 5, {}, start.specs())

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", no_thread)
        with pytest.raises(RuntimeError, match="new thread"):
            sink.write(0, 0, np.full(1000, 0.75, np.float32))
    sink.discard()  # the transport's clean-up still works (no thread to join)
    other = streams.open("job/r1/train/a", "a", 3, {}, start.specs())
    other.write(0, 0, np.full(1000, 0.25, np.float32))
    other.complete()
    assert streams.accept("job/r1/train/a") and aggregator.num_results == 1
    np.testing.assert_array_equal(aggregator.finish()["w"], np.full(1000, 0.25, np.float32))


def test_a_subclass_that_changes_add_gets_every_update_whole():
    from fedcare.algorithms import WeightedMeanAggregator

    class Noisy(WeightedMeanAggregator):
        def add(self, site_id, result):
            super().add(site_id, result)

    assert Noisy(model(0)).stream("s", 1, model(0).specs()) is None
    assert WeightedMeanAggregator(model(0)).stream("s", 1, model(0).specs()) is not None


def test_a_finished_stream_keeps_no_model_sized_memory():
    import tracemalloc

    start = Weights({"w": np.zeros(1 << 20, np.float32)})
    aggregator = FedAvg().aggregator(1, start)
    values = np.full(1 << 20, 0.5, np.float32)
    tracemalloc.start()
    try:
        first = aggregator.stream("a", 3, start.specs())  # the shared undo copy
        second = aggregator.stream("b", 5, start.specs())  # meanwhile: an undo copy of its own
        for stream in (first, second):
            stream.write(0, 0, values)
        held = tracemalloc.get_traced_memory()[0]
        first.commit()
        second.discard()
        # the round keeps finished streams until it ends: they must not keep their buffers
        freed = held - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert freed >= values.nbytes  # at least the second stream's own copy (4 MiB)
    assert aggregator.num_results == 1
    np.testing.assert_array_equal(aggregator.finish()["w"], values)
