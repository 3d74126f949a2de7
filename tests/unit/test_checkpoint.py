"""Checkpoints carry their job, round and digests; a bad one is refused, the last good one used."""

import errno
import json
import logging
import re
import shutil

import blake3
import numpy as np
import pytest

from fedcare.core.errors import StorageError
from fedcare.core.weights import Weights
from fedcare.server import checkpoint as checkpoint_module
from fedcare.server.checkpoint import Checkpointer


def model(value):
    return Weights({"w": np.full((4, 3), value, np.float32), "n": np.array(value, np.int64)})


def saved(tmp_path, rounds=(1, 2, 3), job_id="job-a", keep=3):
    checkpoints = Checkpointer(tmp_path, keep=keep, job_id=job_id)
    for r in rounds:
        checkpoints.save(r, model(r), {"m": np.array([r * 10.0])})
    return checkpoints


def test_a_checkpoint_names_its_job_and_round_and_the_digest_of_each_file(tmp_path):
    saved(tmp_path)
    manifest = json.loads((tmp_path / "checkpoint-round0003.json").read_text())
    assert (manifest["job_id"], manifest["round_num"], manifest["names"]) == (
        "job-a", 3, ["w", "n"])
    for name in ("global-round0003.npz", "strategy-round0003.npz"):
        data = (tmp_path / name).read_bytes()  # hashed while written: the same digest
        assert manifest["files"][name] == {"blake3": blake3.blake3(data).hexdigest(),
                                           "size_bytes": len(data)}
    assert not list(tmp_path.glob("*.tmp"))
    back = Checkpointer(tmp_path, job_id="job-a").read(3)
    assert back.round_num == 3 and back.strategy_state["m"][0] == 30.0
    np.testing.assert_array_equal(back.weights["w"], model(3)["w"])
    assert list(back.weights) == ["w", "n"]


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), r"truncated or replaced"),
    (lambda p: np.savez(p, w=np.zeros((4, 3), np.float32), n=np.array(3)),
     r"truncated or replaced"),
    # another valid model of the same size: only the digest tells
    (lambda p: p.write_bytes(p.with_name("global-round0002.npz").read_bytes()),
     r"BLAKE3 digest differs from the manifest's \(the file was changed or replaced\)"),
    (lambda p: p.unlink(), "missing"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog, damage,
                                                                   why):
    checkpoints = saved(tmp_path)
    newest = tmp_path / "global-round0003.npz"
    damage(newest)
    with pytest.raises(StorageError, match=why):
        checkpoints.read(3)
    caplog.set_level(logging.WARNING)
    back = checkpoints.latest()
    assert back.round_num == 2 and back.weights["n"] == 2
    warning = next(r.getMessage() for r in caplog.records if "falling back" in r.getMessage())
    assert str(newest) in warning and re.search(why, warning)
    assert checkpoints.load_latest()[0] == 2  # the admin's download falls back as well


def test_a_replaced_strategy_state_is_refused_too(tmp_path):
    checkpoints = saved(tmp_path)
    np.savez(tmp_path / "strategy-round0003.npz", m=np.array([999.0]))
    with pytest.raises(StorageError, match=r"strategy-round0003\.npz is not usable"):
        checkpoints.load_strategy_state(3)
    assert checkpoints.latest().strategy_state["m"][0] == 20.0


def test_another_jobs_checkpoint_copied_in_is_refused(tmp_path):
    ours = saved(tmp_path / "a", rounds=(1, 2))
    saved(tmp_path / "b", rounds=(1, 2, 3), job_id="job-b")
    for name in ("global-round0003.npz", "strategy-round0003.npz", "checkpoint-round0003.json"):
        shutil.copy(tmp_path / "b" / name, tmp_path / "a" / name)
    with pytest.raises(StorageError, match="belongs to job 'job-b', not 'job-a'"):
        ours.read(3)
    assert ours.latest().round_num == 2
    # a manifest renamed to another round is refused as well
    (tmp_path / "a" / "checkpoint-round0003.json").write_bytes(
        (tmp_path / "a" / "checkpoint-round0002.json").read_bytes())
    with pytest.raises(StorageError, match="checkpoint of round 2, not 3"):
        ours.read(3)


