"""The packaged hippocampus subset: checksums as SOURCE.md records them, and the simulated split
of its 30 cases over three hospitals (numpy-free, MONAI-free)."""

from __future__ import annotations

import hashlib
import re

import pytest

from fedcare.core.errors import ConfigError
from fedcare.core.policy import BUILTIN_JOBS, CodePolicy
from fedcare.datasets.hippocampus import DATA_DIR, SITES, find_cases, site_split
from fedcare.jobs.hippocampus import ENTRY_POINT, make_job


def test_packaged_files_match_the_checksums_in_source_md():
    source = (DATA_DIR / "SOURCE.md").read_text()
    rows = re.findall(r"^\| (hippocampus_\d+\.nii\.gz) \|.*\| ([0-9a-f]{64}) \| ([0-9a-f]{64}) \|$",
                      source, flags=re.MULTILINE)
    assert len(rows) == 30
    for name, image_sha, label_sha in rows:
        for folder, expected in (("imagesTr", image_sha), ("labelsTr", label_sha)):
            digest = hashlib.sha256((DATA_DIR / folder / name).read_bytes()).hexdigest()
            assert digest == expected, f"{folder}/{name}"


def test_the_simulated_split_deals_ten_cases_to_each_hospital_seven_train_three_test():
    splits = [site_split(s) for s in SITES]
    names = [c.name for s in splits for c in (*s.train, *s.test)]
    assert len(names) == len(set(names)) == 30
    for split in splits:
        assert (len(split.train), len(split.test)) == (7, 3)
        assert split.problems == ()
    assert [c.name for c in site_split(SITES[1]).test] == [c.name for c in splits[1].test]
    assert [c.name for c in site_split(SITES[1], seed=1).test] != [c.name for c in
                                                                    splits[1].test]


def test_a_site_folder_is_split_by_itself_and_unpaired_files_are_named(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for i in range(10):
        (tmp_path / "imagesTr" / f"case_{i}.nii.gz").write_bytes(b"x")
        (tmp_path / "labelsTr" / f"case_{i}.nii.gz").write_bytes(b"x")
    (tmp_path / "imagesTr" / "lonely.nii.gz").write_bytes(b"x")
    split = site_split("st-mary", data_dir=tmp_path)
    assert (len(split.train), len(split.test)) == (7, 3)
    assert len(split.problems) == 1 and "lonely.nii.gz" in split.problems[0]
    with pytest.raises(FileNotFoundError, match="imagesTr"):
        find_cases(tmp_path / "missing")
    with pytest.raises(ValueError, match="st-mary"):
        site_split("st-mary")


def test_the_job_is_built_in_and_checks_its_parameters():
    assert ENTRY_POINT in BUILTIN_JOBS
    assert CodePolicy().refuses_entry_point(ENTRY_POINT) is None
    job = make_job(num_rounds=3)
    assert job.site_ids == SITES and job.initial_weights is None
    assert job.strategy.configure_train(1, SITES[0])["local_epochs"] == 2
    with pytest.raises(ConfigError, match="multiple of 8"):
        make_job(roi_size=(40, 50, 40))
    with pytest.raises(ConfigError, match="norm='batch'"):
        make_job(algorithm="fedbn")
    with pytest.raises(ConfigError, match="roi_size"):
        make_job(roi_size=(40, 56))
    assert make_job(algorithm="fedbn", norm="batch").strategy.local_layers == [r"\.adn\.N\."]
