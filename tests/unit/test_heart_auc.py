"""The heart job's federated ROC AUC (summed score histograms) against scikit-learn on the
pooled test predictions of the four hospitals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedcare.core.config import load_job
from fedcare.core.trainer import SiteContext
from fedcare.datasets.heart import HOSPITALS
from fedcare.jobs.heart_site import HeartModel, make_trainer
from fedcare.pytorch import set_weights
from fedcare.sim.simulator import simulate


def test_federated_auc_is_the_pooled_auc_and_site_aucs_are_their_own():
    result = simulate(load_job("fedcare.jobs.heart:make_job",
                               {"num_rounds": 3, "split": "flamby"}))
    last = result.history.rounds[-1]
    model = HeartModel()
    set_weights(model, result.weights)
    model.eval()
    scores, labels = [], []
    for index, site_id in enumerate(HOSPITALS):
        trainer = make_trainer(SiteContext(site_id, index, len(HOSPITALS)), split="flamby")
        with torch.no_grad():
            p = torch.sigmoid(model(torch.from_numpy(trainer.x_test))).numpy()
        scores.append(p)
        labels.append(trainer.y_test)
        site = last.site_eval[site_id].metrics
        assert not any(".pos." in k or ".neg." in k for k in site)  # bins summed, not kept
        if len(np.unique(trainer.y_test)) == 2:
            assert site["auc"] == pytest.approx(roc_auc_score(trainer.y_test, p), abs=1e-6)
        else:
            assert "auc" not in site
        assert site["accuracy"] == pytest.approx(np.mean((p > 0.5) == trainer.y_test), abs=1e-9)
    pooled = roc_auc_score(np.concatenate(labels), np.concatenate(scores))
    bound = last.eval_metrics["auc.max_error"]
    assert bound < 0.005
    assert abs(last.eval_metrics["auc"] - pooled) <= bound + 1e-12
    site_mean = np.mean([last.site_eval[s].metrics["auc"] for s in HOSPITALS
                         if "auc" in last.site_eval[s].metrics])
    assert abs(last.eval_metrics["auc"] - site_mean) > 0.01  # what averaging would have said
    rows = sum(len(y) for y in labels)
    correct = sum(float(np.sum((p > 0.5) == y)) for p, y in zip(scores, labels, strict=True))
    assert last.eval_metrics["accuracy"] == pytest.approx(correct / rows, abs=1e-12)
