"""3D segmentation on real MRI: a tiny UNet federated over two sites for two rounds in the
simulator must segment the hippocampus far better than its initial model; training is
repeatable on the CPU; FedBN's pattern names exactly the net's batch-norm layers."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("monai")

from fedcare.algorithms import FedAvg
from fedcare.core.job import Job
from fedcare.datasets.hippocampus import LABELS, SITES, site_split
from fedcare.jobs import hippocampus
from fedcare.medical.nifti import Volume, load_cases
from fedcare.medical.segmentation import NORM_PATTERN, NetSpec, SegmentationTrainer
from fedcare.pytorch import batch_norm_patterns, get_weights
from fedcare.sim.simulator import simulate

pytestmark = [pytest.mark.medical, pytest.mark.slow]
ROI = (24, 32, 24)
NAMES = list(LABELS.values())
TINY = NetSpec(3, (8, 16, 32))


def centre_crop(v: Volume) -> Volume:
    """The central ROI of a volume, where the hippocampus lies: 4x fewer voxels to train on."""
    s = [slice((n - r) // 2, (n - r) // 2 + r) for n, r in zip(v.image.shape[1:], ROI,
                                                                  strict=True)]
    return Volume(v.name, v.image[:, s[0], s[1], s[2]], v.label[:, s[0], s[1], s[2]])


def volumes(site_id, which, count):
    cases = getattr(site_split(site_id), which)[:count]
    if not cases:
        return []
    return [centre_crop(v) for v in load_cases(cases, sorted(LABELS)).volumes]


def tiny_trainer(site_index, *, train=4, test=2, **kwargs):
    site = SITES[site_index]
    return SegmentationTrainer(volumes(site, "train", train), volumes(site, "test", test),
                               label_names=NAMES, **{"roi_size": ROI, "spec": TINY, **kwargs},
                               seed=0, data_seed=site_index)


def test_two_sites_two_rounds_learn_to_segment_the_hippocampus():
    initial = tiny_trainer(0, train=0, test=1).initial_model()
    job = Job(name="seg", initial_weights=lambda: initial,
              trainer=lambda ctx: tiny_trainer(ctx.site_index),
              strategy=FedAvg(train_config={"local_epochs": 5, "lr": 1e-2}),
              num_rounds=2, site_ids=("a", "b"), min_sites=2)
    rounds = simulate(job).history.rounds
    start, end = rounds[0].eval_metrics, rounds[-1].eval_metrics
    assert set(end) == {"dice_anterior", "dice_posterior", "dice_mean"}
    assert start["dice_mean"] < 0.2  # the initial model's labels are noise
    # far above the initial model, and above an empty (all-background) prediction's 0
    assert end["dice_mean"] > start["dice_mean"] + 0.25
    assert end["dice_anterior"] > 0.3 and end["dice_posterior"] > 0.2
    assert end["dice_mean"] == pytest.approx(np.mean([end["dice_anterior"],
                                                      end["dice_posterior"]]), abs=1e-9)
    assert rounds[-1].site_eval["a"].num_samples == 2


def test_training_is_repeatable_on_the_cpu():
    results = []
    for _ in range(2):
        trainer = tiny_trainer(1, train=2, test=1)
        trained = trainer.train(trainer.initial_model(), {"local_epochs": 1, "lr": 1e-2})
        results.append((trained, trainer.evaluate(trained.weights, {}).metrics))
    (first, dice_1), (second, dice_2) = results
    assert first.num_samples == 2 and first.metrics["loss"] > 0
    for name in first.weights:
        np.testing.assert_array_equal(first.weights[name], second.weights[name])
    assert dice_1 == dice_2


def test_prediction_is_a_label_map_of_the_image_shape():
    trainer = tiny_trainer(0, train=0, test=1)
    _, image, label = trainer.test_images()[0]
    prediction = trainer.predict(image)
    assert prediction.shape == label.shape == image.shape
    assert set(np.unique(prediction.numpy())) <= set(LABELS)


def test_fedbn_pattern_names_exactly_the_batch_norm_layers():
    net = NetSpec(3, (8, 16, 32), norm="batch").build()
    names = list(get_weights(net))
    exact = {n for n in names if any(re.search(p, n) for p in batch_norm_patterns(net))}
    by_pattern = {n for n in names if re.search(NORM_PATTERN, n)}
    assert exact and by_pattern == exact
    assert hippocampus.NORM_PATTERN == NORM_PATTERN  # the server half's copy, torch-free


def test_bad_settings_are_refused_naming_them():
    with pytest.raises(ValueError, match="multiples of 4"):
        tiny_trainer(0, train=1, test=0, roi_size=(24, 30, 24))
    with pytest.raises(ValueError, match="norm"):
        NetSpec(3, norm="group")
    trainer = tiny_trainer(0, train=1, test=1)
    with pytest.raises(ValueError, match="local_epochs"):
        trainer.train(trainer.initial_model(), {"local_epochs": 0, "lr": 1e-2})
