"""Image and label volumes from disk (NIfTI pairs, DICOM series), each case checked on load.

A site's folder may hold a bad case: a label map resampled to another grid, a truncated
download, a label value the task does not declare. Such a case is refused with the reason and
the file it concerns, and the site trains on the others; only a folder with no usable case is
an error. Volumes are channel-first (C, H, W, D) float32 images and int64 label maps.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, MetaTensor, NibabelReader, PydicomReader
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    NormalizeIntensityd,
    RandFlipd,
    RandSpatialCropd,
    SpatialPadd,
)
from nibabel.filebasedimages import ImageFileError

from fedcare.datasets.hippocampus import CasePaths

log = logging.getLogger(__name__)
#: What reading a broken file raises, through nibabel, gzip and MONAI's reader layer.
_READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, zlib.error, ImageFileError)


@dataclass(frozen=True)
class CaseProblem:
    """Why one case was refused, naming the file at fault."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Volume:
    """One checked case: image (1, H, W, D) float32, label (1, H, W, D) int64."""

    name: str
    image: torch.Tensor
    label: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"image": self.image, "label": self.label}


@dataclass(frozen=True)
class LoadedCases:
    """The cases that passed their checks, and one problem per refused case."""

    volumes: list[Volume]
    problems: list[CaseProblem]


class CaseError(ValueError):
    """One case refused; ``problem`` says which file and why."""

    def __init__(self, problem: CaseProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class NoUsableCase(ValueError):
    """Every case of a folder was refused: nothing to train or test on."""


def _read(path: Path, reader: NibabelReader | PydicomReader) -> torch.Tensor:
    """One volume, channel-first, as a plain float32 tensor (MONAI metadata dropped).

    The reader is called directly: ``LoadImage`` would first instantiate every reader MONAI
    knows (and their import-time warnings) for each file.
    """
    data, meta = reader.get_data(reader.read(str(path)))
    volume = EnsureChannelFirst(channel_dim="no_channel")(MetaTensor(data, meta=meta))
    return torch.as_tensor(np.asarray(volume, dtype=np.float32))


def load_case(case: CasePaths, labels: Iterable[int]) -> Volume:
    """Read and check one image/label pair.

    Raises:
        CaseError: the case is unusable; ``.problem`` names the file and says why.
    """
    declared = sorted(set(labels))
    reader = NibabelReader()
    volumes = {}
    for key, path in (("image", case.image), ("label", case.label)):
        try:
            volumes[key] = _read(path, reader)
        except _READ_ERRORS as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CaseError(CaseProblem(path, f"unreadable {key} volume ({first})")) from None
    image, label = volumes["image"], volumes["label"]
    if image.ndim != 4 or image.shape[0] != 1:
        raise CaseError(CaseProblem(case.image, f"expected one 3D volume, got shape "
                                                f"{tuple(image.shape)}"))
    if label.shape != image.shape:
        raise CaseError(CaseProblem(case.label, f"label shape {tuple(label.shape[1:])} differs "
                                                f"from image shape {tuple(image.shape[1:])} "
                                                f"({case.image.name})"))
    if not torch.isfinite(image).all():
        raise CaseError(CaseProblem(case.image, "image has NaN or infinite voxels"))
    values = torch.unique(label)
    if not (torch.isfinite(values).all() and torch.equal(values, torch.round(values))):
        raise CaseError(CaseProblem(case.label, "label has non-integer values"))
    unknown = sorted(set(int(v) for v in values.tolist()) - set(declared))
    if unknown:
        raise CaseError(CaseProblem(case.label, f"label values {unknown} are not among the "
                                                f"declared labels {declared}"))
    return Volume(case.name, image, label.to(torch.int64))


def load_cases(cases: Sequence[CasePaths], labels: Iterable[int], *,
               what: str = "cases") -> LoadedCases:
    """Every case that passes :func:`load_case`; each refused one is logged and listed.

    Raises:
        NoUsableCase: ``cases`` is empty or every case was refused (the message lists why).
    """
    declared = list(labels)
    volumes, problems = [], []
    for case in cases:
        try:
            volumes.append(load_case(case, declared))
        except CaseError as exc:
            log.warning("refused %s", exc.problem)
            problems.append(exc.problem)
    if not volumes:
        reasons = "; ".join(str(p) for p in problems) or "no cases given"
        raise NoUsableCase(f"no usable {what}: {reasons}")
    return LoadedCases(volumes, problems)


def load_dicom_series(folder: Path) -> torch.Tensor:
    """A DICOM series (one folder of slices) as a (1, H, W, D) float32 volume.

    Slices are ordered by position and rescaled by MONAI's pydicom reader; spatial axes are
    kept as stored (``swap_ij=False``, no LPS-to-RAS flip), so a volume written slice by slice
    reads back in the same orientation.

    Raises:
        ValueError: the folder holds no readable DICOM series (names the folder).
    """
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of DICOM slices")
    try:
        return _read(folder, PydicomReader(swap_ij=False, affine_lps_to_ras=False))
    except _READ_ERRORS as exc:
        raise ValueError(f"{folder}: not a readable DICOM series ({exc})") from None


def training_dataset(volumes: Sequence[Volume], roi_size: Sequence[int], *,
                     flip: bool = False) -> CacheDataset:
    """Cached, normalised volumes padded to at least ``roi_size``; each draw is a random
    ``roi_size`` crop, with ``flip`` mirrored along the first (left-right) axis half the time.

    Mirroring is off by default: in the hippocampus crops the anterior part lies on the same
    side of the posterior part in every case, and a mirrored crop teaches the opposite.

    The deterministic part (normalisation, padding) is computed once and cached; only the
    random crop and flip run per epoch.
    """
    roi = list(roi_size)
    steps = [NormalizeIntensityd(keys="image"),
             SpatialPadd(keys=("image", "label"), spatial_size=roi),
             RandSpatialCropd(keys=("image", "label"), roi_size=roi, random_size=False)]
    if flip:
        steps.append(RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0))
    return CacheDataset([v.as_dict() for v in volumes], Compose(steps), cache_rate=1.0,
                        num_workers=0, progress=False)


def evaluation_dataset(volumes: Sequence[Volume]) -> CacheDataset:
    """Cached, normalised whole volumes (sliding-window inference handles any size)."""
    return CacheDataset([v.as_dict() for v in volumes], NormalizeIntensityd(keys="image"),
                        cache_rate=1.0, num_workers=0, progress=False)
