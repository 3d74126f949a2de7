"""The ready tabular trainers: federated imputation and standardisation, and the
federation's accuracy from summed counts."""

import numpy as np
import pytest
import torch

from fedcare.algorithms.fedavg import FedAvg
from fedcare.core.job import Job
from fedcare.datasets.heart import HOSPITALS
from fedcare.jobs.clinical_data import heart_table
from fedcare.pytorch import get_weights
from fedcare.sim.simulator import simulate
from fedcare.tabular import LogisticTrainer, StandardisedLinear, TabularMoments

COLUMNS = ["age", "sex", "trestbps", "chol", "thalach", "oldpeak"]  # with missing values


def _site(site_id):
    table = heart_table(site_id)
    x, y = table.matrix(COLUMNS).astype(np.float32), table.column("disease").astype(np.float32)
    test = np.arange(len(y)) % 3 == 0
    return x[~test], y[~test], x[test], y[test]


def test_logistic_trainer_imputes_by_the_federations_means_and_counts_accuracy():
    indicators = [2, 3]  # trestbps, chol: missing at some hospitals

    def initial():
        torch.manual_seed(0)
        return get_weights(StandardisedLinear(len(COLUMNS), indicators=indicators))

    job = Job(name="tabular", initial_weights=initial,
              trainer=lambda ctx: LogisticTrainer(*_site(ctx.site_id), seed=ctx.site_index,
                                                  indicators=indicators),
              strategy=FedAvg(train_config={"local_steps": 5, "lr": 0.2}), num_rounds=4,
              site_ids=HOSPITALS, min_sites=4, statistics=TabularMoments())
    result = simulate(job)
    train = np.concatenate([_site(h)[0] for h in HOSPITALS]).astype(np.float64)
    np.testing.assert_allclose(result.weights["scaler_mean"], np.nanmean(train, axis=0),
                               rtol=1e-6)
    np.testing.assert_allclose(result.weights["scaler_std"], np.nanstd(train, axis=0),
                               rtol=1e-5)
    assert np.isnan(train[:, indicators]).any()
    last = result.history.rounds[-1]
    correct = sum(e.metrics["accuracy.num"] for e in last.site_eval.values())
    rows = sum(e.metrics["accuracy.den"] for e in last.site_eval.values())
    assert last.eval_metrics["accuracy"] == pytest.approx(correct / rows)
    assert 0.65 < last.eval_metrics["accuracy"] < 1.0  # it learns from imputed rows


def test_standardised_linear_without_missing_values_is_the_plain_model():
    torch.manual_seed(1)
    model = StandardisedLinear(3, bias=False)
    with torch.no_grad():
        model.scaler_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
        model.scaler_std.copy_(torch.tensor([2.0, 1.0, 0.5]))
    x = torch.randn(5, 3)
    expected = model.linear((x - model.scaler_mean) / model.scaler_std).squeeze(-1)
    assert torch.equal(model(x), expected)
    x[0, 1] = float("nan")  # imputed by the mean: standardised to 0
    filled = x.clone()
    filled[0, 1] = 2.0
    assert torch.equal(model(x), model(filled))
