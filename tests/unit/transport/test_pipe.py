"""Frames on a byte stream, and PipeTransport with real child processes (no sleeps: timeouts)."""

import io
import struct
import sys
import time

import numpy as np
import pytest

from fedcare.core.errors import TransportError
from fedcare.core.message import EvalResult, Reply, Task, TaskKind
from fedcare.core.weights import Weights
from fedcare.transport.pipe import PipeTransport, read_frame, write_frame

WAIT_S = 30.0  # upper bound for things expected to happen; never reached when all is well

# A site process: argv is [site_id, mode]. mode "ok" serves, "fail" cannot build its handler.
# A task with config {"exit": True} makes the site die mid-task with exit code 3.
SITE = """
import os, sys
from fedcare.core.message import EvalResult, Reply
from fedcare.transport.pipe import serve_stdio

site_id, mode = sys.argv[1], sys.argv[2]

def build():
    if mode == "fail":
        raise RuntimeError("no data for " + site_id)
    def handle(task):
        if task.config.get("exit"):
            os._exit(3)
        print("chatter from the trainer")  # must go to stderr, not into the protocol
        n = 0 if task.weights is None else sum(a.size for a in task.weights.values())
        return Reply(task.task_id, site_id,
                     result=EvalResult(task.round_num, {"elements": float(n)}))
    return handle

sys.exit(serve_stdio(site_id, build))
"""

# A site that says Hello, then answers its first task with bytes that are not a message.
GARBAGE = """
import sys
from fedcare.transport.codec import Hello, encode
from fedcare.transport.pipe import read_frame, write_frame

out = sys.stdout.buffer
write_frame(out, encode(Hello(site_id=sys.argv[1])))
read_frame(sys.stdin.buffer)
write_frame(out, b"definitely not a fedcare message")
sys.stdin.buffer.read()
"""


# --- frames ----------------------------------------------------------------------------------


def test_frames_round_trip_in_order_then_end_cleanly():
    frames = [b"abc", b"", bytes(range(256)) * 40]
    stream = io.BytesIO()
    for frame in frames:
        write_frame(stream, frame)
    assert len(stream.getvalue()) == sum(8 + len(f) for f in frames)
    stream.seek(0)
    assert [read_frame(stream) for _ in frames] == frames  # b"" is a frame, not the end
    assert read_frame(stream) is None
    assert read_frame(io.BytesIO()) is None


