"""A site cut off by a network outage of several minutes rejoins; the job is not aborted.

Server and four site processes on 127.0.0.1; one site dials through a relay that drops every
connection and refuses new ones for FEDCARE_OUTAGE_S seconds (default 180). The running round
waits for the site (min_sites = 4), the site reconnects on its own once the link is back, and
the job finishes with every round trained by all four sites.
"""

import json
import os
import time

import pytest
from netproxy import NetworkLink
from test_poc import HOSPITALS, job_state, submit, wait_for

from fedcare.cli.poc import PocFederation
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

OUTAGE_S = float(os.environ.get("FEDCARE_OUTAGE_S", "180"))


def connected(fed):
    return json.loads(fed.admin().Sites(pb.Empty(), timeout=10).json)["connected"]


@pytest.fixture()
def federation_with_a_fragile_link(tmp_path):
    fed = PocFederation(tmp_path / "poc", HOSPITALS)
    fed.provision()
    fed.start_server()
    port = int(fed.address.rsplit(":", 1)[1])
    link = NetworkLink(port)
    for name in HOSPITALS[:-1]:
        fed.start_site(name)
    fed.start_site(HOSPITALS[-1], server_address=link.address)
    fed.wait_for_sites(4)
    yield fed, link
    link.close()
    fed.stop()
    for proc in [fed.server, *fed.sites.values()]:
        assert proc.poll() is not None, f"pid {proc.pid} still running"


def test_site_rejoins_after_a_long_outage_and_the_job_finishes(federation_with_a_fragile_link):
    fed, link = federation_with_a_fragile_link
    job_id = submit(fed, {"num_rounds": 8, "min_sites": 4, "seed": 1})
    wait_for(fed, job_id, lambda s: s["round_num"] >= 2)
    link.cut()
    cut_at = time.monotonic()
    # the server sees the site go and the job waits instead of failing
    deadline = time.monotonic() + 30
    while HOSPITALS[-1] in connected(fed):
        assert time.monotonic() < deadline, "the server never noticed the outage"
        time.sleep(0.1)
    while time.monotonic() - cut_at < OUTAGE_S:
        state = job_state(fed, job_id)
        assert state["status"] == "running", state
        time.sleep(1.0)
    stalled_round = state["round_num"]
    assert stalled_round < 8
    link.restore()
    done = wait_for(fed, job_id, lambda s: s["status"] in ("finished", "failed"), timeout_s=120)
    assert done["status"] == "finished", done
    assert link.refused >= 1  # the site kept trying while the link was down
    rounds = json.loads(fed.admin().Metrics(pb.JobRef(job_id=job_id), timeout=10).json)
    assert [r["round_num"] for r in rounds] == list(range(9))
    for record in rounds[1:]:
        assert sorted(record["trained_sites"]) == sorted(HOSPITALS), record
    log = (fed.log_dir / "server.log").read_text()
    assert "waiting up to" in log and "sites connected again" in log
