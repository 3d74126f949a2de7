"""Revocation that holds, and sites that ride out server restarts: real processes on 127.0.0.1.

- revoking a site closes its live stream within seconds, drops it from the running job and
  ends its process with a non-zero status saying why; the job goes on with the others;
- a missing, or forged, revocation list refuses everyone instead of accepting everyone;
- a planned server stop (SIGTERM) leaves the site processes running; they log why the stream
  ended, reconnect when the server is back, and serve the next job;
- a second process started with a site's kit is refused at once (exit status, reason), and a
  copy of the kit used elsewhere is refused by the server while the first process is connected.
"""

import json
import shutil
import signal
import subprocess
import sys
import time

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from pocfed import ended, job_state, submit_toy, toy_federation, until

from fedcare.provision import pki
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

SITES = ["site-0", "site-1", "site-2"]
FEDCARE = [sys.executable, "-m", "fedcare.cli"]


@pytest.fixture()
def fed(tmp_path, monkeypatch):
    with toy_federation(tmp_path, monkeypatch, SITES) as fed:
        yield fed


def log_of(fed, name):
    return (fed.log_dir / f"{name}.log").read_text()


def test_revoking_a_connected_site_drops_it_from_the_running_job(fed):
    job_id = submit_toy(fed, {"num_rounds": 400, "min_sites": 2, "train_delay_s": 0.02})
    until(lambda: job_state(fed, job_id)["round_num"] >= 3, what="round 3")
    revoke = subprocess.run([*FEDCARE, "provision", "revoke", str(fed.kits["server"].parent),
                             "site-2"], capture_output=True, text=True, timeout=60)
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr
    # The site's live stream is closed within seconds; its process ends, non-zero, saying why.
    site = fed.sites["site-2"]
    assert site.wait(timeout=30) != 0
    assert "revoked" in log_of(fed, "site-2")
    assert "site-2 is no longer authorised" in log_of(fed, "server")
    assert until(lambda: sorted(json.loads(fed.admin().Sites(pb.Empty(), timeout=10).json)[
        "connected"]) == ["site-0", "site-1"], what="site-2 gone")
    gone_at = job_state(fed, job_id)["round_num"]
    until(lambda: job_state(fed, job_id)["round_num"] >= gone_at + 10, what="10 more rounds")
    fed.admin().Abort(pb.JobRef(job_id=job_id), timeout=10)
    rounds = json.loads(fed.admin().Metrics(pb.JobRef(job_id=job_id), timeout=30).json)
    trained = [sorted(r["trained_sites"]) for r in rounds[1:]]
    assert trained[0] == SITES
    # From the round it was dropped in, site-2 takes part in no round; the others go on.
    dropped = next(i for i, sites in enumerate(trained) if "site-2" not in sites)
    assert dropped <= gone_at
    assert all(sites == ["site-0", "site-1"] for sites in trained[dropped:])
    assert len(trained) - dropped >= 10
    # It cannot come back.
    fed.start_site("site-2")
    assert fed.sites["site-2"].wait(timeout=30) != 0


def test_a_missing_or_forged_revocation_list_admits_nobody_new(fed):
    crl = fed.kits["server"] / "crl.pem"
    good = crl.read_bytes()
    fed.sites["site-2"].send_signal(signal.SIGTERM)
    assert fed.sites["site-2"].wait(timeout=30) == 0
    crl.unlink()  # e.g. half-way through being replaced by hand
    with pytest.raises(grpc.RpcError) as refused:
        fed.admin().Status(pb.Empty(), timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "cannot check certificates against its revocation list" in refused.value.details()
    fed.start_site("site-2")  # refused as something to retry: the site keeps trying
    until(lambda: log_of(fed, "site-2").count("revocation list now; retry later") >= 2,
          what="site-2 refused twice")
    assert fed.sites["site-2"].poll() is None
    # A CRL signed by some other CA (listing nobody) is no better than none.
    ca_key, ca_cert = pki.make_ca("intruder", 30)
    crl.write_bytes(pki.make_crl(ca_key, ca_cert, [], 1).public_bytes(
        serialization.Encoding.PEM))
    with pytest.raises(grpc.RpcError) as refused:
        fed.admin().Status(pb.Empty(), timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    server_log = log_of(fed, "server")
    assert "is unavailable" in server_log and "not signed by the federation's CA" in server_log
    # Meanwhile the sites admitted before stay: a CRL being replaced must not stop every
    # hospital (they are checked again once it can be read).
    assert all(fed.sites[name].poll() is None for name in ("site-0", "site-1"))
    assert "no longer authorised" not in server_log

    crl.write_bytes(good)  # restored: site-2 gets in by itself
    until(lambda: sorted(json.loads(fed.admin().Sites(pb.Empty(), timeout=10).json)[
        "connected"]) == SITES, timeout_s=60, what="all three sites")


def test_a_server_with_a_missing_revocation_list_does_not_start(fed):
    fed.stop()
    (fed.kits["server"] / "crl.pem").unlink()
    done = subprocess.run([*FEDCARE, "server", "start", str(fed.kits["server"]), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "crl.pem is missing" in done.stdout + done.stderr


def test_sites_ride_out_a_planned_server_restart(fed):
    fed.server.send_signal(signal.SIGTERM)
    assert fed.server.wait(timeout=30) == 0
    for name in SITES:
        until(lambda n=name: "server shutting down" in log_of(fed, n), what=f"{name}'s log")
        assert "reconnecting in" in log_of(fed, name)
    time.sleep(1.0)  # the sites keep trying meanwhile
    assert all(proc.poll() is None for proc in fed.sites.values())
    fed.start_server()  # same port
    fed.wait_for_sites(3)
    job_id = submit_toy(fed, {"num_rounds": 2})
    state = ended(fed, job_id)
    assert state["status"] == "finished" and state["round_num"] == 2, state


def test_a_second_process_with_one_site_kit_is_refused(fed, tmp_path):
    kit = fed.kits["site-1"]
    second = subprocess.run([*FEDCARE, "site", "start", str(kit), "--server", fed.address],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    pid = fed.sites["site-1"].pid
    assert f"is in use by another process (pid {pid}" in second.stdout + second.stderr

    # The same kit copied to another place (another machine): the server refuses it while
    # the first process is connected, and the first keeps serving.
    copy = tmp_path / "copied-kit"
    shutil.copytree(kit, copy)
    (copy / "site.lock").unlink()
    with open(tmp_path / "copy.log", "w") as log:
        clone = subprocess.Popen([*FEDCARE, "site", "start", str(copy), "--server", fed.address],
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        until(lambda: "already connected from another process" in (
            tmp_path / "copy.log").read_text(), what="the copy refused")
        job_id = submit_toy(fed, {"num_rounds": 2})
        state = ended(fed, job_id)
        assert state["status"] == "finished" and not state["failed_sites"], state
        assert "site-1 reconnected" not in log_of(fed, "server")
    finally:
        clone.send_signal(signal.SIGTERM)
        clone.wait(timeout=10)
