"""Bounded input on real processes: a bad tensor shape from either side, a site's hostile
metrics and error text. Each used to cost a site process, an internal error at the server, or
a job's ``Metrics`` and ``download``."""

import json
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from toyjob import ENTRY_POINTS

from fedcare.cli.poc import PocFederation
from fedcare.core.message import EvalResult, JobRef, Reply, Task, TaskKind, TrainResult
from fedcare.core.weights import Weights
from fedcare.transport.codec import HEADER_AT, Hello, decode, encode, encode_parts
from fedcare.transport.grpc import fedcare_pb2 as pb
from fedcare.transport.grpc.chunks import GRPC_MESSAGE_LIMIT, Reassembler, to_wire_chunks
from fedcare.transport.grpc.client import secure_channel
from fedcare.transport.grpc.tls import TlsFiles, server_credentials

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

TESTS = Path(__file__).resolve().parents[1]
WAIT_S = 60
TOO_BIG = "dimensions [0, 1099511627776, 1099511627776] hold more than 2**40 elements"


@pytest.fixture(autouse=True)
def _toyjob_everywhere(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))


def _tls(kit: Path) -> TlsFiles:
    return TlsFiles(*((kit / name).read_bytes() for name in ("ca.crt", "cert.crt", "key.pem")))


def _with_shape(message: bytes, index: int, shape: list[int]) -> bytes:
    """``message`` with tensor ``index`` of its header claiming ``shape`` (payload unchanged:
    a tensor with a zero dimension needs no byte whatever the others say)."""
    end = HEADER_AT + int.from_bytes(message[4:HEADER_AT], "little")
    header = json.loads(message[HEADER_AT:end])
    header["tensors"][index]["shape"] = shape
    head = json.dumps(header).encode()
    return message[:4] + len(head).to_bytes(4, "little") + head + message[end:]


class FakeServer:
    """A federation server of the test's own, with the real server's certificate: it sends a
    real site process whatever bytes the test gives it and hands back what the site sends."""

    def __init__(self, kit: Path) -> None:
        self.received: queue.Queue[object] = queue.Queue()
        self.outbox: queue.Queue[list[bytes] | None] = queue.Queue()
        self.server = grpc.server(ThreadPoolExecutor(4), options=[
            ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
            ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT)])
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "fedcare.v1.Federation",
            {"Connect": grpc.stream_stream_rpc_method_handler(self._connect)}),))
        self.port = self.server.add_secure_port("127.0.0.1:0", server_credentials(_tls(kit)))
        self.server.start()

    def _connect(self, requests, context):
        def read():
            reassembler = Reassembler(2**30)
            try:
                for raw in requests:
                    data = reassembler.feed(raw)
                    if data is not None:
                        self.received.put(decode(bytes(data)))
            except grpc.RpcError:
                pass  # the test stopped this server

        threading.Thread(target=read, daemon=True).start()
        while (parts := self.outbox.get()) is not None:
            yield from to_wire_chunks(parts)

    def next(self):
        return self.received.get(timeout=WAIT_S)

    def stop(self) -> None:
        self.outbox.put(None)
        self.server.stop(0)


def test_a_task_with_a_bad_shape_gets_an_error_reply_and_the_site_process_serves_on(tmp_path):
    fed = PocFederation(tmp_path / "poc", ["site-0"], allowed_jobs=ENTRY_POINTS)
    fed.provision()
    server = FakeServer(fed.kits["server"])
    try:
        fed.start_site("site-0", server_address=f"127.0.0.1:{server.port}")
        hello = server.next()
        assert isinstance(hello, Hello) and hello.site_id == "site-0"
        job = JobRef("toyjob:make_job", "{}", 0, 3)
        bad = encode(Task("t-bad", "job-x", 0, TaskKind.EVALUATE, job=job,
                          weights=Weights({"w": np.zeros((0, 2), np.float32)})))
        server.outbox.put([_with_shape(bad, 0, [0, 2**40, 2**40])])
        refused = server.next()
        assert isinstance(refused, Reply) and refused.task_id == "t-bad"
        assert refused.error == (f"task refused: task 't-bad' from server 127.0.0.1:{server.port}"
                                 f": tensor 'w': bad shape: {TOO_BIG} (zero dimensions aside)")
        # the same process answers the next task as if nothing happened
        server.outbox.put(encode_parts(Task("t-good", "job-x", 0, TaskKind.EVALUATE, job=job,
                                            weights=Weights({"w": np.zeros((2, 3), np.float32),
                                                             "b": np.zeros(3, np.float32)}))))
        served = server.next()
        assert (served.task_id, served.error) == ("t-good", None)
        assert served.result == EvalResult(5, {"mse": 1.0})  # site-0: 10 samples, target 1
        assert fed.sites["site-0"].poll() is None
    finally:
        server.stop()
        fed.stop()
    log = (fed.log_dir / "site-0.log").read_text()
    assert "site site-0: refused a task t-bad: task 't-bad' from server" in log
    assert "Traceback" not in log


