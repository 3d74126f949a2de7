"""What the e2e tests of a real federation (processes on 127.0.0.1, toy jobs) share."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from toyjob import ENTRY_POINTS

from fedcare.cli.poc import PocFederation
from fedcare.transport.grpc import fedcare_pb2 as pb

TESTS = Path(__file__).resolve().parent


@contextlib.contextmanager
def toy_federation(tmp_path, monkeypatch, sites, *, edit=None, start_sites=True, **options):
    """A provisioned POC federation whose kits list the toy jobs (``ENTRY_POINTS``); ``edit``
    changes the kits (``edit(fed)``) before anything starts. Stops every process it started,
    and checks that each one is gone."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))  # toyjob, for everyone
    fed = PocFederation(tmp_path / "poc", list(sites), allowed_jobs=ENTRY_POINTS, **options)
    fed.provision()
    if edit is not None:
        edit(fed)
    fed.start_server()
    try:
        if start_sites:
            fed.start_sites()
            fed.wait_for_sites(len(sites))
        yield fed
    finally:
        fed.stop()
    for proc in [fed.server, *fed.sites.values()]:
        assert proc.poll() is not None, f"pid {proc.pid} still running"


def submit_toy(fed, params, entry_point="toyjob:make_job"):
    """Submit a toy job as the project admin; its id."""
    return fed.admin().Submit(pb.SubmitRequest(entry_point=entry_point,
                                               params_json=json.dumps(params)),
                              timeout=30).job_id


def job_state(fed, job_id):
    """The job's status document, as ``admin status`` shows it to the project admin."""
    jobs = json.loads(fed.admin().Status(pb.Empty(), timeout=10).json)["jobs"]
    return next(j for j in jobs if j["job_id"] == job_id)


def until(predicate, timeout_s=60.0, what="condition", every_s=0.05):
    """Poll ``predicate`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def ended(fed, job_id, timeout_s=120.0):
    """The job's status document once it is no longer queued or running."""
    return until(lambda: (s := job_state(fed, job_id))["status"] not in ("queued", "running")
                 and s, timeout_s, f"job {job_id} to end")
