"""Crash-safe server state, on real processes on 127.0.0.1 (server, three toy sites, an admin).

One server per workspace and per port; a disk that fills up mid-job fails that job and the
server goes on once there is room; a damaged database stops the server at start with what to
do; a damaged or foreign checkpoint is refused and the job resumes from the one before it.
"""

import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from pocfed import job_state, submit_toy, toy_federation, until

from fedcare.server.audit import read_chain
from fedcare.transport.codec import decode
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

SITES = ["site-0", "site-1", "site-2"]


@pytest.fixture()
def fed(tmp_path, monkeypatch):
    with toy_federation(tmp_path, monkeypatch, SITES, start_sites=False) as fed:
        yield fed


def with_sites(fed):
    fed.start_sites()
    fed.wait_for_sites(len(SITES))
    return fed


def wait_for(fed, job_id, predicate, timeout_s=120):
    def met():
        state = job_state(fed, job_id)
        return state if predicate(state) else None

    return until(met, timeout_s, f"job {job_id}", every_s=0.02)


def workspace(fed):
    return fed.kits["server"] / "workspace"


def refused_start(kit, port):
    """``fedcare server start`` that must exit at once: (exit code, its output)."""
    proc = subprocess.Popen([sys.executable, "-m", "fedcare.cli", "server", "start", str(kit),
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the second server kept running: {out}") from None
    return proc.returncode, out


def test_one_server_per_workspace_and_per_port(fed):
    port = int(fed.address.rsplit(":", 1)[1])
    ws = workspace(fed)
    code, out = refused_start(fed.kits["server"], port)
    assert code == 1, out
    assert (f"error: workspace {ws} is in use by another server (pid {fed.server.pid}, lock "
            f"{ws / 'server.lock'}); stop that server first") in out
    # the same kit copied elsewhere (its own workspace), on the same port: the port refuses
    other = fed.workdir / "other-server"
    shutil.copytree(fed.kits["server"], other, ignore=shutil.ignore_patterns("workspace"))
    code, out = refused_start(other, port)
    assert code == 1, out
    assert f"error: cannot listen on 127.0.0.1:{port}: the address is in use" in out
    assert "Traceback" not in out
    with_sites(fed)  # the first server is untouched and works
    job_id = submit_toy(fed, {"num_rounds": 2})
    assert wait_for(fed, job_id, lambda s: s["status"] != "running"
                    and s["status"] != "queued")["status"] == "finished"


def test_a_full_disk_fails_the_running_job_and_the_server_goes_on_once_there_is_room(fed):
    with_sites(fed)
    job_id = submit_toy(fed, {"num_rounds": 100000})
    wait_for(fed, job_id, lambda s: s["round_num"] >= 3)
    pid = fed.server.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    # The server's disk is full: every write to any of its files fails (EFBIG, as ENOSPC).
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
    try:
        deadline = time.monotonic() + 60
        while True:  # new jobs are refused, with the reason, once the runner knows it
            with pytest.raises(grpc.RpcError) as info:
                submit_toy(fed, {"num_rounds": 1})
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert info.value.details().startswith("job refused: ")
            if "the server cannot run jobs now" in info.value.details():
                break
            assert time.monotonic() < deadline, info.value.details()
            time.sleep(0.1)
        refusal = info.value.details()
        # Reads are refused too: nothing is served that cannot be audited.
        with pytest.raises(grpc.RpcError) as read:
            job_state(fed, job_id)
        assert read.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "the audit log cannot be written" in read.value.details()
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))  # room again
    assert "server database" in refusal or "cannot write checkpoint" in refusal, refusal
    failed = wait_for(fed, job_id, lambda s: s["status"] != "running", timeout_s=60)
    assert failed["status"] == "failed", failed
    # whichever of its files the job wrote first: its checkpoint, metrics or records
    assert re.fullmatch(f"job {job_id} round \\d+: cannot write .*: File too large|"
                        "server database .*: disk I/O error", failed["error"]), failed
    after = submit_toy(fed, {"num_rounds": 2})
    done = wait_for(fed, after, lambda s: s["status"] not in ("queued", "running"))
    assert done["status"] == "finished", done
    assert fed.server.poll() is None
    log = (fed.log_dir / "server.log").read_text()
    assert f"job {job_id}: recorded as failed now that the database works again" in log
    assert "job runner: the server database works again; running jobs" in log


