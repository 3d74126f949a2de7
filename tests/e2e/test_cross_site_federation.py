"""Cross-site validation on a real federation: the heart job on four hospital processes, then
``fedcare admin KIT cross-site JOB`` writes the matrix, for the project admin and a site admin."""

import csv
import json
import os
import subprocess
import sys

import grpc
import matplotlib.image
import pytest
from pocfed import ended

from fedcare.cli.poc import PocFederation
from fedcare.core.cross_site import GLOBAL, CrossSiteMatrix, local_model
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

HOSPITALS = ["cleveland", "hungary", "switzerland", "va"]
#: va's privacy policy: everything the heart job asks but its local model
VA_KINDS = ["train", "evaluate", "statistics", "initial_model", "validate"]


def test_the_admin_command_writes_the_matrix_of_a_real_federation(tmp_path):
    fed = PocFederation(tmp_path / "poc", HOSPITALS,
                        admins=[{"name": "vera", "role": "site_admin", "site": "va"}])
    fed.provision()
    fed.edit_kit("va", lambda config: config.update(privacy={"task_kinds": VA_KINDS}))

    def admin(kit, *args):
        done = subprocess.run([sys.executable, "-m", "fedcare.cli", "admin", str(fed.kits[kit]),
                               *args, "--server", fed.address], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "COLUMNS": "150"})
        return done.returncode, done.stdout + done.stderr

    try:
        fed.start_server()
        fed.start_sites()
        fed.wait_for_sites(4)
        job_id = fed.admin().Submit(pb.SubmitRequest(
            entry_point="fedcare.jobs.heart:make_job",
            params_json=json.dumps({"num_rounds": 5, "cross_site": True})), timeout=30).job_id
        state = ended(fed, job_id, timeout_s=60)
        assert state["status"] == "finished", state

        code, out = admin("admin", "cross-site", job_id, "--out", str(tmp_path / "all"))
        assert code == 0, out
        assert "cross-site validation after round 5, accuracy" in out and "n/a [1]" in out
        assert "[1] no local model from va: submit_model raised PrivacyError" in out
        matrix = CrossSiteMatrix.from_dict(json.loads((tmp_path / "all" / "cross_site.json")
                                                      .read_text()))
        assert matrix.sites == tuple(HOSPITALS)
        assert matrix.models == (GLOBAL, *map(local_model, HOSPITALS))
        for model in matrix.models:
            for site in HOSPITALS:
                cell = matrix.cell(model, site)
                assert cell.empty == (model == "local:va"), (model, site, cell)
                assert cell.empty or 0.4 <= cell.metrics["accuracy"] <= 1.0
        with (tmp_path / "all" / "cross_site.csv").open() as rows:
            assert len(list(csv.DictReader(rows))) == 5 * 4
        assert matrix.to_dict() == json.loads(fed.admin().Result(
            pb.ResultRef(job_id=job_id, name="cross_site"), timeout=10).json)
        assert matplotlib.image.imread(tmp_path / "all" / "cross_site.png").ndim == 3

        code, out = admin("vera", "cross-site", job_id, "--out", str(tmp_path / "va"),
                          "--metric", "loss")
        assert code == 0, out
        own = CrossSiteMatrix.from_dict(json.loads((tmp_path / "va" / "cross_site.json")
                                                   .read_text()))
        assert own.sites == ("va",) and own.models == (GLOBAL, "local:va")
        assert own.value(GLOBAL, "va", "loss") == matrix.value(GLOBAL, "va", "loss")
        assert "cleveland" not in out and "hungary" not in out

        with pytest.raises(grpc.RpcError) as refused:
            fed.admin().Result(pb.ResultRef(job_id=job_id, name="../../x"), timeout=10)
        assert "'../../x' is not a result name" in refused.value.details()
        code, out = admin("admin", "cross-site", job_id, "--metric", "dice_mean")
        assert code == 1 and "no metric 'dice_mean'" in out and "Traceback" not in out
    finally:
        fed.stop()
    for proc in [fed.server, *fed.sites.values()]:
        assert proc.poll() is not None, f"pid {proc.pid} still running"
