"""The built-in cohort statistics job on a real federation: two hospital processes, one with
a privacy.min_rows policy, then ``fedcare admin KIT stats JOB`` writes the table's files."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pocfed import ended, toy_federation

from fedcare.jobs.clinical_data import heart_table
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

SITES = ["cleveland", "switzerland"]


def test_cohort_job_of_a_real_federation_is_downloaded_with_suppression(tmp_path,
                                                                        monkeypatch):
    def policy(fed):  # switzerland: no cell of fewer than 20 rows leaves it
        fed.edit_kit("switzerland", lambda config: config.update(privacy={"min_rows": 20}))

    with toy_federation(tmp_path, monkeypatch, SITES, edit=policy) as fed:
        job_id = fed.admin().Submit(pb.SubmitRequest(
            entry_point="fedcare.jobs.clinical:cohort_job", params_json=json.dumps(
                {"dataset": "heart", "columns": ["age", "trestbps"], "group": "sex",
                 "sites": SITES})), timeout=30).job_id
        state = ended(fed, job_id, timeout_s=60)
        assert state["status"] == "finished", state
        done = subprocess.run([sys.executable, "-m", "fedcare.cli", "admin",
                               str(fed.kits["admin"]), "stats", job_id, "--out",
                               str(tmp_path / "out"), "--server", fed.address],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "COLUMNS": "150"})
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "out" / job_id
    assert {p.name for p in folder.iterdir()} >= {"cohort.json", "cohort.csv",
                                                  "cohort_age.png", "cohort_trestbps.png"}
    text = (folder / "cohort.csv").read_text().splitlines()
    rows = {(r["group"], r["column"], r["site"]): r for r in csv.DictReader(text)}
    tables = {s: heart_table(s) for s in SITES}
    # switzerland has 10 women: below its min_rows, so they are in no total
    assert (tables["switzerland"].column("sex") == 0).sum() == 10
    women = tables["cleveland"].column("age")[tables["cleveland"].column("sex") == 0]
    assert float(rows[("sex=0", "age", "all")]["count"]) == women.size
    assert float(rows[("sex=0", "age", "switzerland")]["count"]) == 0
    assert float(rows[("sex=0", "age", "all")]["mean"]) == pytest.approx(women.mean())
    men = np.concatenate([t.column("age")[t.column("sex") == 1] for t in tables.values()])
    assert float(rows[("sex=1", "age", "all")]["count"]) == men.size
    assert float(rows[("sex=1", "age", "all")]["sd"]) == pytest.approx(men.std(ddof=1))
