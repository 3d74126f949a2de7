"""One OS process per site: readiness, failures and crashes are reported per site."""

from pathlib import Path

import numpy as np
import pytest

from fedcare import AggregationError, load_job, simulate
from fedcare.server import RunListener

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

JOB_FILE = str(Path(__file__).parents[1] / "toy_job.yaml")


class Recorder(RunListener):
    def __init__(self):
        self.failures = []

    def on_failure(self, failure):
        self.failures.append(failure)


def test_toy_job_in_processes_matches_hand_computation():
    result = simulate(load_job(JOB_FILE), processes=True)
    np.testing.assert_allclose(result.weights["w"], (10 + 40 + 90) / 60, rtol=1e-6)


def test_a_crashing_site_process_is_dropped_and_the_round_goes_on():
    recorder = Recorder()
    job = load_job(JOB_FILE, {"modes": {"site-1": "crash"}})
    result = simulate(job, processes=True, listener=recorder)
    np.testing.assert_allclose(result.weights["w"], (10 + 90) / 40, rtol=1e-6)
    crash = recorder.failures[0]
    assert (crash.site_id, crash.round_num, crash.kind) == ("site-1", 1, "train")
    assert "exit code 3" in crash.message
    assert len(result.history.rounds[2].trained_sites) == 2


def test_a_trainer_error_in_a_site_process_is_named():
    recorder = Recorder()
    job = load_job(JOB_FILE, {"modes": {"site-0": "wrong_shape"}})
    simulate(job, processes=True, listener=recorder)
    assert recorder.failures[0].site_id == "site-0"
    assert "w: shape [3, 2], expected [2, 3]" in recorder.failures[0].message


def test_site_processes_that_cannot_start_are_reported(tmp_path):
    (tmp_path / "broken.py").write_text(
        "import numpy as np\n"
        "from fedcare import FedAvg, Job, Weights\n"
        "def trainer(ctx):\n"
        "    raise FileNotFoundError(f'no data for {ctx.site_id}')\n"
        "def make_job():\n"
        "    return Job(name='broken', initial_weights=lambda: Weights({'w': np.zeros(1)}),\n"
        "               trainer=trainer, strategy=FedAvg(), num_rounds=1, min_sites=1,\n"
        "               site_ids=('a', 'b'))\n")
    (tmp_path / "job.yaml").write_text("entry_point: broken:make_job\n")
    job = load_job(str(tmp_path / "job.yaml"))
    # As at a real deployment (and in threads mode): each site stays up and answers every task
    # with its reason, and the job fails naming both.
    with pytest.raises(AggregationError) as info:
        simulate(job, processes=True, connect_timeout_s=60)
    message = str(info.value)
    # reported when the job starts (the prepare step), before any training
    assert message.startswith("job broken round 0: prepare: only 0 valid result(s), min_sites=1")
    assert "global model is kept" not in message  # there was none yet
    assert "site a: cannot start the job: FileNotFoundError: no data for a" in message
    assert "site b: cannot start the job: FileNotFoundError: no data for b" in message


def test_site_processes_ignore_a_folder_named_fedcare_in_the_current_directory(
        tmp_path, monkeypatch):
    # `python -m` would put the current directory first on the import path: a folder called
    # fedcare there (a checkout, a results folder) must not replace the installed package
    shadow = tmp_path / "fedcare"
    (shadow / "sim").mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the wrong fedcare was imported')\n")
    (shadow / "sim" / "__init__.py").write_text("")
    (shadow / "sim" / "worker.py").write_text("raise SystemExit(7)\n")
    monkeypatch.chdir(tmp_path)
    result = simulate(load_job(JOB_FILE, {"num_rounds": 1}), processes=True)
    np.testing.assert_allclose(result.weights["w"], (10 + 40 + 90) / 60, rtol=1e-6)
    assert result.failures == []
