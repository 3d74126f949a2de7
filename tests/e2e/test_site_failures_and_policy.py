"""A real federation of processes on 127.0.0.1: a hospital's filter policy from its kit, and
site failures that reach the admin (status, watch, exit code) and the site's own log."""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from pocfed import job_state, submit_toy, toy_federation

from fedcare.transport.codec import decode
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

SITES = ["site-0", "site-1", "site-2"]


def _clip_at_site_1(fed):
    # site-1's IT officer writes its policy into the kit: updates leave clipped to norm 0.5
    fed.edit_kit("site-1", lambda config: config.update(
        policy={"outbound": [{"clip_update_norm": {"max_norm": 0.5}}]}))


@pytest.fixture()
def federation(tmp_path, monkeypatch):
    with toy_federation(tmp_path, monkeypatch, SITES, edit=_clip_at_site_1) as fed:
        yield fed


def watch(fed, job_id):
    """``fedcare admin KIT watch JOB`` as a user runs it: (exit code, output)."""
    done = subprocess.run(
        [sys.executable, "-m", "fedcare.cli", "admin", str(fed.kits["admin"]), "watch", job_id,
         "--server", fed.address], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"})
    return done.returncode, done.stdout + done.stderr


def test_the_kit_policy_clips_what_leaves_and_failures_reach_the_admin(federation):
    fed = federation
    job_id = submit_toy(fed, {"num_rounds": 1, "min_sites": 2, "modes": {"site-2": "raise"}})
    code, output = watch(fed, job_id)
    assert code == 0, output
    assert "site site-2 failed round 1 train: train raised RuntimeError: disk full" in output
    assert f"{job_id}: finished with 2 of 3 sites; site-2: round 1 train" in output

    state = job_state(fed, job_id)
    assert state["status"] == "finished"
    assert state["summary"].startswith("finished with 2 of 3 sites")
    assert state["failed_sites"]["site-2"]["count"] == 1
    assert state["failed_sites"]["site-2"]["kind"] == "train"
    # site-1 (target 2, 20 samples) moved every float entry by 2: an update of norm
    # sqrt(9 * 4) = 6, clipped by its own policy to 0.5, so its entries arrive as 2/12.
    chunks = fed.admin().Download(pb.JobRef(job_id=job_id), timeout=30)
    weights = decode(b"".join(c.data for c in chunks)).result.weights
    np.testing.assert_allclose(weights["w"], (10 * 1 + 20 * (2 / 12)) / 30, rtol=1e-6)
    # the site's own log has the whole traceback; the server got one line
    site_log = (fed.log_dir / "site-2.log").read_text()
    assert "Traceback (most recent call last)" in site_log
    assert "RuntimeError: disk full while reading images" in site_log
    # every log line says when, in UTC (ISO 8601), the site's and the server's alike
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    assert re.search(stamp + r"ERROR fedcare\.site\.agent: site site-2: train task", site_log,
                     re.MULTILINE), site_log
    server_log = (fed.log_dir / "server.log").read_text()
    assert re.search(stamp + r"ERROR fedcare\.server\.controller: job .* site site-2:",
                     server_log, re.MULTILINE), server_log

    failing = submit_toy(fed, {"num_rounds": 2, "min_sites": 3, "modes": {"site-2": "raise"}})
    code, output = watch(fed, failing)
    assert code == 1, output
    assert f"{failing}: failed" in output
    assert "train: only 2 valid result(s), min_sites=3" in output


def test_a_declared_site_that_never_connects_is_reported_while_the_job_waits(federation):
    fed = federation
    # site-3 is one of the job's sites but has no process: reported while the job waits
    job_id = submit_toy(fed, {"num_rounds": 1, "num_sites": 4, "site_wait_s": 6.0})
    deadline = time.monotonic() + 30
    seen = None
    while time.monotonic() < deadline:
        state = job_state(fed, job_id)
        if state["summary"] and "waiting" in state["summary"]:
            seen = state["summary"]
            break
        time.sleep(0.1)
    assert seen is not None and "missing site-3" in seen and "site_wait_s=6" in seen
    code, output = watch(fed, job_id)
    assert code == 0, output
    state = job_state(fed, job_id)
    assert state["summary"].startswith("finished with 3 of 4 sites; site-3: round 0 absent: "
                                       "not connected after waiting site_wait_s=6")
    assert state["failed_sites"]["site-3"]["kind"] == "absent"
