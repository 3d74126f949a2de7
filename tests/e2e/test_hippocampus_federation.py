"""The hippocampus job over a real federation: a server and two site processes (mutual TLS),
one site reading the packaged partition, the other its own data folder from its kit, in which
one truncated volume is refused by name while the site trains on the rest."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("monai")

from pocfed import ended, submit_toy, toy_federation

from fedcare.datasets.hippocampus import SITES, site_split
from fedcare.jobs.hippocampus import ENTRY_POINT
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = [pytest.mark.slow, pytest.mark.medical]


def own_folder(tmp_path):
    """Five of hospital-b's cases and one truncated image, as a hospital's own folder."""
    folder = tmp_path / "st-mary-data"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    cases = [*site_split(SITES[1]).train[:4], *site_split(SITES[1]).test[:1]]
    for case in cases:
        shutil.copy(case.image, folder / "imagesTr" / case.image.name)
        shutil.copy(case.label, folder / "labelsTr" / case.label.name)
    broken = folder / "imagesTr" / "broken_001.nii.gz"
    data = cases[0].image.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    shutil.copy(cases[0].label, folder / "labelsTr" / "broken_001.nii.gz")
    return folder, broken


def test_one_round_over_real_processes_with_a_site_folder(tmp_path, monkeypatch):
    folder, broken = own_folder(tmp_path)
    split = site_split("st-mary", data_dir=folder)
    expected_test = sum(c.image != broken for c in split.test)
    sites = ["hospital-a", "st-mary"]

    def give_st_mary_its_folder(fed):
        fed.edit_kit("st-mary", lambda config: config.update(data_dir=str(folder)))

    with toy_federation(tmp_path, monkeypatch, sites, edit=give_st_mary_its_folder) as fed:
        job_id = submit_toy(fed, {"num_rounds": 1, "local_epochs": 1, "channels": [8, 16, 32],
                                  "site_ids": sites}, entry_point=ENTRY_POINT)
        state = ended(fed, job_id, timeout_s=300)
        assert state["status"] == "finished", state
        records = json.loads(fed.admin().Metrics(pb.JobRef(job_id=job_id), timeout=60).json)
        log = (fed.log_dir / "st-mary.log").read_text()
    last = records[-1]
    assert last["round_num"] == 1
    assert set(last["site_eval"]) == set(sites)
    assert last["site_eval"]["hospital-a"]["num_samples"] == 3
    assert last["site_eval"]["st-mary"]["num_samples"] == expected_test
    for evaluation in last["site_eval"].values():
        assert set(evaluation["metrics"]) == {"dice_anterior", "dice_posterior", "dice_mean"}
    assert str(broken) in log and "unreadable image volume" in log
