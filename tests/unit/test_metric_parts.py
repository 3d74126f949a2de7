"""Ratio metrics of the federation from summed parts, not a mean of site metrics."""

import numpy as np
import pytest

from fedcare.core.metric_parts import pooled_ratios, ratio_parts
from fedcare.jobs.tcga import c_index, c_index_pairs
from fedcare.server.metrics import WeightedMetrics


def test_c_index_of_the_federation_is_its_pairs_summed_over_sites():
    rng = np.random.default_rng(3)
    metrics = WeightedMetrics()
    concordant_total = comparable_total = 0.0
    site_values = []
    for n in (12, 40, 7):  # sites of very different sizes: a weighted mean is off
        risk, time = rng.normal(size=n), rng.integers(1, 100, n).astype(float)
        event = (rng.random(n) < 0.5).astype(float)
        concordant, comparable = c_index_pairs(risk, event, time)
        assert concordant / comparable == pytest.approx(c_index(risk, event, time))
        concordant_total += concordant
        comparable_total += comparable
        site_values.append(c_index(risk, event, time))
        metrics.add(n, {"c_index": c_index(risk, event, time),
                        **ratio_parts("c_index", concordant, comparable)})
    result = metrics.result()
    assert result["c_index"] == pytest.approx(concordant_total / comparable_total, rel=1e-12)
    assert result["c_index.den"] == comparable_total
    weighted = np.average(site_values, weights=[12, 40, 7])
    assert abs(result["c_index"] - weighted) > 1e-6  # what averaging would have said


def test_a_ratio_without_a_positive_denominator_is_left_out():
    assert pooled_ratios({"c_index.num": 0.0, "c_index.den": 0.0}) == {}
    metrics = WeightedMetrics()
    metrics.add(10, {"accuracy": 0.5})
    metrics.add(30, {"accuracy": 0.9})
    assert metrics.result() == {"accuracy": pytest.approx(0.8)}  # correct / rows, exactly
