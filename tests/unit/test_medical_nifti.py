"""Loading image/label volumes: bad cases are refused by file while the others load; a DICOM
series written here with pydicom reads back with its shape and values."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pytest

pytest.importorskip("monai")
nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from fedcare.datasets.hippocampus import CasePaths, find_cases  # noqa: E402
from fedcare.medical.nifti import NoUsableCase, load_cases, load_dicom_series  # noqa: E402

pytestmark = pytest.mark.medical
LABELS = (0, 1, 2)


def write_case(folder, name, image, label):
    for sub, array in (("imagesTr", image), ("labelsTr", label)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, np.eye(4)), folder / sub / f"{name}.nii.gz")
    return CasePaths(name, folder / "imagesTr" / f"{name}.nii.gz",
                     folder / "labelsTr" / f"{name}.nii.gz")


def volume(shape=(6, 7, 5), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 20, shape).astype(np.float32)
    label = rng.integers(0, 3, shape).astype(np.float32)  # float labels, as some MSD files
    return image, label


def test_bad_cases_are_refused_by_file_and_the_others_load(tmp_path, caplog):
    good = [write_case(tmp_path, f"good_{i}", *volume(seed=i)) for i in range(2)]
    image, _ = volume()
    mismatched = write_case(tmp_path, "mismatched", image, np.zeros((6, 7, 4), np.float32))
    corrupt = write_case(tmp_path, "corrupt", *volume(seed=5))
    data = corrupt.image.read_bytes()
    corrupt.image.write_bytes(data[: len(data) // 2])  # a truncated download
    garbage = write_case(tmp_path, "garbage", *volume(seed=6))
    garbage.label.write_bytes(gzip.compress(b"not a nifti header" * 10))
    unknown = write_case(tmp_path, "unknown", image, np.full((6, 7, 5), 7, np.float32))
    cases, unpaired = find_cases(tmp_path)
    assert unpaired == [] and len(cases) == 6

    with caplog.at_level(logging.WARNING, logger="fedcare.medical.nifti"):
        loaded = load_cases(cases, LABELS)

    assert sorted(v.name for v in loaded.volumes) == ["good_0", "good_1"]
    problems = {p.path: p.reason for p in loaded.problems}
    assert set(problems) == {mismatched.label, corrupt.image, garbage.label, unknown.label}
    assert "label shape (6, 7, 4) differs from image shape (6, 7, 5)" in problems[
        mismatched.label]
    assert problems[corrupt.image].startswith("unreadable image volume")
    assert problems[garbage.label].startswith("unreadable label volume")
    assert "[7]" in problems[unknown.label]
    for path in problems:  # each refused file is named in the log too
        assert str(path) in caplog.text
    first = loaded.volumes[0]
    assert first.image.shape == (1, 6, 7, 5) and first.label.dtype.is_floating_point is False
    np.testing.assert_array_equal(first.label[0].numpy(), volume(seed=0)[1].astype(np.int64))
    assert good[0].name == "good_0"


def test_a_folder_with_no_usable_case_is_an_error_listing_why(tmp_path):
    image, _ = volume()
    case = write_case(tmp_path, "only", image, np.full((6, 7, 5), 0.5, np.float32))
    with pytest.raises(NoUsableCase, match=r"no usable cases: .*only\.nii\.gz: label has "
                                           "non-integer values"):
        load_cases([case], LABELS)
    with pytest.raises(NoUsableCase, match="no cases given"):
        load_cases([], LABELS)


def write_dicom_series(folder, volume_hwd):
    """One file per slice along the last axis, as a scanner writes an axial series."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir()
    series_uid, study_uid = generate_uid(), generate_uid()
    rows, cols, depth = volume_hwd.shape
    for k in range(depth):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice_{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.PatientID, ds.InstanceNumber = "MR", "synthetic", k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k) * 2.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(volume_hwd[:, :, k]).astype(np.uint16).tobytes()
        ds.save_as(folder / f"slice_{k}.dcm", enforce_file_format=True)


def test_a_dicom_series_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    original = rng.integers(0, 4000, (12, 10, 4)).astype(np.uint16)
    write_dicom_series(tmp_path / "series", original)
    loaded = load_dicom_series(tmp_path / "series")
    assert loaded.shape == (1, 12, 10, 4)
    np.testing.assert_array_equal(loaded[0].numpy(), original.astype(np.float32))
    with pytest.raises(ValueError, match="not a folder"):
        load_dicom_series(tmp_path / "absent")