def test_a_model_without_a_manifest_is_no_checkpoint(tmp_path):
    checkpoints = saved(tmp_path)
    (tmp_path / "checkpoint-round0003.json").unlink()  # crashed between model and manifest
    with pytest.raises(StorageError, match="no manifest"):
        checkpoints.read(3)
    assert checkpoints.latest().round_num == 2
    assert checkpoints.latest(max_round=1).round_num == 1
    (tmp_path / "checkpoint-round0001.json").write_text("{not json")
    assert checkpoints.latest(max_round=1) is None


def test_pruning_and_discarding_remove_whole_checkpoints(tmp_path):
    checkpoints = saved(tmp_path, rounds=(1, 2, 3, 4), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-round0003.json", "checkpoint-round0004.json", "global-round0003.npz",
        "global-round0004.npz", "latest.json", "strategy-round0003.npz",
        "strategy-round0004.npz"]
    checkpoints.discard_after(3)
    assert checkpoints.rounds() == [3]
    assert not (tmp_path / "strategy-round0004.npz").exists()


def test_a_full_disk_is_a_storage_error_naming_the_file_and_leaves_no_temporary(
        tmp_path, monkeypatch):
    checkpoints = saved(tmp_path, rounds=(1,))

    def full(fh, arrays):
        fh.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "_write_npz", full)
    with pytest.raises(StorageError) as info:
        checkpoints.save(2, model(2))
    assert str(info.value) == (f"job job-a round 2: cannot write checkpoint "
                               f"{tmp_path / 'global-round0002.npz'}: No space left on device")
    assert not list(tmp_path.glob("*.tmp"))
    assert checkpoints.latest().round_num == 1


def test_a_checkpoint_is_never_unpickled_even_with_a_matching_manifest(tmp_path):
    checkpoints = saved(tmp_path, rounds=(1,))
    path = tmp_path / "global-round0001.npz"
    np.savez(path, w=np.array([{"a": 1}], dtype=object), n=np.array(1))
    manifest_path = tmp_path / "checkpoint-round0001.json"
    manifest = json.loads(manifest_path.read_text())
    data = path.read_bytes()
    manifest["files"][path.name] = {"blake3": blake3.blake3(data).hexdigest(),
                                    "size_bytes": len(data)}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StorageError, match="allow_pickle"):
        checkpoints.read(1)


def test_a_manifest_naming_other_files_is_refused_before_any_is_read(tmp_path):
    checkpoints = saved(tmp_path, rounds=(1,))
    path = tmp_path / "checkpoint-round0001.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["../../etc/passwd"] = {"blake3": "0", "size_bytes": 1}
    path.write_text(json.dumps(manifest))
    with pytest.raises(StorageError, match=re.escape(
            "the manifest lists '../../etc/passwd', not a file of round 1")):
        checkpoints.read(1)
    manifest["files"] = {"global-round0001.npz": "not an entry"}
    path.write_text(json.dumps(manifest))
    with pytest.raises(StorageError, match="not a file of round 1"):
        checkpoints.read(1)


def test_a_file_the_disk_cannot_read_back_falls_back_too(tmp_path, monkeypatch):
    checkpoints = saved(tmp_path, rounds=(1, 2))
    digest = checkpoint_module._digest

    def failing(path):
        if path.name == "global-round0002.npz":
            raise OSError(errno.EIO, "Input/output error")
        return digest(path)

    monkeypatch.setattr(checkpoint_module, "_digest", failing)
    with pytest.raises(StorageError, match=r"unreadable: \[Errno 5\] Input/output error"):
        checkpoints.read(2)
    assert checkpoints.latest().round_num == 1
