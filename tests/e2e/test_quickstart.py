"""The README's quickstart job works as written, in threads and in processes."""

from pathlib import Path

import pytest

from fedcare import load_job, simulate

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

JOB = str(Path(__file__).parents[2] / "examples" / "quickstart" / "job.yaml")


@pytest.mark.parametrize("processes", [False, True])
def test_quickstart_learns(processes):
    result = simulate(load_job(JOB), num_sites=3, processes=processes)
    history = result.history
    assert history.rounds[0].eval_metrics["accuracy"] < 0.8
    assert history.rounds[-1].eval_metrics["accuracy"] > 0.95
    assert len(history.rounds[-1].site_eval) == 3
