"""Fed-TCGA-BRCA: breast-cancer survival, 6 regional centres (FLamby's benchmark data).

TCGA open-access clinical data (NCI GDC data-use terms, **not** an open licence; see SOURCE.md:
fine for tests and demos, keep the attribution, never try to re-identify anyone). 39 features
per patient, an event indicator E (death observed) and a time T in days. Train/test folds are
FLamby's fixed, censorship-stratified split; the 8 patients of region "Other" are not used.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CENTERS", "NUM_FEATURES", "CenterData", "feature_names", "load_all", "load_center"]

_DIR = Path(__file__).parent
#: Site ids in FLamby's centre order 0..5.
CENTERS: tuple[str, ...] = ("northeast", "south", "west", "midwest", "europe", "canada")
NUM_FEATURES = 39


@dataclass(frozen=True)
class CenterData:
    """One centre's split; ``e_*`` is 1.0 for an observed death, ``t_*`` days of follow-up."""

    site_id: str
    x_train: np.ndarray
    e_train: np.ndarray
    t_train: np.ndarray
    x_test: np.ndarray
    e_test: np.ndarray
    t_test: np.ndarray


def _rows() -> dict[str, list[float]]:
    with open(_DIR / "brca.csv", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if len(header) != NUM_FEATURES + 3:
            raise ValueError(f"brca.csv: expected {NUM_FEATURES + 3} columns, got {len(header)}")
        return {row[0]: [float(v) for v in row[1:]] for row in reader}


def feature_names() -> list[str]:
    """The 39 feature names of ``brca.csv``, in column order (two hold a comma)."""
    with open(_DIR / "brca.csv", newline="") as fh:
        return next(csv.reader(fh))[1:1 + NUM_FEATURES]


def _split() -> list[tuple[str, str, int]]:
    with open(_DIR / "train_test_split.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        out = []
        for row in reader:
            fold, center = row["fold2"].rsplit("_", 1)
            out.append((row["pid"], fold, int(center)))
        return out


def load_center(site_id: str) -> CenterData:
    """One centre's train and test patients (features unstandardised)."""
    if site_id not in CENTERS:
        raise ValueError(f"unknown TCGA-BRCA centre {site_id!r}; valid: {list(CENTERS)}")
    return load_all()[site_id]


def load_all() -> dict[str, CenterData]:
    rows = _rows()
    parts: dict[tuple[int, str], list[list[float]]] = {}
    for pid, fold, center in _split():
        parts.setdefault((center, fold), []).append(rows[pid])
    out = {}
    for index, site_id in enumerate(CENTERS):
        train = np.asarray(parts[(index, "train")], np.float32)
        test = np.asarray(parts[(index, "test")], np.float32)
        out[site_id] = CenterData(site_id, train[:, :NUM_FEATURES], train[:, NUM_FEATURES],
                                  train[:, NUM_FEATURES + 1], test[:, :NUM_FEATURES],
                                  test[:, NUM_FEATURES], test[:, NUM_FEATURES + 1])
    return out
