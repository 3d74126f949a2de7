"""The hippocampus demo's bookkeeping: the baselines' budget, the table and the run folder."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("monai")

from fedcare.datasets.hippocampus import SITES
from fedcare.jobs import hippocampus_demo as demo
from fedcare.server.history import History, RoundRecord, SiteEval

pytestmark = pytest.mark.medical


def scores(value):
    return {s: {"dice_anterior": value, "dice_posterior": value + 0.1,
                "dice_mean": value + 0.05} for s in SITES}


def test_the_baselines_get_the_federations_budget():
    job = demo.job_of({"num_rounds": 4, "local_epochs": 3, "lr": 1e-3, "batch_size": 1})
    assert demo.Budget.of(job) == demo.Budget(epochs=12, lr=1e-3, batch_size=1)


def test_table_and_run_folder(tmp_path):
    history = History()
    history.append(RoundRecord(round_num=1, trained_sites=list(SITES), train_metrics={},
                               eval_metrics={}, site_eval={
        s: SiteEval(3, m) for s, m in scores(0.7).items()}))
    fedavg = demo.fedavg_scores(history)
    table = demo.table_of(scores(0.6), fedavg, scores(0.8))
    assert table["fedavg"]["mean"]["dice_mean"] == pytest.approx(0.75)
    assert table["pooled"]["hospital-b"]["dice_posterior"] == pytest.approx(0.9)
    json_path, csv_path = demo.write_summary(tmp_path, table, {"total_s": 1.0})
    assert json.loads(json_path.read_text())["total_s"] == 1.0
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("site,local_dice_anterior,")
    assert [line.split(",")[0] for line in lines[1:]] == [*SITES, "mean"]
    assert lines[-1].split(",")[6] == "0.7500"  # fedavg_dice_mean
