"""MemoryTransport: sites as handler threads in this process."""

import threading
import time

import numpy as np
import pytest

from fedcare.core.errors import TransportError
from fedcare.core.message import EvalResult, Reply, Task, TaskKind, TrainResult
from fedcare.core.weights import Weights
from fedcare.transport.memory import MemoryTransport

WAIT_S = 10.0  # generous upper bound for a reply that is expected; never reached when all is well


def _task(task_id: str, round_num: int = 1, weights: Weights | None = None) -> Task:
    return Task(task_id, "job", round_num, TaskKind.EVALUATE, weights=weights)


def _echo(site_id: str):
    def handle(task: Task) -> Reply:
        return Reply(task.task_id, site_id, result=EvalResult(task.round_num, {"site": 1.0}))

    return handle


def _receive(transport: MemoryTransport) -> Reply:
    reply = transport.receive(WAIT_S)
    assert reply is not None, "no reply arrived"
    return reply


def test_replies_come_back_from_each_site():
    with MemoryTransport({"a": _echo("a"), "b": _echo("b")}) as transport:
        assert transport.site_ids() == ["a", "b"]
        assert transport.wait_for_sites(2, timeout_s=1) == ["a", "b"]
        transport.send("a", _task("ta", round_num=4))
        transport.send("b", _task("tb", round_num=7))
        replies = {r.task_id: r for r in (_receive(transport), _receive(transport))}
    assert set(replies) == {"ta", "tb"}
    assert replies["ta"].site_id == "a" and replies["tb"].site_id == "b"
    assert isinstance(replies["ta"].result, EvalResult)
    assert replies["ta"].result.num_samples == 4
    assert replies["tb"].result.num_samples == 7
    assert replies["ta"].error is None


def test_each_site_handles_its_tasks_in_order():
    seen: list[str] = []

    def handle(task: Task) -> Reply:
        seen.append(task.task_id)
        return Reply(task.task_id, "a", result=EvalResult(0))

    with MemoryTransport({"a": handle}) as transport:
        for i in range(20):
            transport.send("a", _task(f"t{i}"))
        got = [_receive(transport).task_id for _ in range(20)]
    assert got == seen == [f"t{i}" for i in range(20)]


def test_handlers_see_read_only_arrays_and_cannot_change_the_senders_model():
    global_model = Weights({"w": np.zeros(3, np.float32)})

    def train(task: Task) -> Reply:
        assert task.weights is not None
        update = task.weights.copy()
        update["w"] += 1.0
        task.weights["w"][0] = 99.0  # must raise: the view is read-only
        return Reply(task.task_id, "a", result=TrainResult(Weights(update), 1))

    with MemoryTransport({"a": train}) as transport:
        transport.send("a", Task("t", "job", 1, TaskKind.TRAIN, weights=global_model))
        reply = _receive(transport)
    assert reply.result is None and reply.error is not None
    assert reply.error.startswith("ValueError:") and "read-only" in reply.error
    np.testing.assert_array_equal(global_model["w"], np.zeros(3, np.float32))


def test_sending_to_an_unknown_site_raises_naming_it():
    with MemoryTransport({"a": _echo("a")}) as transport:
        with pytest.raises(TransportError, match="site nowhere") as info:
            transport.send("nowhere", _task("t1"))
        assert info.value.site_id == "nowhere"
        assert "t1" in str(info.value)
        assert transport.receive(0.0) is None  # nothing was delivered anywhere


def test_a_raising_handler_yields_an_error_reply_and_the_site_keeps_serving():
    calls = []

    def flaky(task: Task) -> Reply:
        calls.append(task.task_id)
        if task.task_id == "bad":
            raise RuntimeError("disk full")
        return Reply(task.task_id, "a", result=EvalResult(5))

    with MemoryTransport({"a": flaky}) as transport:
        transport.send("a", _task("bad"))
        transport.send("a", _task("good"))
        first, second = _receive(transport), _receive(transport)
        assert transport.site_ids() == ["a"]
    assert (first.task_id, first.site_id, first.result) == ("bad", "a", None)
    assert first.error == "RuntimeError: disk full"
    assert second.task_id == "good" and second.error is None
    assert isinstance(second.result, EvalResult) and second.result.num_samples == 5
    assert calls == ["bad", "good"]


def test_receive_returns_none_after_the_timeout_when_nothing_is_pending():
    with MemoryTransport({"a": _echo("a")}) as transport:
        start = time.monotonic()
        assert transport.receive(0.05) is None
        elapsed = time.monotonic() - start
        assert 0.04 <= elapsed < 2.0
        assert transport.receive(-1.0) is None  # a negative timeout means "do not wait"


def test_a_slow_sites_reply_arrives_after_a_fast_one():
    started, release = threading.Event(), threading.Event()

    def slow(task: Task) -> Reply:
        started.set()
        assert release.wait(WAIT_S), "never released"
        return Reply(task.task_id, "slow", result=EvalResult(1))

    with MemoryTransport({"slow": slow, "fast": _echo("fast")}) as transport:
        transport.send("slow", _task("t-slow"))
        assert started.wait(WAIT_S)  # the slow site is busy before the fast one gets work
        transport.send("fast", _task("t-fast"))
        first = _receive(transport)
        assert (first.task_id, first.site_id) == ("t-fast", "fast")
        assert transport.receive(0.05) is None  # the slow site is still working
        release.set()
        second = _receive(transport)
        assert (second.task_id, second.site_id) == ("t-slow", "slow")
        assert second.error is None


def test_sites_run_concurrently():
    barrier = threading.Barrier(3, timeout=WAIT_S)

    def meet(site_id: str):
        def handle(task: Task) -> Reply:
            barrier.wait()  # only returns once all three sites are inside a handler at once
            return Reply(task.task_id, site_id, result=EvalResult(1))

        return handle

    sites = {s: meet(s) for s in ("x", "y", "z")}
    with MemoryTransport(sites) as transport:
        for site_id in sites:
            transport.send(site_id, _task(f"t-{site_id}"))
        replies = [_receive(transport) for _ in sites]
    assert sorted(r.site_id for r in replies) == ["x", "y", "z"]
    assert all(r.error is None for r in replies)


def _site_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_close_stops_the_site_threads_and_disconnects_sites():
    names = ["close-test-a", "close-test-b"]
    transport = MemoryTransport({n: _echo(n) for n in names})
    transport.send("close-test-a", _task("t"))
    assert _receive(transport).task_id == "t"
    assert len(_site_threads("site-close-test-")) == 2
    transport.close(timeout_s=WAIT_S)
    assert _site_threads("site-close-test-") == []
    assert transport.site_ids() == []
    with pytest.raises(TransportError, match="site close-test-a"):
        transport.send("close-test-a", _task("late"))


def test_close_does_not_wait_forever_for_a_stuck_handler():
    release = threading.Event()
    started = threading.Event()

    def stuck(task: Task) -> Reply:
        started.set()
        release.wait(WAIT_S)
        return Reply(task.task_id, "stuck-site", result=EvalResult(1))

    transport = MemoryTransport({"stuck-site": stuck})
    transport.send("stuck-site", _task("t"))
    assert started.wait(WAIT_S)
    begin = time.monotonic()
    transport.close(timeout_s=0.05)
    assert time.monotonic() - begin < WAIT_S / 2
    assert transport.site_ids() == []
    release.set()  # let the daemon thread finish so it does not outlive the test
    for thread in _site_threads("site-stuck-site"):
        thread.join(WAIT_S)
    assert _site_threads("site-stuck-site") == []
