"""A real federation as separate processes on 127.0.0.1: server, sites and an admin.

Covers a site killed mid-round, and the server killed with SIGKILL mid-job and restarted: the
job resumes from its last completed round and ends with the same model as an uninterrupted run.
"""

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from fedcare.cli.poc import PocFederation
from fedcare.transport.codec import decode
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

HEART = "fedcare.jobs.heart:make_job"
HOSPITALS = ["cleveland", "hungary", "switzerland", "va"]


def submit(fed, params, entry_point=HEART):
    return fed.admin().Submit(pb.SubmitRequest(entry_point=entry_point,
                                               params_json=json.dumps(params)), timeout=30).job_id


def job_state(fed, job_id):
    jobs = json.loads(fed.admin().Status(pb.Empty(), timeout=10).json)["jobs"]
    return next(j for j in jobs if j["job_id"] == job_id)


def wait_for(fed, job_id, predicate, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = job_state(fed, job_id)
        if predicate(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"timed out; last state {state}")


def model(fed, job_id):
    chunks = fed.admin().Download(pb.JobRef(job_id=job_id), timeout=30)
    return decode(b"".join(c.data for c in chunks)).result.weights


@pytest.fixture()
def heart_federation(tmp_path):
    fed = PocFederation(tmp_path / "poc", HOSPITALS)
    fed.provision()
    fed.start_server()
    fed.start_sites()
    fed.wait_for_sites(4)
    yield fed
    fed.stop()
    for proc in [fed.server, *fed.sites.values()]:
        assert proc.poll() is not None, f"pid {proc.pid} still running"


def test_heart_job_across_processes_and_server_crash_resume(heart_federation):
    fed = heart_federation
    params = {"num_rounds": 30, "seed": 2}
    reference = submit(fed, params)
    done = wait_for(fed, reference, lambda s: s["status"] == "finished")
    assert done["round_num"] == 30
    expected = model(fed, reference)
    # the server ran the job's server half only: torch is loaded at the sites, not there
    assert "libtorch" not in Path(f"/proc/{fed.server.pid}/maps").read_text()
    assert "libtorch" in Path(f"/proc/{fed.sites['va'].pid}/maps").read_text()

    crashed = submit(fed, params)
    before = wait_for(fed, crashed, lambda s: s["round_num"] >= 3)
    fed.kill_server()
    assert before["status"] == "running"
    fed.start_server()  # same port; the sites reconnect by themselves
    fed.wait_for_sites(4)
    state = wait_for(fed, crashed, lambda s: s["status"] in ("finished", "failed"))
    assert state["status"] == "finished", state
    rounds = json.loads(fed.admin().Metrics(pb.JobRef(job_id=crashed)).json)
    assert [r["round_num"] for r in rounds] == list(range(31))  # no round lost
    db = sqlite3.connect(fed.kits["server"] / "workspace" / "audit.db")
    actions = [a for (a,) in db.execute("SELECT action FROM entries WHERE detail = ?",
                                        (crashed,))]
    db.close()
    assert actions.count("start") == 1 and actions.count("resume") == 1, actions
    resumed = model(fed, crashed)
    for name in expected:
        np.testing.assert_allclose(resumed[name], expected[name], atol=1e-6)
    final = rounds[-1]["site_eval"]
    assert sorted(final) == HOSPITALS
    assert np.mean([final[h]["metrics"]["accuracy"] for h in HOSPITALS]) > 0.7


def test_a_site_killed_mid_job_leaves_the_others_running_and_rejoins(heart_federation):
    fed = heart_federation
    job_id = submit(fed, {"num_rounds": 60, "seed": 0, "min_sites": 2})
    wait_for(fed, job_id, lambda s: s["round_num"] >= 2)
    os.kill(fed.sites["va"].pid, signal.SIGKILL)
    fed.sites["va"].wait()
    killed_at = job_state(fed, job_id)["round_num"]
    wait_for(fed, job_id, lambda s: s["round_num"] >= killed_at + 3)
    fed.start_site("va")  # the hospital's site comes back
    state = wait_for(fed, job_id, lambda s: s["status"] in ("finished", "failed"))
    assert state["status"] == "finished", state
    rounds = json.loads(fed.admin().Metrics(pb.JobRef(job_id=job_id)).json)
    assert "va" in rounds[1]["trained_sites"]
    without = [r for r in rounds[1:] if "va" not in r["trained_sites"]]
    assert len(without) >= 3  # rounds completed by the other three
    assert all(sorted(r["trained_sites"]) == ["cleveland", "hungary", "switzerland"]
               for r in without)
    assert "va" in rounds[-1]["trained_sites"]  # rejoined
    assert rounds[-1]["round_num"] == 60


def test_admin_commands(heart_federation, tmp_path):
    """The admin CLI as a coordinator uses it, against the running POC federation."""
    import subprocess
    import sys

    fed = heart_federation
    kit = str(fed.kits["admin"])

    def admin(*args):
        out = subprocess.run([sys.executable, "-m", "fedcare.cli", "admin", kit, *args,
                              "--server", fed.address], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "COLUMNS": "150"})
        return out.returncode, out.stdout + out.stderr

    code, out = admin("sites")
    assert code == 0 and "4 site(s) connected" in out
    code, out = admin("submit", HEART, "--param", "num_rounds=3")
    assert code == 0, out
    job_id = out.strip().splitlines()[-1]
    code, out = admin("watch", job_id)
    assert code == 0 and f"{job_id} finished round 3/3 accuracy=" in out
    code, out = admin("status")
    assert code == 0 and job_id in out and "finished" in out
    code, out = admin("download", job_id, "--out", str(tmp_path))
    assert code == 0, out
    with np.load(tmp_path / f"{job_id}-model.npz") as saved:
        assert saved["linear.weight"].shape == (1, 13)
    assert len(json.loads((tmp_path / f"{job_id}-metrics.json").read_text())) == 4
    code, out = admin("abort", "job-0000000000")
    assert code == 1 and "no job job-0000000000" in out and "Traceback" not in out
    code, out = admin("abort", "../jobs")  # not a job id: refused before anything is looked up
    assert code == 1 and "'../jobs' is not a job id" in out and "Traceback" not in out
    code, out = admin("submit", "fedcare.jobs.heart:make_job", "--param", "partition=weird")
    assert code == 1 and "job refused" in out and "partition must be one of" in out
