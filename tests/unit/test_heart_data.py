"""Checks the bundled UCI Heart Disease files and the numpy loader against known numbers.

The expected counts come from ``fedcare/datasets/heart/SOURCE.md`` and FLamby's
Fed-Heart-Disease README (740 patients; train/test 199/104, 172/89, 30/16, 85/45).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from fedcare.datasets import heart
from fedcare.datasets.heart import (
    FEATURE_NAMES,
    HOSPITALS,
    HospitalData,
    load_all,
    load_hospital,
    load_raw,
)

DATA_DIR = Path(heart.__file__).parent

# sha256 of processed.<name>.data, copied from SOURCE.md.
SHA256 = {
    "cleveland": "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
    "hungarian": "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
    "switzerland": "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314",
    "va": "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
}
ROWS = {"cleveland": 303, "hungary": 261, "switzerland": 46, "va": 130}
POSITIVES = {"cleveland": 139, "hungary": 98, "switzerland": 45, "va": 101}
SPLIT = {"cleveland": (199, 104), "hungary": (172, 89), "switzerland": (30, 16), "va": (85, 45)}
ONE_HOT_GROUPS = (("cp_2", "cp_3", "cp_4"), ("restecg_1", "restecg_2"))


def _sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows (features + label) in lexicographic order, for multiset comparison."""
    rows = np.concatenate([x, y[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("name", sorted(SHA256))
def test_data_file_checksums_match_source_md(name: str) -> None:
    digest = hashlib.sha256((DATA_DIR / f"processed.{name}.data").read_bytes()).hexdigest()
    assert digest == SHA256[name]


def test_hospitals_and_feature_names() -> None:
    assert HOSPITALS == ("cleveland", "hungary", "switzerland", "va")
    assert FEATURE_NAMES == (
        "age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak",
        "cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2",
    )  # fmt: skip


@pytest.mark.parametrize("site", HOSPITALS)
def test_load_raw_counts_and_features(site: str) -> None:
    x, y = load_raw(site)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.shape == (ROWS[site], 13)
    assert y.shape == (ROWS[site],)
    assert not np.isnan(x).any()
    assert set(np.unique(y).tolist()) <= {0.0, 1.0}
    assert int(y.sum()) == POSITIVES[site]
    for group in ONE_HOT_GROUPS:
        cols = x[:, [FEATURE_NAMES.index(name) for name in group]]
        assert set(np.unique(cols).tolist()) <= {0.0, 1.0}
        assert (cols.sum(axis=1) <= 1).all()


def test_total_is_740() -> None:
    x_all = [load_raw(site)[0] for site in HOSPITALS]
    assert sum(len(x) for x in x_all) == 740
    assert sum(POSITIVES.values()) == sum(int(load_raw(s)[1].sum()) for s in HOSPITALS)


def test_known_first_row_of_cleveland() -> None:
    # 63,1,cp=1,145,233,1,restecg=2,150,0,2.3,...,num=0 (first line of the file)
    x, y = load_raw("cleveland")
    expected = [63, 1, 145, 233, 1, 150, 0, 2.3, 0, 0, 0, 0, 1]
    np.testing.assert_allclose(x[0], np.asarray(expected, dtype=np.float32))
    assert y[0] == 0.0


@pytest.mark.parametrize("site", HOSPITALS)
def test_split_sizes_match_flamby(site: str) -> None:
    data = load_hospital(site)
    assert isinstance(data, HospitalData)
    assert data.site_id == site
    assert (len(data.y_train), len(data.y_test)) == SPLIT[site]
    assert data.x_train.shape == (SPLIT[site][0], 13)
    assert data.x_test.shape == (SPLIT[site][1], 13)
    assert data.x_train.dtype == np.float32 and data.y_test.dtype == np.float32


@pytest.mark.parametrize("site", HOSPITALS)
def test_split_partitions_the_hospital(site: str) -> None:
    x, y = load_raw(site)
    data = load_hospital(site)
    joined = _sorted_rows(
        np.concatenate([data.x_train, data.x_test]), np.concatenate([data.y_train, data.y_test])
    )
    np.testing.assert_array_equal(joined, _sorted_rows(x, y))


@pytest.mark.parametrize("site", HOSPITALS)
def test_split_is_stratified(site: str) -> None:
    _, y = load_raw(site)
    data = load_hospital(site)
    n_test = len(data.y_test)
    assert n_test == math.ceil(0.34 * len(y))
    for label in (0.0, 1.0):
        class_count = int((y == label).sum())
        in_test = int((data.y_test == label).sum())
        assert abs(in_test - n_test * class_count / len(y)) <= 1


def test_split_is_deterministic_and_seed_dependent() -> None:
    a, b = load_hospital("cleveland", seed=43), load_hospital("cleveland", seed=43)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = load_hospital("cleveland", seed=7)
    assert len(c.x_test) == len(a.x_test)
    assert not np.array_equal(_sorted_rows(a.x_test, a.y_test), _sorted_rows(c.x_test, c.y_test))


def test_load_all_order_and_seed() -> None:
    data = load_all()
    assert tuple(data) == HOSPITALS
    for site, hospital in data.items():
        np.testing.assert_array_equal(hospital.x_test, load_hospital(site).x_test)


def test_unknown_site_raises() -> None:
    with pytest.raises(ValueError, match="mars") as info:
        load_raw("mars")
    assert "cleveland" in str(info.value)
    with pytest.raises(ValueError, match="mars"):
        load_hospital("mars")


def test_flamby_split_has_flamby_sizes_and_is_fixed():
    from fedcare.datasets.heart import load_hospital_flamby

    sizes = {h: (len(load_hospital_flamby(h).y_train), len(load_hospital_flamby(h).y_test))
             for h in ("cleveland", "hungary", "switzerland", "va")}
    assert sizes == {"cleveland": (199, 104), "hungary": (172, 89), "switzerland": (30, 16),
                     "va": (85, 45)}
    a, b = load_hospital_flamby("va"), load_hospital_flamby("va")
    np.testing.assert_array_equal(a.x_test, b.x_test)
    # Zurich+Basel has one negative patient: FLamby splits it unstratified
    assert int(load_hospital_flamby("switzerland").y_test.sum()) == 15