class _Trickle(io.RawIOBase):
    """A stream that hands out one byte per read, like a slow pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 1) if size >= 0 else 1)


def test_frames_survive_short_reads():
    stream = io.BytesIO()
    write_frame(stream, b"hello")
    write_frame(stream, b"world!")
    trickle = _Trickle(stream.getvalue())
    assert read_frame(trickle) == b"hello"
    assert read_frame(trickle) == b"world!"
    assert read_frame(trickle) is None


def test_truncated_frames_raise():
    stream = io.BytesIO()
    write_frame(stream, b"0123456789")
    data = stream.getvalue()
    with pytest.raises(TransportError, match="truncated frame: 7 of 10 bytes"):
        read_frame(io.BytesIO(data[:-3]))
    with pytest.raises(TransportError, match="stream ended inside a frame header"):
        read_frame(io.BytesIO(data[:5]))


def test_oversized_announced_length_raises_before_reading():
    stream = io.BytesIO(struct.pack("<Q", 2**40) + b"x" * 100)
    with pytest.raises(TransportError, match=f"frame of {2**40} bytes exceeds the limit of 1024"):
        read_frame(stream, max_bytes=1024)
    assert stream.tell() == 8  # the body was not read
    with pytest.raises(TransportError, match="exceeds the limit"):
        read_frame(io.BytesIO(struct.pack("<Q", 2**63)))  # default limit
    ok = io.BytesIO()
    write_frame(ok, b"x" * 1024)
    ok.seek(0)
    assert read_frame(ok, max_bytes=1024) == b"x" * 1024


# --- PipeTransport ---------------------------------------------------------------------------


def _transport(**modes: str) -> PipeTransport:
    script = {"garbage": GARBAGE}
    return PipeTransport({
        site: [sys.executable, "-c", script.get(mode, SITE), site, mode]
        for site, mode in modes.items()
    })


def _task(task_id: str, round_num: int = 1, **config: bool) -> Task:
    return Task(task_id, "job", round_num, TaskKind.EVALUATE, config=config)


def _receive(transport: PipeTransport) -> Reply:
    reply = transport.receive(WAIT_S)
    assert reply is not None, f"no reply within {WAIT_S}s; failures: {transport.failures}"
    return reply


def _assert_all_exited(transport: PipeTransport) -> dict[str, int | None]:
    codes = {site: proc.poll() for site, proc in transport.processes.items()}
    assert None not in codes.values(), f"children still running: {codes}"
    return codes


def test_sites_connect_answer_tasks_and_exit_on_close():
    transport = _transport(a="ok", b="ok")
    try:
        assert sorted(transport.wait_for_sites(2, timeout_s=WAIT_S)) == ["a", "b"]
        assert transport.failures == {}
        weights = Weights({"w": np.arange(250_000, dtype=np.float32)})  # 1 MB through the pipe
        transport.send("a", Task("ta", "job", 5, TaskKind.TRAIN, weights=weights))
        transport.send("b", _task("tb", round_num=9))
        replies = {r.task_id: r for r in (_receive(transport), _receive(transport))}
    finally:
        transport.close(timeout_s=WAIT_S)
    assert replies["ta"].site_id == "a" and replies["tb"].site_id == "b"
    assert isinstance(replies["ta"].result, EvalResult)
    assert isinstance(replies["tb"].result, EvalResult)
    assert replies["ta"].result.num_samples == 5
    assert dict(replies["ta"].result.metrics) == {"elements": 250_000.0}
    assert replies["tb"].result.num_samples == 9
    assert dict(replies["tb"].result.metrics) == {"elements": 0.0}
    assert _assert_all_exited(transport) == {"a": 0, "b": 0}
    assert transport.site_ids() == []
    transport.close(timeout_s=WAIT_S)  # a second close is harmless
    _assert_all_exited(transport)


def test_many_tasks_to_one_site_all_come_back_in_order():
    transport = _transport(a="ok")
    try:
        assert transport.wait_for_sites(1, timeout_s=WAIT_S) == ["a"]
        for i in range(25):
            transport.send("a", _task(f"t{i}", round_num=i))
        replies = [_receive(transport) for _ in range(25)]
    finally:
        transport.close(timeout_s=WAIT_S)
    assert [r.task_id for r in replies] == [f"t{i}" for i in range(25)]
    assert [r.result.num_samples for r in replies if r.result] == list(range(25))
    _assert_all_exited(transport)


def test_a_site_that_cannot_build_its_handler_reports_why_and_never_connects():
    transport = _transport(good="ok", bad="fail")
    try:
        start = time.monotonic()
        # ends as soon as every site has connected or failed, not after the full timeout
        assert transport.wait_for_sites(2, timeout_s=WAIT_S) == ["good"]
        assert time.monotonic() - start < WAIT_S
        assert transport.failures == {"bad": "RuntimeError: no data for bad"}
        assert transport.processes["bad"].wait(timeout=WAIT_S) == 1
        assert transport.site_ids() == ["good"]
        with pytest.raises(TransportError, match="site bad"):
            transport.send("bad", _task("t-bad"))
        transport.send("good", _task("t-good", round_num=2))
        reply = _receive(transport)
        assert (reply.task_id, reply.error) == ("t-good", None)
    finally:
        transport.close(timeout_s=WAIT_S)
    assert _assert_all_exited(transport) == {"good": 0, "bad": 1}


def test_wait_for_sites_returns_early_when_every_site_failed():
    transport = _transport(x="fail", y="fail")
    try:
        assert transport.wait_for_sites(2, timeout_s=WAIT_S) == []
        assert transport.failures == {
            "x": "RuntimeError: no data for x", "y": "RuntimeError: no data for y",
        }
    finally:
        transport.close(timeout_s=WAIT_S)
    _assert_all_exited(transport)


def test_a_site_that_exits_mid_task_turns_the_task_into_an_error_reply():
    transport = _transport(dies="ok", stays="ok")
    try:
        assert sorted(transport.wait_for_sites(2, timeout_s=WAIT_S)) == ["dies", "stays"]
        transport.send("dies", _task("t-doomed", exit=True))
        reply = _receive(transport)
        assert (reply.task_id, reply.site_id, reply.result) == ("t-doomed", "dies", None)
        assert reply.error is not None and "exit code 3" in reply.error
        assert "exit code 3" in transport.failures["dies"]
        assert transport.site_ids() == ["stays"]
        with pytest.raises(TransportError, match="site dies"):
            transport.send("dies", _task("t-late"))
        transport.send("stays", _task("t-fine", round_num=4))  # the other site is unaffected
        reply = _receive(transport)
        assert (reply.task_id, reply.site_id, reply.error) == ("t-fine", "stays", None)
        assert transport.receive(0.05) is None  # no stray second reply for the lost task
    finally:
        transport.close(timeout_s=WAIT_S)
    assert _assert_all_exited(transport) == {"dies": 3, "stays": 0}


def test_a_site_that_breaks_the_protocol_is_stopped_and_its_task_fails():
    transport = _transport(rogue="garbage")
    try:
        assert transport.wait_for_sites(1, timeout_s=WAIT_S) == ["rogue"]
        transport.send("rogue", _task("t1"))
        reply = _receive(transport)
        assert reply.task_id == "t1" and reply.site_id == "rogue"
        assert reply.error is not None
        assert reply.error.startswith("protocol violation: not a fedcare message")
        assert transport.site_ids() == []
    finally:
        transport.close(timeout_s=WAIT_S)
    codes = _assert_all_exited(transport)
    assert codes["rogue"] != 0  # killed by the transport, not a clean exit


def test_a_frame_written_from_buffers_reads_back_whole():
    from fedcare.transport.codec import decode, encode_parts

    weights = Weights({"w": np.arange(6, dtype=np.float32)})
    parts = encode_parts(Task("t", "j", 1, TaskKind.TRAIN, weights))
    assert any(isinstance(p, memoryview) and np.shares_memory(np.asarray(p), weights["w"])
               for p in parts)  # the model is referenced, not copied, until written
    stream = io.BytesIO()
    write_frame(stream, parts)
    stream.seek(0)
    task = decode(read_frame(stream))
    np.testing.assert_array_equal(task.weights["w"], weights["w"])


def test_a_task_that_cannot_be_decoded_costs_that_task_not_the_site_process():
    """A tensor shape with a zero dimension and huge others (numpy: "array is too big") once
    ended the site process; now the task gets an error reply naming the tensor, and the site
    goes on serving."""
    import json

    from fedcare.transport.codec import HEADER_AT, encode

    bad = encode(Task("t-bad", "job", 1, TaskKind.EVALUATE,
                      weights=Weights({"w": np.zeros((0, 2), np.float32)})))
    head = json.loads(bad[HEADER_AT:])
    head["tensors"][0]["shape"] = [0, 2**40, 2**40]
    header = json.dumps(head).encode()
    bad = bad[:4] + struct.pack("<I", len(header)) + header
    transport = _transport(a="ok")
    try:
        assert transport.wait_for_sites(1, timeout_s=WAIT_S) == ["a"]
        with transport._lock:  # what a faulty controller would send: bytes, not a Task
            transport._outstanding["a"].add("t-bad")
        transport._outboxes["a"].put([bad])
        transport.send("a", _task("t-good", round_num=3))
        refused, served = _receive(transport), _receive(transport)
        assert transport.site_ids() == ["a"]
    finally:
        transport.close(timeout_s=WAIT_S)
    assert refused.task_id == "t-bad" and refused.result is None
    assert refused.error == ("task refused: task 't-bad' from the controller: tensor 'w': bad "
                             "shape: dimensions [0, 1099511627776, 1099511627776] hold more "
                             "than 2**40 elements (zero dimensions aside)")
    assert (served.task_id, served.error, served.result.num_samples) == ("t-good", None, 3)
    assert _assert_all_exited(transport) == {"a": 0}