def _rogue_site(fed: PocFederation, name: str, done: threading.Event) -> None:
    """``name`` with its real certificate, answering its first task with a reply whose tensor
    has a zero dimension and huge others."""
    outbox: queue.Queue[bytes | None] = queue.Queue()
    outbox.put(encode(Hello(site_id=name)))

    def requests():
        while (message := outbox.get()) is not None:
            yield from to_wire_chunks([message])

    channel = secure_channel(fed.address, _tls(fed.kits[name]))
    connect = channel.stream_stream("/fedcare.v1.Federation/Connect")
    responses = connect(requests())
    reassembler = Reassembler(2**30)
    try:
        for raw in responses:
            data = reassembler.feed(raw)
            if data is None:
                continue
            task = decode(bytes(data))
            reply = encode(Reply(task.task_id, name, result=TrainResult(
                Weights({"e": np.zeros((0, 2), np.float32)}), 1)))
            outbox.put(_with_shape(reply, 0, [0, 2**40, 2**40]))
    except grpc.RpcError:
        pass  # the server closed this connection
    finally:
        outbox.put(None)
        channel.close()
        done.set()


def test_an_upload_with_a_bad_shape_is_refused_naming_the_site_and_the_tensor(tmp_path):
    fed = PocFederation(tmp_path / "poc", ["site-0", "site-1"], allowed_jobs=ENTRY_POINTS)
    fed.provision()
    fed.start_server()
    try:
        fed.start_site("site-0")
        done = threading.Event()
        threading.Thread(target=_rogue_site, args=(fed, "site-1", done), daemon=True).start()
        fed.wait_for_sites(2)
        admin = fed.admin()
        job_id = admin.Submit(pb.SubmitRequest(
            entry_point="toyjob:make_job",
            params_json='{"num_rounds": 1, "num_sites": 2, "min_sites": 1}'), timeout=30).job_id
        for update in admin.Watch(pb.JobRef(job_id=job_id), timeout=120):
            state = json.loads(update.json)
        assert done.wait(WAIT_S)  # the server closed the rogue's connection
        jobs = json.loads(admin.Status(pb.Empty(), timeout=10).json)["jobs"]
    finally:
        fed.stop()
    assert state["status"] == "finished", state
    failure = jobs[0]["failed_sites"]["site-1"]
    assert failure["message"].startswith(
        "site disconnected: protocol violation: reply 'job-")
    assert (f"from site site-1: tensor 'e': bad shape: {TOO_BIG} (zero dimensions aside)"
            in failure["message"])
    server_log = (fed.log_dir / "server.log").read_text()
    assert "site site-1: reply 'job-" in server_log and "closing its connection" in server_log
    assert "internal error" not in server_log and "Traceback" not in server_log


def test_a_sites_metrics_and_error_text_cannot_break_metrics_or_download(tmp_path):
    """site-2 reports 1000 metrics of 124-character names in every reply (130 KB; eight
    rounds of it once made the job's Metrics too big to send, and download with it); site-1
    fails with a 3 MB error whose newline would forge a log line."""
    fed = PocFederation(tmp_path / "poc", ["site-0", "site-1", "site-2"], allowed_jobs=ENTRY_POINTS)
    fed.provision()
    fed.start_server()
    try:
        fed.start_sites()
        fed.wait_for_sites(3)
        admin = fed.admin()
        job_id = admin.Submit(pb.SubmitRequest(entry_point="toyjob:make_job", params_json=(
            '{"num_rounds": 8, "min_sites": 1, '
            '"modes": {"site-1": "forged_error", "site-2": "many_metrics"}}')),
            timeout=30).job_id
        for update in admin.Watch(pb.JobRef(job_id=job_id), timeout=120):
            state = json.loads(update.json)
        assert state["status"] == "finished", state
        metrics = admin.Metrics(pb.JobRef(job_id=job_id), timeout=30).json
        out = subprocess.run(
            [sys.executable, "-m", "fedcare.cli", "admin", str(fed.kits["admin"]), "download",
             job_id, "--out", str(tmp_path), "--server", fed.address],
            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    finally:
        fed.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / f"{job_id}-metrics.json").read_text() == metrics
    rounds = json.loads(metrics)
    assert [r["round_num"] for r in rounds] == list(range(9))
    assert len(metrics) < 50_000  # nothing of site-2's metrics was stored
    assert all(sorted(r["site_eval"]) == ["site-0", "site-1"] for r in rounds)
    assert all(r["trained_sites"] == ["site-0"] for r in rounds[1:])
    by_site = {}
    for record in rounds:
        for failure in record["failures"]:
            by_site.setdefault(failure["site_id"], set()).add(failure["message"])
    assert by_site["site-2"] == {"reported 1000 metrics, at most 64 are taken",
                                 "reported 1001 metrics, at most 64 are taken"}
    (forged,) = by_site["site-1"]
    assert forged.startswith("train raised RuntimeError: disk full 2030-01-01T00:00:00.000Z "
                             "ERROR forged line xxx")
    assert len(forged) == 2000 and forged.endswith("x...")
    server_log = (fed.log_dir / "server.log").read_text()
    assert not any(line.startswith("2030-01-01") for line in server_log.splitlines())
    assert max(len(line) for line in server_log.splitlines()) < 3000
