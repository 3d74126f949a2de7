"""MedMNIST data: the shipped files load, bad files are refused by name, sites are skewed."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai")  # fedcare.medical imports MONAI (the medical extra)

from fedcare.core.errors import ConfigError
from fedcare.medical.medmnist import SUBSETS, load, site_data

pytestmark = pytest.mark.medical

SHAPES = {"breastmnist": (546, 156, (28, 28)), "pneumoniamnist": (4708, 624, (28, 28)),
          "adrenalmnist3d": (1188, 298, (28, 28, 28)), "vesselmnist3d": (1335, 382, (28, 28, 28))}


@pytest.mark.parametrize("name", sorted(SUBSETS))
def test_shipped_files_load_with_official_splits(name):
    data = load(name)
    n_train, n_test, side = SHAPES[name]
    assert data.train.images.shape == (n_train, 1, *side)
    assert data.test.images.shape == (n_test, 1, *side)
    assert data.train.images.dtype == np.uint8 and data.train.labels.dtype == np.int64
    assert set(np.unique(data.train.labels)) == {0, 1}


def _write(path: Path, **overrides: np.ndarray) -> Path:
    arrays = {}
    for split, n in (("train", 20), ("val", 6), ("test", 8)):
        arrays[f"{split}_images"] = np.zeros((n, 28, 28), np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def test_a_good_hand_made_file_loads(tmp_path):
    data = load("breastmnist", _write(tmp_path / "mine.npz"))
    assert len(data.train) == 20 and data.val.images.shape == (6, 1, 28, 28)


@pytest.mark.parametrize(("override", "says"), [
    ({"train_images": np.zeros((20, 32, 32), np.uint8)}, "train_images has shape (20, 32, 32)"),
    ({"test_images": np.zeros((8, 28, 28, 28), np.uint8)}, "test_images has shape"),
    ({"val_images": np.zeros((6, 28, 28), np.float32)}, "val_images is float32"),
    ({"train_labels": np.full((20, 1), 3, np.uint8)}, "train_labels holds [3]"),
    ({"test_labels": np.zeros((7, 1), np.uint8)}, "test_labels has shape (7, 1)"),
])
def test_a_bad_file_is_refused_naming_it(tmp_path, override, says):
    path = _write(tmp_path / "bad.npz", **override)
    with pytest.raises(ConfigError) as info:
        load("breastmnist", path)
    assert str(path) in str(info.value) and says in str(info.value)


def test_a_2d_file_given_as_3d_is_refused(tmp_path):
    path = _write(tmp_path / "flat.npz")
    with pytest.raises(ConfigError, match=r"flat\.npz: train_images has shape"):
        load("vesselmnist3d", path)


def test_missing_arrays_and_non_npz_files_are_refused(tmp_path):
    np.savez(tmp_path / "half.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match=r"half\.npz: not a MedMNIST file, missing"):
        load("breastmnist", tmp_path / "half.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ConfigError, match=r"text\.npz: cannot read"):
        load("breastmnist", tmp_path / "text.npz")
    with pytest.raises(ConfigError, match="unknown MedMNIST data set 'chestmnist'"):
        load("chestmnist")


def _positive_share(labels: np.ndarray) -> float:
    return float(np.mean(labels == 1))


def test_sites_are_label_skewed_as_asked_and_cover_the_splits():
    data = load("pneumoniamnist")
    shares = {}
    for alpha in (0.3, 1000.0):
        parts = [site_data(data, k, 4, alpha=alpha, seed=1) for k in range(4)]
        assert sum(len(train) for train, _ in parts) == len(data.train)
        assert sum(len(test) for _, test in parts) == len(data.test)
        shares[alpha] = [_positive_share(train.labels) for train, _ in parts]
        # a site holds the same share of each class's test images as of its training images
        for train, test in parts:
            for c in (0, 1):
                held_train = np.sum(train.labels == c) / np.sum(data.train.labels == c)
                held_test = np.sum(test.labels == c) / np.sum(data.test.labels == c)
                assert abs(held_test - held_train) < 0.01
    overall = _positive_share(data.train.labels)
    strong = max(abs(s - overall) for s in shares[0.3])
    weak = max(abs(s - overall) for s in shares[1000.0])
    assert strong > 0.2, shares  # alpha 0.3: at least one site far from the pooled mix
    assert weak < 0.03, shares  # alpha 1000: every site near it


def test_site_data_is_deterministic_and_can_test_on_the_whole_split():
    data = load("breastmnist")
    a, _ = site_data(data, 1, 3, alpha=0.5, seed=7)
    b, _ = site_data(data, 1, 3, alpha=0.5, seed=7)
    c, _ = site_data(data, 1, 3, alpha=0.5, seed=8)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images) or len(a) != len(c)
    _, whole = site_data(data, 2, 3, alpha=0.5, seed=7, test="all")
    assert len(whole) == len(data.test)
    with pytest.raises(ConfigError, match="test must be one of"):
        site_data(data, 0, 3, alpha=0.5, seed=7, test="val")
    with pytest.raises(ConfigError, match=r"site_index 3 is not in 0\.\.2"):
        site_data(data, 3, 3, alpha=0.5, seed=7)
