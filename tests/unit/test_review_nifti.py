"""Review finding: a label volume with an infinite voxel stopped the whole folder's loading
(OverflowError) instead of being refused as one bad case."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("monai")
nib = pytest.importorskip("nibabel")

from fedcare.datasets.hippocampus import CasePaths  # noqa: E402
from fedcare.medical.nifti import load_cases  # noqa: E402

pytestmark = pytest.mark.medical


def write_case(folder, name, image, label):
    for sub, array in (("imagesTr", image), ("labelsTr", label)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, np.eye(4)), folder / sub / f"{name}.nii.gz")
    return CasePaths(name, folder / "imagesTr" / f"{name}.nii.gz",
                     folder / "labelsTr" / f"{name}.nii.gz")


def test_a_label_with_an_infinite_voxel_is_refused_and_the_others_load(tmp_path):
    image = np.ones((4, 4, 4), np.float32)
    good = write_case(tmp_path, "good", image, np.zeros((4, 4, 4), np.float32))
    label = np.zeros((4, 4, 4), np.float32)
    label[0, 0, 0] = np.inf
    bad = write_case(tmp_path, "bad", image, label)
    loaded = load_cases([good, bad], (0, 1))
    assert [v.name for v in loaded.volumes] == ["good"]
    assert [p.path for p in loaded.problems] == [bad.label]
