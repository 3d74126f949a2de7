"""The MedMNIST classification trainer: it learns, in 2D and 3D, repeatably, under FedBN too;
and the medmnist job runs in the simulator."""

import re

import numpy as np
import pytest
import torch

pytest.importorskip("monai")  # fedcare.medical imports MONAI (the medical extra)

from fedcare.core.config import load_job
from fedcare.core.errors import ConfigError
from fedcare.core.policy import BUILTIN_JOBS
from fedcare.jobs.medmnist import BATCH_NORM_LAYERS, make_job
from fedcare.medical.classification import (
    ClassificationTrainer,
    build_net,
    classification_metrics,
)
from fedcare.medical.device import pick_compute
from fedcare.medical.medmnist import load
from fedcare.pytorch import batch_norm_patterns
from fedcare.sim.simulator import simulate

pytestmark = pytest.mark.medical
CPU = pick_compute("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: small nets on a shared CPU are faster so, and runs repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _balanced(images, labels, per_class, offset=0):
    rows = np.concatenate([np.flatnonzero(labels == c)[offset:offset + per_class]
                           for c in (0, 1)])
    return images[rows], labels[rows]


def test_trainer_learns_pneumonia_from_a_tiny_subset():
    data = load("pneumoniamnist")
    x_tr, y_tr = _balanced(data.train.images, data.train.labels, 100)
    x_te, y_te = _balanced(data.test.images, data.test.labels, 100)
    trainer = ClassificationTrainer(x_tr, y_tr, x_te, y_te, spatial_dims=2, num_classes=2,
                                    seed=0, width=8, compute=CPU)
    before = trainer.evaluate(trainer.initial_model(), {}).metrics
    trained = trainer.train(trainer.initial_model(),
                            {"local_epochs": 4, "lr": 3e-3, "batch_size": 16})
    after = trainer.evaluate(trained.weights, {}).metrics
    assert trained.num_samples == 200
    assert after["auc"] > 0.85 and after["accuracy"] > 0.65, (before, after)  # chance: 0.5
    assert after["loss"] < before["loss"]


def test_3d_volumes_train_and_evaluate():
    rng = np.random.default_rng(0)
    # class 1: a bright cube in the volume's centre; class 0: noise only
    x = rng.integers(0, 60, size=(32, 1, 28, 28, 28), dtype=np.uint8)
    y = np.arange(32) % 2
    x[y == 1, :, 10:18, 10:18, 10:18] = 250
    trainer = ClassificationTrainer(x[:24], y[:24], x[24:], y[24:], spatial_dims=3,
                                    num_classes=2, seed=0, width=4, compute=CPU)
    trained = trainer.train(trainer.initial_model(),
                            {"local_epochs": 3, "lr": 1e-2, "batch_size": 8})
    result = trainer.evaluate(trained.weights, {})
    assert result.num_samples == 8
    assert result.metrics["accuracy"] == 1.0 and result.metrics["auc"] == 1.0
    assert trainer.logits(trained.weights).shape == (8, 2)


def test_a_test_set_of_one_class_reports_no_auc():
    x = np.zeros((6, 1, 28, 28), np.uint8)
    y = np.array([0, 1, 0, 1, 0, 1])
    trainer = ClassificationTrainer(x, y, x[:3], np.zeros(3, np.int64), spatial_dims=2,
                                    num_classes=2, width=4, compute=CPU)
    metrics = trainer.evaluate(trainer.initial_model(), {}).metrics
    assert "auc" not in metrics and set(metrics) == {"accuracy", "loss"}


def test_shapes_that_do_not_match_spatial_dims_are_refused():
    x2 = np.zeros((4, 1, 28, 28), np.uint8)
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\) for spatial_dims=3"):
        ClassificationTrainer(x2, y, x2, y, spatial_dims=3, num_classes=2, compute=CPU)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        ClassificationTrainer(x2, y + 1, x2, y, spatial_dims=2, num_classes=2, compute=CPU)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        build_net(1, 2)


def test_training_is_repeatable_with_a_seed():
    data = load("breastmnist")
    x, y = data.train.images[:64], data.train.labels[:64]
    runs = []
    for _ in range(2):
        t = ClassificationTrainer(x, y, x[:0], y[:0], spatial_dims=2, num_classes=2, seed=3,
                                  width=4, compute=CPU)
        runs.append(t.train(t.initial_model(), {"local_epochs": 1, "batch_size": 16}).weights)
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name], runs[1][name])
    other = ClassificationTrainer(x, y, x[:0], y[:0], spatial_dims=2, num_classes=2, seed=4,
                                  width=4, compute=CPU)
    assert not np.array_equal(other.initial_model()["conv1.weight"],
                              runs[0]["conv1.weight"])


def test_metrics_binary_and_multiclass():
    labels = np.array([0, 0, 1, 1])
    logits = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0
    flipped = classification_metrics(logits[::-1].copy(), labels)
    assert flipped["auc"] == 0.0 and flipped["accuracy"] == 0.0
    three = classification_metrics(np.eye(3)[[0, 1, 2, 1]], np.array([0, 1, 2, 2]))
    assert three["accuracy"] == 0.75 and 0.5 < three["auc"] < 1.0
    assert np.isnan(classification_metrics(logits[:2], labels[:2])["auc"])  # one class


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fedbn_patterns_of_the_job_select_exactly_the_batch_norm_layers(spatial_dims):
    names = list(build_net(spatial_dims, 2, width=4).state_dict())
    by_type = {n for n in names if any(re.search(p, n) for p in
                                       batch_norm_patterns(build_net(spatial_dims, 2, width=4)))}
    by_job = {n for n in names if any(re.search(p, n) for p in BATCH_NORM_LAYERS)}
    assert by_job == by_type and any("downsample.1" in n for n in by_job)


def test_medmnist_job_runs_in_the_simulator_with_fedavg_and_fedbn():
    assert "fedcare.jobs.medmnist:make_job" in BUILTIN_JOBS
    for algorithm in ("fedavg", "fedbn"):
        job = load_job("fedcare.jobs.medmnist:make_job", {
            "dataset": "breastmnist", "num_rounds": 2, "width": 4, "batch_size": 64,
            "algorithm": algorithm, "device": "cpu"})
        result = simulate(job, num_sites=2)
        assert not result.failed_sites, result.summary
        assert [r.round_num for r in result.history.rounds][-1] == 2
        last = result.history.rounds[-1]
        assert set(last.site_eval) == {"site-0", "site-1"}
        assert 0.0 <= last.eval_metrics["auc"] <= 1.0
        assert sum(e.num_samples for e in last.site_eval.values()) == 156  # official test split
        if algorithm == "fedbn":  # batch-norm statistics never left the sites
            np.testing.assert_array_equal(result.weights["bn1.running_mean"], 0.0)


def test_medmnist_job_refuses_bad_settings():
    with pytest.raises(ConfigError, match="dataset must be one of"):
        make_job(dataset="chestmnist")
    with pytest.raises(ConfigError, match="algorithm must be one of"):
        make_job(algorithm="fedprox")
    with pytest.raises(ConfigError, match="alpha must be a number > 0"):
        make_job(alpha=0)
    with pytest.raises(ConfigError, match="test must be one of"):
        make_job(test="val")
