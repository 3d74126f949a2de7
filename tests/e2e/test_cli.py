"""The ``fedcare`` command as a user runs it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

TESTS = Path(__file__).parents[1]
FEDCARE = [sys.executable, "-m", "fedcare.cli"]


def run(*args, cwd):
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([*FEDCARE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_simulate_a_job_file_in_processes(tmp_path):
    out = run("simulate", str(TESTS / "toy_job.yaml"), "--processes", "--out", str(tmp_path),
              "--rounds", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_dir = Path(re.search(r"run folder: (\S+)", out.stdout).group(1))
    assert run_dir.parent == tmp_path
    for name in ("metrics.csv", "metrics.json", "learning_curve.png"):
        assert (run_dir / name).stat().st_size > 0
    assert (run_dir / "metrics.csv").read_text().count("\n") == 5  # header + rounds 0..3
    assert "all (weighted)" in out.stdout


def test_bad_config_is_one_clear_line_not_a_traceback(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("entry_point: toyjob:make_job\nparams: {}\nrounds: 3\n")
    out = run("simulate", str(bad), cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    assert f"error: job file {bad}: rounds: Extra inputs are not permitted" in " ".join(
        out.stdout.split())


def test_wrong_number_of_sites_for_natural_partition(tmp_path):
    out = run("simulate", "fedcare.jobs.heart:make_job", "--sites", "3", cwd=tmp_path)
    assert out.returncode == 1
    assert "the job has 4 natural sites" in " ".join(out.stdout.split())


@pytest.mark.parametrize("mode", ["federated", "simulated"])
def test_demo_prints_the_table_and_writes_the_run_folder(tmp_path, mode):
    extra = ["--simulate"] if mode == "simulated" else []
    out = run("demo", "heart", "--out", str(tmp_path), "--tensorboard", "tb", *extra,
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # one TensorBoard run per seed (a job id, or the run folder's name and the seed), each with
    # the server's and the four hospitals' event files
    assert "TensorBoard: tensorboard --logdir tb" in text
    (tracked,) = (tmp_path / "tb").iterdir()
    assert any((tracked / "server").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tracked / "sites").iterdir()) == [
        "cleveland", "hungary", "switzerland", "va"]
    for label in ("Cleveland", "Budapest", "Zurich+Basel", "VA Long Beach", "mean",
                  "(a) local", "(b) pooled", "(c) FedAvg"):
        assert label in text
    run_dir = Path(re.search(r"run folder: (\S+)", text).group(1))
    summary = (run_dir / "summary.csv").read_text().splitlines()
    assert summary[0] == "hospital,local,local_all_tests,pooled,fedavg"
    mean = dict(zip(summary[0].split(","), summary[-1].split(","), strict=True))
    assert float(mean["fedavg"]) > 0.7 and float(mean["pooled"]) > 0.7
    assert (run_dir / "learning_curve.png").stat().st_size > 10_000
    if mode == "simulated":
        assert (run_dir / "seed-0" / "checkpoints" / "latest.json").exists()
    else:
        assert "real federation on this machine" in text
        with np.load(run_dir / "seed-0" / "global_model.npz") as model:
            assert model["linear.weight"].shape == (1, 13)


def test_simulate_with_each_sites_policy_and_data_folder(tmp_path):
    (tmp_path / "policy.yaml").write_text(
        "sites:\n  site-1:\n    outbound:\n      - clip_update_norm: {max_norm: 0.5}\n")
    out = run("simulate", str(TESTS / "toy_job.yaml"), "--param", "num_rounds=1",
              "--site-policy", str(tmp_path / "policy.yaml"), "--data-dir",
              f"site-0={tmp_path}", "--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "finished with 3 of 3 sites" in out.stdout
    # site-1's update (norm 6) left clipped to 0.5: w = (10 + 20 * 2/12 + 90) / 60
    w = (10 + 20 * 2 / 12 + 90) / 60
    assert re.search(rf"site-1[\s│]+10[\s│]+{(2 - w) ** 2:.4f}", out.stdout), out.stdout
    (tmp_path / "bad.yaml").write_text("sites:\n  site-2:\n    outbound: [{add_noise: {}}]\n")
    bad = run("simulate", str(TESTS / "toy_job.yaml"), "--site-policy",
              str(tmp_path / "bad.yaml"), cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "bad.yaml (site site-2): site policy outbound.0: unknown filter 'add_noise'" in (
        " ".join((bad.stdout + bad.stderr).split()))


def test_a_statistics_job_of_its_own_from_the_command_line(tmp_path):
    out = run("simulate", "fedcare.jobs.heart_stats:make_job", "--out", str(tmp_path),
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "finished with 4 of 4 sites" in out.stdout
    saved = Path(re.search(r"statistics: (\S+)", out.stdout).group(1))
    import json
    assert json.loads(saved.read_text())["passes"]["mean"]["num_samples"] == 920
