"""The MedMNIST benchmark's plumbing, on a budget far too small to learn anything."""

import json

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("monai")  # fedcare.medical imports MONAI (the medical extra)

from fedcare.cli.main import app
from fedcare.jobs.medmnist_bench import Settings, run_benchmark, table

pytestmark = pytest.mark.medical
TINY = Settings(sites=2, rounds=1, width=4, batch_size=128, device="cpu")


def test_every_arm_is_scored_on_the_official_test_split():
    threads = torch.get_num_threads()
    report = run_benchmark(["breastmnist"], 1, TINY)
    assert torch.get_num_threads() == threads  # the run's single thread is undone
    result = report["results"]["breastmnist"]
    for method in ("pooled", "local", "fedavg"):
        assert 0.0 <= result[method]["auc"]["mean"] <= 1.0
        assert len(result[method]["accuracy"]["per_seed"]) == 1
    run = result["runs"][0]
    assert len(run["local_per_site"]) == 2
    assert sum(map(sum, run["site_label_counts"])) == 546  # the whole training split
    assert set(run["cpu_s"]) == {"pooled", "local", "fedavg"}
    assert "| breastmnist | paper ResNet-18 (28) | 0.901 | 0.863 |" in table(report)
    json.dumps(report)  # JSON-ready


def test_cli_refuses_an_unknown_data_set_and_writes_its_results(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "medmnist", "--dataset", "chestmnist"])
    assert bad.exit_code == 1 and "chestmnist" in bad.output
    good = runner.invoke(app, ["bench", "medmnist", "--dataset", "breastmnist", "--sites", "2",
                               "--rounds", "1", "--width", "4", "--batch-size", "128",
                               "--device", "cpu", "--out", str(tmp_path)])
    assert good.exit_code == 0, good.output
    (run_dir,) = tmp_path.iterdir()
    report = json.loads((run_dir / "results.json").read_text())
    assert report["settings"]["sites"] == 2 and "fedavg" in report["results"]["breastmnist"]
    assert "fedcare fedavg" in (run_dir / "results.md").read_text()
