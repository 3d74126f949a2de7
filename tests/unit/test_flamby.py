"""The two numbers of ``fedcare bench flamby``: FLamby's per-centre mean, and the metric of all
centres' test rows from summed parts."""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.core.metric_parts import ratio_parts
from fedcare.datasets.heart import HOSPITALS, load_hospital_flamby
from fedcare.jobs.flamby import centre_mean, from_sums, run_benchmark, write_results

SITES = ("a", "b", "c")


def test_centre_mean_is_unweighted_and_from_sums_pools_the_rows():
    run = {"a": {"accuracy": 1.0, **ratio_parts("accuracy", 10, 10)},
           "b": {"accuracy": 0.5, **ratio_parts("accuracy", 45, 90)},
           "c": ratio_parts("accuracy", 0, 0)}  # no rows: in neither number
    assert centre_mean(run, "accuracy", SITES) == pytest.approx(0.75)
    assert from_sums(run, SITES)["accuracy"] == pytest.approx(55 / 100)


def test_heart_benchmark_reports_both_numbers_for_accuracy_and_auc(tmp_path):
    rows = run_benchmark(1, {"num_rounds": 2}, ["fedavg"])
    assert [(r.metric, r.method) for r in rows] == [
        ("accuracy", "local"), ("accuracy", "pooled"), ("accuracy", "fedavg"),
        ("auc", "local"), ("auc", "pooled"), ("auc", "fedavg")]
    test_rows = np.array([len(load_hospital_flamby(h).y_test) for h in HOSPITALS])
    for r in rows:
        centres = np.array([r.per_centre[h] for h in HOSPITALS])
        assert r.per_seed == [pytest.approx(np.nanmean(centres))]  # FLamby's number
        if r.metric == "accuracy":  # correct over rows: the row-weighted centre mean
            assert r.pooled_per_seed == [pytest.approx(np.average(centres, weights=test_rows))]
        else:
            assert 0.5 < r.pooled_per_seed[0] < 1
    text = write_results(rows, tmp_path, 1)["md"].read_text()
    assert "| per-centre mean ± sd | from sums ± sd | FLamby |" in text
    assert text.count("| fedavg |") == 2 and "0.685" in text
