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


def test_auc_of_summed_histograms_is_the_pooled_auc_within_its_bound():
    from sklearn.metrics import roc_auc_score

    from fedcare.core.metric_parts import auc_parts, pooled_aucs, roc_auc

    rng = np.random.default_rng(5)
    metrics = WeightedMetrics()
    scores, labels = [], []
    for n, shift in ((30, 0.0), (200, 0.8), (9, -0.5)):  # sites score differently
        y = (rng.random(n) < 0.4).astype(np.float32)
        p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y + shift)))
        p[:3] = np.round(p[:3], 1)  # exact ties too
        assert roc_auc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        metrics.add(n, {"auc": roc_auc(p, y), **auc_parts("auc", p, y)})
        scores.append(p)
        labels.append(y)
    pooled = roc_auc_score(np.concatenate(labels), np.concatenate(scores))
    result = metrics.result()
    assert 0 < result["auc.max_error"] < 0.01
    assert abs(result["auc"] - pooled) <= result["auc.max_error"]
    assert not any(".pos." in k or ".neg." in k for k in result)  # bins are summed, not kept
    # one bin: every pair tied, AUC one half, bound one half
    assert pooled_aucs({"m.pos.3": 2.0, "m.neg.3": 5.0}) == {"m": 0.5, "m.max_error": 0.5}
    assert pooled_aucs({"m.pos.3": 2.0}) == {}  # one class: no AUC
    assert np.isnan(roc_auc(np.array([0.2, 0.4]), np.array([1, 1])))


def test_histogram_bins_have_their_own_cap_at_the_server():
    from fedcare.server.checks import MAX_BIN_PARTS, MAX_METRICS, metrics_problem

    bins = {f"auc.pos.{b}": 1.0 for b in range(MAX_BIN_PARTS)}
    assert metrics_problem({**bins, **{f"m{i}": 0.0 for i in range(MAX_METRICS)}}) is None
    assert "histogram bins" in str(metrics_problem({**bins, "auc.neg.0": 1.0}))
    assert "metrics" in str(metrics_problem({f"m{i}": 0.0 for i in range(MAX_METRICS + 1)}))
