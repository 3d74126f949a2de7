"""Tamper-evident audit on a real federation of processes on 127.0.0.1 (issue 11 item 7).

The server's audit log holds every admin call (reads and downloads too), refusals, a failed
submit, job events and site connections with the verified identity; ``fedcare audit verify``
passes on it and names the entry once one row is edited. Each site's ledger lists what it
uploaded, with the BLAKE3 digest of the exact bytes sent.
"""

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import blake3
import grpc
import numpy as np
import pytest
from pocfed import toy_federation

from fedcare.core.errors import TransportError
from fedcare.core.message import Reply, TrainResult
from fedcare.core.weights import Weights
from fedcare.server.audit import read_chain
from fedcare.site.ledger import read_uploads
from fedcare.transport.codec import encode
from fedcare.transport.grpc import fedcare_pb2 as pb
from fedcare.transport.grpc.client import SiteConnection
from fedcare.transport.grpc.tls import TlsFiles

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fed(tmp_path, monkeypatch):
    with toy_federation(tmp_path, monkeypatch, ["site-0", "site-1"]) as federation:
        yield federation


def fedcare(*args):
    done = subprocess.run([sys.executable, "-m", "fedcare.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "250"})
    return done.returncode, done.stdout + done.stderr


def tls_of(kit):
    return TlsFiles((kit / "ca.crt").read_bytes(), (kit / "cert.crt").read_bytes(),
                    (kit / "key.pem").read_bytes())


def test_every_call_is_in_a_signed_chain_and_an_edit_is_named(fed):
    admin = fed.admin()
    with pytest.raises(grpc.RpcError) as refused_submit:  # a failed submit, with its reason
        admin.Submit(pb.SubmitRequest(entry_point="toyjob:make_job",
                                      params_json='{"num_rounds": 0}'), timeout=30)
    assert refused_submit.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    job_id = admin.Submit(pb.SubmitRequest(entry_point="toyjob:make_job",
                                           params_json='{"num_rounds": 2, "num_sites": 2}'),
                          timeout=30).job_id
    for update in admin.Watch(pb.JobRef(job_id=job_id), timeout=120):
        state = json.loads(update.json)
    assert state["status"] == "finished"
    admin.Status(pb.Empty(), timeout=10)
    admin.Metrics(pb.JobRef(job_id=job_id), timeout=10)
    assert list(admin.Download(pb.JobRef(job_id=job_id), timeout=30))
    with pytest.raises(grpc.RpcError) as refused_read:  # a site's certificate is no admin's
        fed.admin("site-0").Status(pb.Empty(), timeout=10)
    assert refused_read.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # an admin's certificate dialling in as a site is refused at the transport
    errors = []
    intruder = SiteConnection("admin", fed.address, tls_of(fed.kits["admin"]),
                              lambda task: None)
    runner = threading.Thread(target=lambda: _run(intruder, errors))
    runner.start()
    runner.join(30)
    assert errors and "not a site" in str(errors[0])
    fed.stop()  # a clean stop: the server signs the head, the sites close their ledgers

    server_kit = fed.kits["server"]
    entries, heads = read_chain(server_kit / "workspace" / "audit.db")
    seen = {(e.actor, e.role, e.action) for e in entries}
    for expected in [("admin", "project_admin", "Status"), ("admin", "project_admin", "Sites"),
                     ("admin", "project_admin", "Submit"), ("admin", "project_admin", "Watch"),
                     ("admin", "project_admin", "Metrics"),
                     ("admin", "project_admin", "Download"),
                     ("admin", "project_admin", "refused:Submit"),
                     ("site-0", "site", "refused:Status"),
                     ("admin", "project_admin", "site_refused"),
                     ("site-0", "site", "site_connected"), ("site-1", "site", "site_connected"),
                     ("site-0", "site", "site_disconnected"),
                     ("server", "server", "start"), ("server", "server", "finished"),
                     ("server", "server", "stop")]:
        assert expected in seen, expected
    detail = {e.action: e.detail for e in entries}
    assert "INVALID_ARGUMENT" in detail["refused:Submit"]
    assert "num_rounds must be >= 1" in detail["refused:Submit"]
    assert "site-0: role site may not status" in detail["refused:Status"]
    assert "not a site" in detail["site_refused"]
    assert detail["Download"] == job_id and detail["Submit"].startswith(job_id)
    assert heads[-1].seq == entries[-1].seq  # a clean stop leaves nothing unsigned

    code, output = fedcare("audit", "verify", server_kit)
    assert code == 0, output
    assert f"OK, {len(entries)} entries" in output and "TAMPERED" not in output
    download = next(e for e in entries if e.action == "Download")
    db = sqlite3.connect(server_kit / "workspace" / "audit.db")
    db.execute("UPDATE entries SET actor = 'someone-else' WHERE seq = ?", (download.seq,))
    db.commit()
    db.close()
    code, output = fedcare("audit", "verify", server_kit)
    assert code == 1, output
    assert "TAMPERED" in output
    assert f"entry {download.seq} edited: its content no longer matches its hash" in output
    code, output = fedcare("audit", "show", server_kit, "--limit", "500")
    assert code == 0 and "someone-else" in output and "refused:Submit" in output, output

    # site-0 can show what it sent: every reply, the hash of its exact bytes
    code, output = fedcare("site", "uploads", fed.kits["site-0"], "--verify")
    assert code == 0, output
    assert "OK" in output and job_id in output
    uploads = read_uploads(fed.kits["site-0"] / "uploads.db")
    kinds = [u.kind for u in uploads if u.job_id == job_id]
    assert kinds.count("train") == 2 and "prepare" in kinds and "evaluate" in kinds, kinds
    for upload in (u for u in uploads if u.kind == "train"):
        round_num = int(upload.task_id.split("/")[1][1:])
        # the toy's site-0 answers round r with every float 1.0, count r, 10 samples
        sent = Reply(upload.task_id, "site-0", result=TrainResult(Weights({
            "w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32),
            "count": np.asarray(np.int64(round_num))}), 10, {"loss": 1.0}))
        message = encode(sent)
        assert upload.blake3 == blake3.blake3(message).hexdigest(), upload
        assert upload.size_bytes == len(message)


def _run(connection, errors):
    try:
        connection.run(threading.Event())
    except TransportError as exc:
        errors.append(exc)
