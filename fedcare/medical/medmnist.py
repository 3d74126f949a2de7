"""MedMNIST data for a site: load an official ``.npz``, check it, carve the site's share.

A file is refused, naming it, unless it holds the six official arrays with the shapes, dtype
and labels its subset promises (:data:`SUBSETS`); a wrong file at a hospital then fails when
the job is prepared, not as a shape error deep inside the network.

MedMNIST is not naturally multi-site, so a simulated federation splits the official training
split over the sites with the Dirichlet label-skew partitioner
(:func:`fedcare.sim.partition.label_skew`). Each site's test set is its share of the official
test split, cut class by class in the proportions the site holds of that class in training, so
a site's skew carries over to its tests (up to the official splits' own difference in class
balance, e.g. 74% pneumonia in PneumoniaMNIST's training split, 62.5% in its test split); the
shares together are the whole test split.
``test="all"`` gives every site the whole official test split instead (global evaluation: the
federation's weighted mean is then the metric on the official test split). The validation split
is loaded and checked but not used by the trainer (no early stopping).

Images stay ``uint8`` (0-255) and channel-first, ``(N, 1, 28, 28)`` or ``(N, 1, 28, 28, 28)``;
the trainer scales them to [0, 1] a batch at a time, which keeps a 3D set at a quarter of its
float32 size.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.datasets.medmnist import DATA_DIR, FILES
from fedcare.sim import partition

SPLITS = ("train", "val", "test")
TEST_MODES = ("share", "all")


@dataclass(frozen=True)
class Subset:
    """What a MedMNIST subset's file must hold."""

    spatial_dims: int
    num_classes: int
    class_names: tuple[str, ...]
    side: int = 28


SUBSETS: dict[str, Subset] = {
    "breastmnist": Subset(2, 2, ("malignant", "normal or benign")),
    "pneumoniamnist": Subset(2, 2, ("normal", "pneumonia")),
    "adrenalmnist3d": Subset(3, 2, ("normal", "hyperplasia")),
    "vesselmnist3d": Subset(3, 2, ("vessel", "aneurysm")),
}


@dataclass(frozen=True)
class ImageSet:
    """Images ``(N, 1, *spatial)`` uint8 and labels ``(N,)`` int64 in ``0..num_classes-1``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> ImageSet:
        return ImageSet(self.images[rows], self.labels[rows])


@dataclass(frozen=True)
class MedMnist:
    """One subset with its official splits."""

    name: str
    subset: Subset
    train: ImageSet
    val: ImageSet
    test: ImageSet


def subset(name: str) -> Subset:
    """The description of a shipped subset; a ConfigError lists the known names."""
    if name not in SUBSETS:
        raise ConfigError(f"unknown MedMNIST data set {name!r}; known: {sorted(SUBSETS)}")
    return SUBSETS[name]


def _split(arrays: dict[str, np.ndarray], split: str, spec: Subset, where: Path) -> ImageSet:
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    expected = (spec.side,) * spec.spatial_dims
    if images.ndim != 1 + spec.spatial_dims or images.shape[1:] != expected:
        raise ConfigError(f"{where}: {split}_images has shape {images.shape}, expected "
                          f"(N, {', '.join(map(str, expected))})")
    if images.dtype != np.uint8:
        raise ConfigError(f"{where}: {split}_images is {images.dtype}, expected uint8")
    if labels.shape not in ((len(images), 1), (len(images),)):
        raise ConfigError(f"{where}: {split}_labels has shape {labels.shape}, expected "
                          f"({len(images)}, 1): one label per image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"{where}: {split}_labels is {labels.dtype}, expected integers")
    flat = labels.reshape(-1).astype(np.int64)
    bad = flat[(flat < 0) | (flat >= spec.num_classes)]
    if bad.size:
        raise ConfigError(f"{where}: {split}_labels holds {sorted(set(bad.tolist()))[:5]}, "
                          f"outside 0..{spec.num_classes - 1}")
    if len(flat) == 0:
        raise ConfigError(f"{where}: the {split} split is empty")
    return ImageSet(images[:, None], flat)


def load(name: str, path: Path | None = None) -> MedMnist:
    """Read and check subset ``name`` from ``path`` (default: the file shipped with fedcare).

    Raises:
        ConfigError: unknown name, unreadable file, or arrays that do not match the subset;
            the message names the file.
    """
    spec = subset(name)
    where = Path(path) if path is not None else DATA_DIR / FILES[name]
    try:
        with np.load(where, allow_pickle=False) as npz:
            missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")
                       if f"{s}_{k}" not in npz.files]
            if missing:
                raise ConfigError(f"{where}: not a MedMNIST file, missing {missing}")
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{where}: cannot read as a MedMNIST .npz: {exc}") from None
    train, val, test = (_split(arrays, s, spec, where) for s in SPLITS)
    return MedMnist(name, spec, train, val, test)


def _same_mix(test_labels: np.ndarray, train_parts: list[np.ndarray],
              train_labels: np.ndarray) -> list[np.ndarray]:
    """Cut the test rows of each class over the sites in the shares they hold of that class
    in training; deterministic, and the parts together are every test row exactly once."""
    per_site: list[list[np.ndarray]] = [[] for _ in train_parts]
    for c in np.unique(test_labels):
        rows = np.flatnonzero(test_labels == c)
        held = np.array([np.sum(train_labels[p] == c) for p in train_parts], dtype=np.float64)
        shares = held / held.sum() if held.sum() > 0 else np.full(len(held), 1 / len(held))
        cuts = np.round(np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
        for site, chunk in enumerate(np.split(rows, cuts)):
            per_site[site].append(chunk)
    return [np.sort(np.concatenate(chunks)).astype(np.int64) for chunks in per_site]


def site_data(data: MedMnist, site_index: int, num_sites: int, *, alpha: float, seed: int,
              test: str = "share", min_size: int = 8) -> tuple[ImageSet, ImageSet]:
    """Site ``site_index`` of ``num_sites``: its training share and its test set.

    ``alpha``: the Dirichlet concentration of the label skew (0.5 is strong, 100 near IID);
    every site gets at least ``min_size`` training images. ``test``: "share" (its share of the
    official test split, in its training label mix) or "all" (the whole official test split).
    """
    if test not in TEST_MODES:
        raise ConfigError(f"test must be one of {TEST_MODES}, got {test!r}")
    if not 0 <= site_index < num_sites:
        raise ConfigError(f"site_index {site_index} is not in 0..{num_sites - 1}")
    parts = partition.label_skew(data.train.labels, num_sites, alpha=alpha, seed=seed,
                                 min_size=min_size)
    train = data.train.take(parts[site_index])
    if test == "all":
        return train, data.test
    tests = _same_mix(data.test.labels, parts, data.train.labels)
    return train, data.test.take(tests[site_index])
