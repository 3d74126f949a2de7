"""No code runs that its host did not allow; signed job packages: real processes on 127.0.0.1.

- the server refuses a job whose entry point its code policy does not allow (the attack of
  issue 11: ``os:system`` with a ``command``), runs nothing, and audits the refusal;
- a site refuses a job its own policy does not allow, and the admin sees the site and why;
- a job folder packed and signed with the admin's kit (``fedcare job pack``), submitted
  (``fedcare admin ... submit``), is stored by the server and fetched by each site, which runs
  it from its own verified copy if its policy names the signer; a site that does not is
  refused with the reason; an altered package is refused at submission.
"""

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from pocfed import ended, toy_federation

from fedcare.server.audit import read_chain
from fedcare.transport.codec import decode
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

SITES = ["site-0", "site-1", "site-2"]
FEDCARE = [sys.executable, "-m", "fedcare.cli"]
PKG_JOB = '''
import numpy as np

from fedcare import EvalResult, FedAvg, Job, TrainResult, Weights
from pkghelper import TARGET_STEP


class Trainer:
    def __init__(self, ctx, scale):
        self.target = (ctx.site_index + 1) * TARGET_STEP * scale

    def train(self, weights, config):
        return TrainResult(Weights({"w": np.full(4, self.target, np.float32)}), 10, {})

    def evaluate(self, weights, config):
        return EvalResult(10, {"mean": float(weights["w"].mean())})


def make_trainer(ctx, scale=1.0):
    return Trainer(ctx, scale)


def make_job(num_rounds=2, scale=1.0):
    return Job(name="packaged", initial_weights=lambda: Weights({"w": np.zeros(4, np.float32)}),
               trainer="pkgjob:make_trainer", trainer_params={"scale": scale},
               strategy=FedAvg(), num_rounds=num_rounds, min_sites=2, round_timeout_s=60,
               site_ids=("site-0", "site-1", "site-2"))
'''


def _trust_the_admin(fed):
    # The server's operator installed the toy jobs and trusts the admin's packages; so do
    # site-0 and site-1. site-2's operator allows nothing beyond fedcare's built-in jobs.
    for name in ("server", "site-0", "site-1"):
        fed.edit_kit(name, lambda c: c["code"].update(signers=["admin"]))
    fed.edit_kit("site-2", lambda c: c["code"].update(entry_points=[]))


@pytest.fixture()
def fed(tmp_path, monkeypatch):
    with toy_federation(tmp_path, monkeypatch, SITES, edit=_trust_the_admin) as fed:
        yield fed


def cli(*args, timeout=60):
    done = subprocess.run([*FEDCARE, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})
    return done.returncode, done.stdout + done.stderr


def audit(fed):
    entries, _ = read_chain(fed.kits["server"] / "workspace" / "audit.db")
    return [(e.actor, e.action, e.detail) for e in entries]


def test_the_server_runs_no_job_code_its_policy_does_not_allow(fed, tmp_path):
    marker = tmp_path / "pwned"
    code, out = cli("admin", fed.kits["admin"], "submit", "os:system", "--param",
                    f"command=touch {marker}", "--server", fed.address)
    assert code == 1
    assert ("this server's code policy refuses the job: entry point os:system is neither a "
            "built-in job nor in this policy's code.entry_points") in " ".join(out.split())
    assert not marker.exists()
    refused = [d for a, b, d in audit(fed) if (a, b) == ("admin", "refused:Submit")]
    assert len(refused) == 1 and "os:system" in refused[0], refused
    assert json.loads(fed.admin().Status(pb.Empty(), timeout=10).json)["jobs"] == []


def test_a_site_refuses_job_code_its_policy_does_not_allow(fed):
    code, out = cli("admin", fed.kits["admin"], "submit", "toyjob:make_job", "--param",
                    "num_rounds=2", "--param", "min_sites=2", "--server", fed.address)
    assert code == 0, out
    state = ended(fed, out.strip().splitlines()[-1])
    assert state["status"] == "finished", state
    reason = state["failed_sites"]["site-2"]["message"]
    assert "site policy refuses job" in reason
    assert "entry point toyjob:make_job is neither a built-in job" in reason
    assert sorted(state["failed_sites"]) == ["site-2"]
    assert "site policy refuses job" in (fed.log_dir / "site-2.log").read_text()


def test_a_signed_package_runs_where_its_signer_is_trusted(fed, tmp_path):
    folder = tmp_path / "my-job"
    folder.mkdir()
    (folder / "job.yaml").write_text("entry_point: pkgjob:make_job\n"
                                     "params: {num_rounds: 2, scale: 2.0}\n")
    (folder / "pkgjob.py").write_text(PKG_JOB)
    (folder / "pkghelper.py").write_text("TARGET_STEP = 1.5\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "junk.pyc").write_bytes(b"not packed")
    code, out = cli("job", "pack", folder, "--kit", fed.kits["admin"],
                    "-o", tmp_path / "my-job.fcjob")
    assert code == 0, out
    package_id = out.strip().splitlines()[-1]
    assert len(package_id) == 64
    code, out = cli("job", "inspect", tmp_path / "my-job.fcjob", "--kit", fed.kits["site-0"])
    assert code == 0 and f"package {package_id}" in out, out
    assert "admin (POC)" in out and "pkghelper.py" in out
    assert "junk.pyc" not in out

    code, out = cli("admin", fed.kits["admin"], "submit", tmp_path / "my-job.fcjob",
                    "--server", fed.address)
    assert code == 0, out
    job_id = out.strip().splitlines()[-1]
    state = ended(fed, job_id)
    assert state["status"] == "finished" and state["package"] == package_id, state
    # site-0 and site-1 ran the package (targets 1 * 1.5 * 2 and 2 * 1.5 * 2, equal weights).
    chunks = fed.admin().Download(pb.JobRef(job_id=job_id), timeout=30)
    weights = decode(b"".join(c.data for c in chunks)).result.weights
    np.testing.assert_allclose(weights["w"], (3.0 + 6.0) / 2)
    reason = state["failed_sites"]["site-2"]["message"]
    assert f"package {package_id[:12]} signed by admin is not allowed" in reason
    # Each trusting site runs its own verified copy; the job's code is nowhere else on disk.
    for site in ("site-0", "site-1"):
        copy = fed.kits[site] / "packages" / package_id
        assert (copy / "pkgjob.py").read_text() == PKG_JOB
    assert not (fed.kits["site-2"] / "packages" / package_id).exists()
    assert (fed.kits["server"] / "workspace" / "packages" / f"{package_id}.fcjob").is_file()

    # The package's helper altered after signing: refused at submission, nothing queued.
    altered = io.BytesIO()
    with zipfile.ZipFile(tmp_path / "my-job.fcjob") as old, zipfile.ZipFile(altered, "w") as new:
        for info in old.infolist():
            content = old.read(info)
            if info.filename == "files/pkghelper.py":
                content = b"TARGET_STEP = 100.0\n"
            new.writestr(info, content)
    (tmp_path / "altered.fcjob").write_bytes(altered.getvalue())
    code, out = cli("admin", fed.kits["admin"], "submit", tmp_path / "altered.fcjob",
                    "--server", fed.address)
    assert code == 1, out
    assert "package file pkghelper.py does not match its hash" in " ".join(out.split())
    assert len(json.loads(fed.admin().Status(pb.Empty(), timeout=10).json)["jobs"]) == 1
