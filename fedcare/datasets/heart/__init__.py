"""UCI Heart Disease, split by hospital as in FLamby's Fed-Heart-Disease benchmark.

The four ``processed.*.data`` files next to this module are the unmodified UCI files (one
file per hospital, so the federation is natural, not simulated). ``SOURCE.md`` records their
format, sha256 checksums, provenance and the required citation; the data are licensed
CC BY 4.0 (UCI Machine Learning Repository, doi:10.24432/C52P4X).

Preprocessing follows FLamby (``flamby/datasets/fed_heart_disease/dataset.py``): ``?`` becomes
NaN, columns ``slope``, ``ca`` and ``thal`` are dropped, rows with any remaining NaN are
dropped, the label is ``num > 0`` and ``cp``/``restecg`` are one-hot encoded with the first
level dropped. This yields 303/261/46/130 patients (740 in total). Only numpy is used, so the
loader runs wherever fedcare's core runs. Features are deliberately *not* standardised here:
in a federation the statistics must be computed without pooling the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FEATURE_NAMES",
    "HOSPITALS",
    "HospitalData",
    "load_all",
    "load_hospital",
    "load_hospital_flamby",
    "load_raw",
    "load_raw_file",
]

_DATA_DIR = Path(__file__).parent

#: Site ids in FLamby's center order 0..3.
HOSPITALS: tuple[str, ...] = ("cleveland", "hungary", "switzerland", "va")

_FILES: dict[str, str] = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}

# Raw column order of every file (14 columns, no header); ``num`` is the target.
_RAW_COLUMNS = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg",
    "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
)  # fmt: skip
_DROPPED = ("slope", "ca", "thal")
_NUMERIC = ("age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak")
# Fixed category levels (from the UCI data sheet), so that every hospital gets the same
# columns even when a level never occurs in its file. The first level is the reference.
_CATEGORIES: dict[str, tuple[int, ...]] = {"cp": (1, 2, 3, 4), "restecg": (0, 1, 2)}

#: The 13 model features, in column order.
FEATURE_NAMES: tuple[str, ...] = _NUMERIC + tuple(
    f"{name}_{level}" for name, levels in _CATEGORIES.items() for level in levels[1:]
)


@dataclass(frozen=True)
class HospitalData:
    """One hospital's train/test split.

    Attributes:
        site_id: One of :data:`HOSPITALS`.
        x_train: float32 array ``[n_train, 13]``, columns as in :data:`FEATURE_NAMES`.
        y_train: float32 array ``[n_train]`` of 0/1 labels (1 = disease).
        x_test: float32 array ``[n_test, 13]``.
        y_test: float32 array ``[n_test]``.
    """

    site_id: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _check_site(site_id: str) -> None:
    if site_id not in _FILES:
        raise ValueError(f"unknown site_id {site_id!r}; valid ones are {', '.join(HOSPITALS)}")


def _read_file(path: Path) -> np.ndarray:
    """Parses one UCI file into a float64 ``[rows, 14]`` array with NaN for ``?``."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="ascii").splitlines(), start=1):
        if not line.strip():
            continue
        cells = line.strip().split(",")
        if len(cells) != len(_RAW_COLUMNS):
            raise ValueError(f"{path.name}:{lineno}: expected 14 columns, got {len(cells)}")
        rows.append([math.nan if c.strip() == "?" else float(c) for c in cells])
    return np.asarray(rows, dtype=np.float64)


#: Columns of :func:`load_raw_columns`: the UCI file's 13 attributes, without the label.
RAW_FEATURES = _RAW_COLUMNS[:-1]


def load_raw_file(site_id: str, data_dir: Path | None = None) -> np.ndarray:
    """One hospital's file as it is: float64 ``[rows, 14]``, the 13 attributes then ``num``
    (0-4), every row, NaN where the file says ``?``."""
    _check_site(site_id)
    path = Path(data_dir or _DATA_DIR) / _FILES[site_id]
    if not path.is_file():
        raise ValueError(f"heart data for {site_id!r} not found: {path}")
    return _read_file(path)


def load_raw_columns(site_id: str, data_dir: Path | None = None) -> np.ndarray:
    """One hospital's 13 raw UCI attributes, float64 ``[rows, 13]``, every row, NaN where the
    file says ``?`` (no row dropped): the input of federated descriptive statistics."""
    return load_raw_file(site_id, data_dir)[:, :-1]


