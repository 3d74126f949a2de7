"""MSD Task04 Hippocampus (30 real MRI cases), split over three *simulated* hospitals.

The 30 image/label pairs next to this module (``imagesTr/``, ``labelsTr/``, NIfTI, gzip) are the
lowest-numbered training cases of the Medical Segmentation Decathlon's hippocampus task, copied
byte for byte; ``SOURCE.md`` records their origin, sha256 checksums, citation and licence
(CC BY-SA 4.0). Labels: 0 background, 1 anterior, 2 posterior hippocampus.

All cases come from one centre (Vanderbilt), so the three hospitals are a simulated split: the
cases are shuffled once with a fixed seed and dealt into three sites of ten, seven for training
and three for testing at each. Only paths are handled here (no imaging library): the volumes are
read by :mod:`fedcare.medical.nifti`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATA_DIR", "LABELS", "SITES", "CasePaths", "SiteSplit", "find_cases", "site_split"]

DATA_DIR = Path(__file__).parent
#: Label value -> name, as the task's dataset.json declares them.
LABELS: dict[int, str] = {0: "background", 1: "anterior", 2: "posterior"}
#: The simulated hospitals, in partition order.
SITES: tuple[str, ...] = ("hospital-a", "hospital-b", "hospital-c")
#: Fraction of a site's cases held out for testing (3 of 10 in the packaged split).
TEST_FRACTION = 0.3


@dataclass(frozen=True)
class CasePaths:
    """One case: an image volume and its label volume (same file name in two folders)."""

    name: str
    image: Path
    label: Path


@dataclass(frozen=True)
class SiteSplit:
    """One site's training and test cases, and the files found unpaired (one line each)."""

    site_id: str
    train: tuple[CasePaths, ...]
    test: tuple[CasePaths, ...]
    problems: tuple[str, ...] = ()


def find_cases(folder: Path) -> tuple[list[CasePaths], list[str]]:
    """Pairs ``folder/imagesTr/X.nii.gz`` with ``folder/labelsTr/X.nii.gz``, sorted by name.

    Returns the pairs and a problem line for each image without a label (or label without an
    image), naming the file: such a case is skipped, the others are used.

    Raises:
        FileNotFoundError: ``folder`` has no ``imagesTr`` folder.
    """
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{folder}: no imagesTr/ folder of NIfTI images (*.nii.gz)")
    images = {p.name: p for p in images_dir.glob("*.nii*") if not p.name.startswith(".")}
    labels = ({p.name: p for p in labels_dir.glob("*.nii*") if not p.name.startswith(".")}
              if labels_dir.is_dir() else {})
    problems = [f"{images[n]}: no label file {labels_dir / n}" for n in sorted(images)
                if n not in labels]
    problems += [f"{labels[n]}: no image file {images_dir / n}" for n in sorted(labels)
                 if n not in images]
    cases = [CasePaths(n.split(".nii")[0], images[n], labels[n])
             for n in sorted(images) if n in labels]
    return cases, problems


def _split(site_id: str, cases: list[CasePaths], seed: int,
           problems: list[str] | None = None) -> SiteSplit:
    shuffled = list(cases)
    random.Random(seed).shuffle(shuffled)
    num_test = max(1, round(TEST_FRACTION * len(shuffled))) if len(shuffled) > 1 else 0
    cut = len(shuffled) - num_test
    return SiteSplit(site_id, tuple(sorted(shuffled[:cut], key=lambda c: c.name)),
                     tuple(sorted(shuffled[cut:], key=lambda c: c.name)), tuple(problems or ()))


def site_split(site_id: str, *, data_dir: Path | None = None, seed: int = 0) -> SiteSplit:
    """A site's train/test cases.

    With ``data_dir`` (a real site's own folder, from its kit): every case found there, shuffled
    with ``seed``, 30% held out for testing. Without: the packaged cases dealt to ``site_id``
    (one of :data:`SITES`): shuffled with ``seed``, ten per site, seven train and three test.

    Raises:
        ValueError: no data_dir and ``site_id`` is not one of :data:`SITES`.
    """
    if data_dir is not None:
        cases, problems = find_cases(data_dir)
        return _split(site_id, cases, seed, problems)
    if site_id not in SITES:
        raise ValueError(f"site {site_id!r} has no packaged hippocampus partition (sites "
                         f"{', '.join(SITES)}); give it a data_dir")
    cases, _ = find_cases(DATA_DIR)
    random.Random(seed).shuffle(cases)
    per_site = len(cases) // len(SITES)
    index = SITES.index(site_id)
    return _split(site_id, cases[index * per_site:(index + 1) * per_site], seed)
