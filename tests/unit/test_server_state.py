"""The server's own state: one server per workspace, a checked database, a job runner that
outlives a failing disk or database, and resuming from the last good checkpoint."""

import os
import sqlite3
import threading
import time

import pytest
import toyjob
from certs import ThrowawayCA

from fedcare.core.errors import StorageError, TransportError
from fedcare.server import service as service_module
from fedcare.server.checkpoint import Checkpointer
from fedcare.server.lock import WorkspaceLock
from fedcare.server.service import FederationServer
from fedcare.server.store import Store
from fedcare.site.runtime import SiteRuntime
from fedcare.transport.memory import MemoryTransport


def test_one_lock_per_workspace_naming_the_holder(tmp_path):
    held = WorkspaceLock(tmp_path / "ws")
    with pytest.raises(StorageError) as info:
        WorkspaceLock(tmp_path / "ws")
    assert str(info.value) == (
        f"workspace {tmp_path / 'ws'} is in use by another server (pid {os.getpid()}, lock "
        f"{tmp_path / 'ws' / 'server.lock'}); stop that server first, or give this one its own "
        "workspace")
    held.release()
    WorkspaceLock(tmp_path / "ws").release()  # free again


def test_a_second_server_on_a_workspace_is_refused_and_holds_nothing(tmp_path):
    tls, _ = ThrowawayCA().issue("server", "server")
    first = FederationServer(tls, tmp_path / "ws")
    try:
        with pytest.raises(StorageError, match="is in use by another server"):
            FederationServer(tls, tmp_path / "ws")
        # another workspace, the first one's port: refused, and its workspace left free
        with pytest.raises(TransportError, match=f"cannot listen on 127.0.0.1:{first.port}: "
                                                 "the address is in use"):
            FederationServer(tls, tmp_path / "other", port=first.port)
        WorkspaceLock(tmp_path / "other").release()
    finally:
        first.stop()
    FederationServer(tls, tmp_path / "ws").stop()  # stopped, the first lets the workspace go


def _database_with_jobs(path):
    store = Store(path)
    for i in range(50):
        store.add_job("toyjob:make_job", {"i": i, "pad": "x" * 200}, "alice", 3)
    store.close()
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
    db.close()
    return page_size, root


def test_a_database_with_a_bad_page_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "server.db"
    page_size, root = _database_with_jobs(path)
    with open(path, "r+b") as fh:  # one page of the jobs table overwritten
        fh.seek((root - 1) * page_size)
        fh.write(b"\xa5" * page_size)
    with pytest.raises(StorageError) as info:
        Store(path)
    message = str(info.value)
    assert message.startswith(f"the server database {path} is damaged: ")
    assert (f"Restore server.db from a backup, or move it aside with its -wal and -shm files "
            f"(the server then starts with no jobs); the checkpoints in {tmp_path / 'jobs'} "
            "stay where they are") in message


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "server.db"
    _database_with_jobs(path)
    with open(path, "r+b") as fh:
        fh.write(b"\x00" * 100)  # the header
    with pytest.raises(StorageError, match="is damaged: file is not a database"):
        Store(path)


def test_discarding_rounds_after_one(tmp_path):
    store = Store(tmp_path / "server.db")
    job_id = store.add_job("toyjob:make_job", {}, "alice", 5)
    for r in range(5):
        store.add_round(job_id, r, {"round_num": r})
    store.discard_rounds_after(job_id, 2)
    assert [r["round_num"] for r in store.rounds(job_id)] == [0, 1, 2]
    assert store.job(job_id).round_num == 2
    store.close()


@pytest.fixture()
def server(tmp_path):
    tls, _ = ThrowawayCA().issue("server", "server")
    server = FederationServer(tls, tmp_path / "ws", connect_timeout_s=5, code=toyjob.TOY_CODE)
    server.start()  # jobs run over sites in memory
    grpc_transport, server.transport = server.transport, MemoryTransport(
        {f"site-{i}": SiteRuntime(f"site-{i}", code=toyjob.TOY_CODE).handle for i in range(3)})
    grpc_transport.close()
    yield server
    server.stop()