def test_a_damaged_database_stops_the_server_at_start_saying_what_to_do(fed):
    with_sites(fed)
    for _ in range(3):
        job_id = submit_toy(fed, {"num_rounds": 1})
        wait_for(fed, job_id, lambda s: s["status"] == "finished")
    fed.stop()
    path = workspace(fed) / "server.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'rounds'").fetchone()[0]
    db.close()
    with open(path, "r+b") as fh:  # one page gone bad (the round records')
        fh.seek((root - 1) * page_size)
        fh.write(os.urandom(page_size))
    code, out = refused_start(fed.kits["server"], fed.address.rsplit(":", 1)[1])
    assert code == 1, out
    assert f"error: the server database {path} is damaged: " in out
    assert "Restore server.db from a backup, or move it aside with its -wal and -shm" in out
    assert "Traceback" not in out
    # moved aside as told: the server starts, with no jobs
    path.rename(path.with_name("server.db.damaged"))
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    fed.start_server()
    assert json.loads(fed.admin().Status(pb.Empty(), timeout=10).json)["jobs"] == []


def model(fed, job_id):
    chunks = fed.admin().Download(pb.JobRef(job_id=job_id), timeout=30)
    return decode(b"".join(c.data for c in chunks)).result.weights


def crash(fed, job_id, after_round):
    """kill -9 the server once the job is past ``after_round``; the job's last recorded round
    and its checkpoint folder."""
    wait_for(fed, job_id, lambda s: s["round_num"] >= after_round)
    os.kill(fed.server.pid, signal.SIGKILL)
    fed.server.wait()
    db = sqlite3.connect(workspace(fed) / "server.db")
    (last,) = db.execute("SELECT MAX(round_num) FROM rounds WHERE job_id = ?",
                         (job_id,)).fetchone()
    db.close()
    return last, workspace(fed) / "jobs" / job_id / "checkpoints"


def test_a_bad_or_foreign_checkpoint_falls_back_to_the_last_good_one(fed):
    with_sites(fed)
    rounds = 60
    params = {"num_rounds": rounds, "evaluate_every": 1}
    reference = submit_toy(fed, params)
    wait_for(fed, reference, lambda s: s["status"] == "finished")
    expected = model(fed, reference)

    job_id = submit_toy(fed, params)
    # 1. the newest recorded checkpoint cut short (a disk that lost its tail)
    last, folder = crash(fed, job_id, after_round=5)
    newest = folder / f"global-round{last:04d}.npz"
    newest.write_bytes(newest.read_bytes()[:100])
    fed.start_server()
    fed.wait_for_sites(3)
    wait_for(fed, job_id, lambda s: s["round_num"] >= last + 5)
    log = (fed.log_dir / "server.log").read_text()
    assert f"checkpoint {newest} is not usable: 100 bytes, the manifest says" in log
    assert (f"job {job_id}: no good checkpoint of its last recorded round {last}; resuming "
            f"from round {last - 1}, and round {last} runs again") in log

    # 2. another job's valid checkpoint of the same round copied in, manifest and all
    last, folder = crash(fed, job_id, after_round=last + 5)
    theirs = workspace(fed) / "jobs" / reference / "checkpoints"
    (folder / f"global-round{last:04d}.npz").unlink()
    (folder / f"checkpoint-round{last:04d}.json").unlink()
    for name in (f"global-round{rounds:04d}.npz", f"checkpoint-round{rounds:04d}.json"):
        shutil.copy(theirs / name, folder / name.replace(f"{rounds:04d}", f"{last:04d}"))
    fed.start_server()
    fed.wait_for_sites(3)
    done = wait_for(fed, job_id, lambda s: s["status"] not in ("queued", "running"))
    assert done["status"] == "finished", done
    log = (fed.log_dir / "server.log").read_text()
    assert (f"checkpoint {folder / f'checkpoint-round{last:04d}.json'} is not usable: it "
            f"belongs to job '{reference}', not '{job_id}'") in log
    assert f"resuming from round {last - 1}, and round {last} runs again" in log

    # every round recorded once, in order; the model is the uninterrupted run's, bit for bit
    records = json.loads(fed.admin().Metrics(pb.JobRef(job_id=job_id), timeout=10).json)
    assert [r["round_num"] for r in records] == list(range(rounds + 1))
    resumed = model(fed, job_id)
    assert resumed["count"] == rounds  # each round trained exactly once on the way
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name])
    entries, _ = read_chain(workspace(fed) / "audit.db")
    actions = [e.action for e in entries if e.detail.startswith(job_id)]
    assert actions.count("fallback") == 2 and actions.count("resume") == 2, actions
