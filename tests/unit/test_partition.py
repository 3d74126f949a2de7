"""Tests for fedcare.sim.partition: coverage invariants, determinism, and measured skew."""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.core.errors import ConfigError
from fedcare.sim import partition

LABELS = np.repeat(np.arange(10), 100)  # 1000 samples, 10 balanced classes


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "each site's indices must be sorted and unique"
    joined = np.concatenate(parts)
    assert len(joined) == n, "samples dropped or duplicated"
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def _mean_tv(parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each site's label mix and the global one."""
    global_dist = np.bincount(LABELS, minlength=10) / len(LABELS)
    distances = [
        0.5 * np.abs(np.bincount(LABELS[p], minlength=10) / len(p) - global_dist).sum()
        for p in parts
    ]
    return float(np.mean(distances))


def _size_ratio(parts: list[np.ndarray]) -> float:
    sizes = [len(p) for p in parts]
    return max(sizes) / min(sizes)


ALL_PARTITIONERS = {
    "iid": lambda seed: partition.iid(1000, 5, seed=seed),
    "label_skew": lambda seed: partition.label_skew(LABELS, 5, alpha=0.5, seed=seed),
    "quantity_skew": lambda seed: partition.quantity_skew(1000, 5, alpha=0.5, seed=seed),
}


@pytest.mark.parametrize("name", ALL_PARTITIONERS)
def test_exact_cover(name: str) -> None:
    parts = ALL_PARTITIONERS[name](0)
    assert len(parts) == 5
    _assert_exact_cover(parts, 1000)


@pytest.mark.parametrize("name", ALL_PARTITIONERS)
def test_deterministic_given_seed(name: str) -> None:
    first, again, other = (ALL_PARTITIONERS[name](s) for s in (7, 7, 8))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_sizes_differ_by_at_most_one() -> None:
    assert sorted(len(p) for p in partition.iid(10, 3, seed=0)) == [3, 3, 4]
    assert sorted(len(p) for p in partition.iid(1003, 7, seed=1)) == [143] * 5 + [144] * 2
    _assert_exact_cover(partition.iid(10, 3, seed=0), 10)


def test_iid_one_site_gets_everything() -> None:
    (only,) = partition.iid(5, 1, seed=0)
    np.testing.assert_array_equal(only, np.arange(5))


@pytest.mark.parametrize("seed", range(5))
def test_label_skew_strength_follows_alpha(seed: int) -> None:
    # Measured over 300 seeds: alpha=0.1 gives mean TV 0.50-0.75, alpha=100 gives 0.025-0.047.
    skewed = _mean_tv(partition.label_skew(LABELS, 5, alpha=0.1, seed=seed))
    near_iid = _mean_tv(partition.label_skew(LABELS, 5, alpha=100.0, seed=seed))
    assert skewed > 0.4
    assert near_iid < 0.1


def test_label_skew_accepts_string_labels() -> None:
    labels = np.array(["sick", "healthy", "sick", "healthy", "sick", "healthy"] * 5)
    _assert_exact_cover(partition.label_skew(labels, 3, alpha=1.0, seed=0), 30)


@pytest.mark.parametrize("seed", range(5))
def test_quantity_skew_strength_follows_alpha(seed: int) -> None:
    # Measured over 300 seeds: max/min size ratio 4.3-982 at alpha=0.1, 1.05-1.58 at alpha=100.
    assert _size_ratio(partition.quantity_skew(1000, 5, alpha=0.1, seed=seed)) > 3.0
    assert _size_ratio(partition.quantity_skew(1000, 5, alpha=100.0, seed=seed)) < 2.0


def test_quantity_skew_keeps_labels_iid() -> None:
    parts = partition.quantity_skew(1000, 5, alpha=100.0, seed=0)
    assert _mean_tv(parts) < 0.1


@pytest.mark.parametrize("seed", range(5))
def test_min_size_honoured(seed: int) -> None:
    label_parts = partition.label_skew(LABELS, 5, alpha=0.1, seed=seed, min_size=100)
    size_parts = partition.quantity_skew(1000, 5, alpha=0.5, seed=seed, min_size=100)
    for parts in (label_parts, size_parts):
        assert min(len(p) for p in parts) >= 100
        _assert_exact_cover(parts, 1000)


def test_unsatisfiable_min_size_gives_up_with_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"quantity_skew.*min_size=10.*increase alpha"):
        partition.quantity_skew(100, 10, alpha=0.01, seed=0, min_size=10)
    with pytest.raises(ConfigError, match=r"label_skew.*min_size=10.*increase alpha"):
        partition.label_skew(np.arange(100) % 10, 10, alpha=0.01, seed=0, min_size=10)


def test_natural_groups_rows_by_value_in_first_appearance_order() -> None:
    sites = partition.natural(["va", "cleveland", "va", "swiss", "cleveland", "va"])
    assert list(sites) == ["va", "cleveland", "swiss"]
    np.testing.assert_array_equal(sites["va"], [0, 2, 5])
    np.testing.assert_array_equal(sites["cleveland"], [1, 4])
    np.testing.assert_array_equal(sites["swiss"], [3])
    _assert_exact_cover(list(sites.values()), 6)


def test_natural_numpy_input_gives_plain_python_keys() -> None:
    sites = partition.natural(np.array([3, 1, 3, 3]))
    assert list(sites) == [3, 1]
    assert all(type(key) is int for key in sites)
    np.testing.assert_array_equal(sites[3], [0, 2, 3])
    assert partition.natural([]) == {}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: partition.iid(10, 0, seed=0), "num_sites must be >= 1, got 0"),
        (lambda: partition.iid(3, 4, seed=0), r"num_sites \(4\) must be <= num_samples \(3\)"),
        (lambda: partition.iid(10, 2.5, seed=0), "num_sites must be an integer"),
        (lambda: partition.iid(10.0, 2, seed=0), "num_samples must be an integer"),
        (lambda: partition.quantity_skew(10, 2, alpha=0, seed=0), "alpha must be > 0.*got 0"),
        (lambda: partition.quantity_skew(10, 2, alpha=-1.0, seed=0), "alpha must be > 0"),
        (
            lambda: partition.quantity_skew(10, 2, alpha=float("inf"), seed=0),
            "alpha must be > 0 and finite, got inf",
        ),
        (
            lambda: partition.label_skew(LABELS, 2, alpha=float("nan"), seed=0),
            "alpha must be > 0 and finite, got nan",
        ),
        (lambda: partition.label_skew(LABELS, 2, alpha="1", seed=0), "alpha must be a number"),
        (
            lambda: partition.quantity_skew(10, 3, alpha=1.0, seed=0, min_size=4),
            r"min_size \* num_sites \(4 \* 3 = 12\) must be <= num_samples \(10\)",
        ),
        (
            lambda: partition.label_skew(LABELS, 2, alpha=1.0, seed=0, min_size=-1),
            "min_size must be >= 0, got -1",
        ),
        (
            lambda: partition.label_skew(np.zeros((10, 2)), 2, alpha=1.0, seed=0),
            r"labels must be 1-D, got shape \(10, 2\)",
        ),
        (
            lambda: partition.label_skew(LABELS[:3], 4, alpha=1.0, seed=0),
            r"num_sites \(4\) must be <= num_samples \(3\)",
        ),
        (lambda: partition.natural(np.zeros((2, 2))), "groups must be 1-D"),
    ],
)
def test_invalid_arguments_name_the_argument(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()