def load_raw(site_id: str, data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Loads one hospital's preprocessed features and binary labels, in file order.

    Args:
        site_id: One of :data:`HOSPITALS`.

    Returns:
        ``(x, y)``: float32 ``[n, 13]`` features (no NaN; one-hot groups hold at most one 1)
        and float32 ``[n]`` labels in {0, 1}.

    Raises:
        ValueError: If ``site_id`` is unknown or a category value is outside its fixed levels.
    """
    _check_site(site_id)
    path = Path(data_dir or _DATA_DIR) / _FILES[site_id]
    if not path.is_file():
        raise ValueError(f"heart data for {site_id!r} not found: {path}")
    raw = _read_file(path)
    keep = [i for i, name in enumerate(_RAW_COLUMNS) if name not in _DROPPED]
    raw = raw[:, keep]
    raw = raw[~np.isnan(raw).any(axis=1)]
    col = {name: raw[:, j] for j, name in enumerate(n for n in _RAW_COLUMNS if n not in _DROPPED)}

    parts = [np.stack([col[name] for name in _NUMERIC], axis=1)]
    for name, levels in _CATEGORIES.items():
        values = col[name]
        unknown = set(np.unique(values).tolist()) - set(levels)
        if unknown:
            raise ValueError(f"{site_id}: {name} has values {sorted(unknown)} outside {levels}")
        parts.append(values[:, None] == np.asarray(levels[1:], dtype=np.float64)[None, :])
    x = np.concatenate(parts, axis=1).astype(np.float32)
    y = (col["num"] > 0).astype(np.float32)
    return x, y


def _stratified_test_mask(y: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of test rows: ``ceil(test_fraction * n)`` rows, stratified on ``y``.

    The overall test size matches sklearn's ``train_test_split``; it is shared between
    classes in proportion to their size by largest remainder (ties go to the class listed
    first), so each class's test count is within 1 of ``test_fraction * class_count``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(y)
    n_test = math.ceil(test_fraction * n)
    classes, counts = np.unique(y, return_counts=True)
    quotas = n_test * counts / n
    alloc = np.floor(quotas).astype(int)
    order = np.argsort(-(quotas - alloc), kind="stable")
    alloc[order[: n_test - int(alloc.sum())]] += 1

    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    for cls, k in zip(classes, alloc, strict=True):
        idx = np.flatnonzero(y == cls)
        mask[rng.permutation(idx)[:k]] = True
    return mask


def load_hospital(site_id: str, *, seed: int = 43, test_fraction: float = 0.34,
                  data_dir: Path | None = None) -> HospitalData:
    """Loads one hospital with a deterministic, stratified train/test split.

    With the defaults the split sizes equal FLamby's (199/104, 172/89, 30/16, 85/45 for
    cleveland/hungary/switzerland/va); the rows themselves differ from sklearn's shuffle.
    Train and test are disjoint and together hold every preprocessed row; both keep the
    original file order.

    Args:
        site_id: One of :data:`HOSPITALS`.
        seed: Seed for ``numpy.random.default_rng``; the same seed gives the same split.
        test_fraction: Share of rows in the test set, rounded up as sklearn does.

    Returns:
        The hospital's :class:`HospitalData` (features not standardised).

    Raises:
        ValueError: If ``site_id`` is unknown or ``test_fraction`` is not in (0, 1).
    """
    x, y = load_raw(site_id, data_dir)
    test = _stratified_test_mask(y, test_fraction, seed)
    return HospitalData(site_id, x[~test], y[~test], x[test], y[test])


def load_hospital_flamby(site_id: str, *, data_dir: Path | None = None) -> HospitalData:
    """One hospital with FLamby's own fixed split (needs scikit-learn, the ``flamby`` extra).

    FLamby splits each centre's preprocessed rows (file order) with scikit-learn's
    ``train_test_split`` (train 0.66 / test 0.34, ``random_state=43``), stratified on the
    binary label when each class has more than two patients; Zurich+Basel, with a single
    negative patient, is split unstratified. Reproducing that call gives the very same
    patients in each test set as FLamby's benchmark.
    """
    try:
        from sklearn.model_selection import train_test_split
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ValueError("FLamby's exact split needs scikit-learn: pip install "
                         "'fedcare[flamby]'") from None
    x, y = load_raw(site_id, data_dir)
    counts = np.unique(y, return_counts=True)[1]
    stratify = y if len(counts) > 1 and bool((counts > 2).all()) else None
    _, test_idx = train_test_split(np.arange(len(y)), test_size=1.0 - 0.66,
                                           train_size=0.66, random_state=43, shuffle=True,
                                           stratify=stratify)
    test = np.zeros(len(y), dtype=bool)
    test[test_idx] = True
    return HospitalData(site_id, x[~test], y[~test], x[test], y[test])


def load_all(*, seed: int = 43) -> dict[str, HospitalData]:
    """Loads every hospital, keyed by site id in :data:`HOSPITALS` order."""
    return {site: load_hospital(site, seed=seed) for site in HOSPITALS}