def _until(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_full_database_fails_the_job_and_the_runner_goes_on_once_it_has_room(
        server, monkeypatch):
    monkeypatch.setattr(service_module, "MAX_RETRY_S", 0.2)
    full = threading.Event()
    write = server.store._write

    def maybe_full(*args):
        if full.is_set():
            raise StorageError(f"server database {server.store.path}: database or disk is full")
        return write(*args)

    monkeypatch.setattr(server.store, "_write", maybe_full)
    job_id = server.submit("toyjob:make_job", {"num_rounds": 100000}, "alice")
    _until(lambda: server.store.job(job_id).round_num >= 2)
    full.set()
    _until(lambda: server.runner_problem is not None)
    assert "database or disk is full" in server.runner_problem
    # the job's end could not be recorded: no other job starts, and none is accepted
    assert server.store.job(job_id).status == "running"
    with pytest.raises(StorageError, match=r"the server cannot run jobs now: .* disk is full"):
        server.submit("toyjob:make_job", {"num_rounds": 1}, "alice")
    full.clear()
    _until(lambda: server.store.job(job_id).status == "failed")
    assert "database or disk is full" in server.store.job(job_id).error
    _until(lambda: server.runner_problem is None)
    after = server.submit("toyjob:make_job", {"num_rounds": 1}, "alice")
    _until(lambda: server.store.job(after).status == "finished")
    assert server._runner.is_alive()


def test_a_checkpoint_that_cannot_be_written_fails_its_job_only(server, monkeypatch):
    from fedcare.server import checkpoint

    def no_space(fh, arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_npz", no_space)
    failing = server.submit("toyjob:make_job", {"num_rounds": 2}, "alice")
    _until(lambda: server.store.job(failing).status == "failed")
    error = server.store.job(failing).error
    assert error.startswith(f"job {failing} round 0: cannot write checkpoint ")
    assert error.endswith("global-round0000.npz: No space left on device")
    monkeypatch.undo()
    good = server.submit("toyjob:make_job", {"num_rounds": 1}, "alice")
    _until(lambda: server.store.job(good).status == "finished")


def test_a_resumed_job_falls_back_to_its_last_good_checkpoint(tmp_path, caplog):
    server = FederationServer(ThrowawayCA().issue("server", "server")[0], tmp_path / "ws",
                              code=toyjob.TOY_CODE)
    try:  # the runner is not started: the test plays it
        _falls_back(server, caplog)
    finally:
        server.stop()


def _falls_back(server, caplog):
    job_id = server.submit("toyjob:make_job", {"num_rounds": 4}, "alice")
    checkpoints = Checkpointer(server.workspace / "jobs" / job_id / "checkpoints", keep=3,
                               job_id=job_id)
    for r in range(4):  # as a server killed after round 3 (round 4's record never written)
        checkpoints.save(r, toyjob.initial(), {})
        if r < 3:
            server.store.add_round(job_id, r, {"round_num": r, "trained_sites": [],
                                               "train_metrics": {}, "eval_metrics": {},
                                               "site_eval": {}, "failures": [],
                                               "duration_s": 0.0})
    server.store.set_status(job_id, "running")
    (checkpoints.directory / "global-round0002.npz").write_bytes(b"PK\x03\x04 cut")
    resume = server._resume_point(server.store.job(job_id), checkpoints)
    assert resume.round_num == 1 and [r.round_num for r in resume.records] == [0, 1]
    assert [r["round_num"] for r in server.store.rounds(job_id)] == [0, 1]
    assert checkpoints.rounds() == [1]  # round 2 and the unrecorded round 3 are gone
    warnings = [r.getMessage() for r in caplog.records]
    assert any("global-round0002.npz is not usable" in w for w in warnings)
    assert any(f"job {job_id}: no good checkpoint of its last recorded round 2; resuming "
               "from round 1, and round 2 runs again" in w for w in warnings)
