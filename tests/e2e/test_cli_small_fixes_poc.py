"""``fedcare poc --job DIR/job.yaml`` run from outside DIR: the entry point beside the job file
is importable at the server and at every site (real processes on 127.0.0.1)."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

JOB_MODULE = textwrap.dedent('''
    """A job that lives only in its own folder: every site returns the model plus one."""

    import numpy as np

    from fedcare import EvalResult, FedAvg, Job, TrainResult, Weights


    class PlusOne:
        def __init__(self, ctx):
            self.n = 5 + ctx.site_index

        def train(self, weights, config):
            return TrainResult(Weights({"x": weights["x"] + np.float32(1)}), self.n)

        def evaluate(self, weights, config):
            return EvalResult(self.n, {"mse": float(np.mean((weights["x"] - 2) ** 2))})


    def make_job(num_rounds=2):
        return Job(name="elsewhere", trainer=PlusOne, strategy=FedAvg(),
                   initial_weights=lambda: Weights({"x": np.zeros(3, np.float32)}),
                   num_rounds=num_rounds, min_sites=2, round_timeout_s=60)
''')


def test_poc_job_file_from_another_folder(tmp_path):
    job_dir = tmp_path / "my project" / "jobs"  # a space too: one PYTHONPATH entry
    job_dir.mkdir(parents=True)
    (job_dir / "poc_elsewhere_job.py").write_text(JOB_MODULE)
    (job_dir / "job.yaml").write_text("entry_point: poc_elsewhere_job:make_job\n"
                                      "params: {num_rounds: 2}\n")
    cwd = tmp_path / "somewhere else"
    cwd.mkdir()
    env = {**os.environ, "COLUMNS": "200"}  # job_dir, fresh, is on no import path
    # The command waits for the server's readiness line and the sites itself, then watches
    # the job to its end; the timeout only bounds a hang.
    out = subprocess.run([sys.executable, "-m", "fedcare.cli", "poc", "--job",
                          str(job_dir / "job.yaml"), "--workdir", str(tmp_path / "poc")],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "cannot import" not in text, text
    assert "finished round 2/2 mse=0.0000" in text, text
    for log in (tmp_path / "poc" / "logs").iterdir():
        assert "No module named" not in log.read_text(), log.read_text()
