"""Global-model checkpoints: one verified .npz per completed round, written atomically.

A round's checkpoint is its model (``global-roundNNNN.npz``), the strategy's server state if
it has any (``strategy-roundNNNN.npz``), and a manifest (``checkpoint-roundNNNN.json``) that
names the job and the round and holds the BLAKE3 digest and size of each file. Each file is written
to a temporary name, fsynced and renamed, the manifest last, and the directory is fsynced
after each rename: a crash at any moment leaves every earlier checkpoint whole, and a round
whose manifest is missing is not a checkpoint. The digests are taken while the bytes are
written, so saving never holds a second copy of the model.

Reading verifies the manifest against the job and round asked for and each file against its
digest, so a truncated file, a file replaced by another valid ``.npz``, or another job's
checkpoint copied in is refused with the reason; :meth:`Checkpointer.latest` then falls back
to the newest good one. Loading uses ``allow_pickle=False``: a checkpoint cannot run code.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import blake3
import numpy as np

from fedcare.core.errors import StorageError
from fedcare.core.weights import ALLOWED_DTYPES, Weights

log = logging.getLogger(__name__)

#: Bumped when the manifest changes meaning; a manifest of another format is refused.
FORMAT = 1
_READ_BYTES = 1 << 20


class _HashingWriter:
    """Writes through to ``fh`` and hashes every byte on the way.

    It cannot seek, so ``zipfile`` streams each entry once, in order, with its sizes in a
    trailing data descriptor (which ``np.load`` reads), and never rewrites a header: the
    digest is exactly that of the file's bytes.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = blake3.blake3()
        self.size_bytes = 0

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        written = self._fh.write(data)
        self.size_bytes += written
        return written

    def tell(self) -> int:
        return self.size_bytes

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation("checkpoints are written in one pass")

    def flush(self) -> None:
        self._fh.flush()


def _fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (a file's own fsync does not)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> dict[str, object]:
    """Write ``path`` whole or not at all; its ``{"blake3", "size_bytes"}``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            hashing = _HashingWriter(fh)
            write(cast(BinaryIO, hashing))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk gets its space back
        raise
    return {"blake3": hashing.digest.hexdigest(), "size_bytes": hashing.size_bytes}


def _write_npz(fh: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """What ``np.savez`` writes (an uncompressed .npz that ``np.load`` reads), but each array's
    bytes go to the file straight from its memory: ``np.savez`` first copies every array into
    a temporary bytes object (16 MiB at a time), model-sized work and memory per checkpoint."""
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            array = np.asarray(array)
            with zf.open(name + ".npy", "w", force_zip64=True) as entry:
                if array.flags.c_contiguous and array.dtype in ALLOWED_DTYPES:
                    header = np.lib.format.header_data_from_array_1_0(array)
                    np.lib.format.write_array_header_1_0(entry, header)
                    entry.write(array.reshape(-1).data.cast("B"))
                else:  # anything else a strategy keeps in its state (dates, records, ...)
                    np.lib.format.write_array(entry, array, allow_pickle=False)


def _by_round(directory: Path, prefix: str, suffix: str = ".npz") -> list[tuple[int, Path]]:
    """``{prefix}NNNN{suffix}`` files, oldest round first (round10000 after round9999)."""
    found = []
    for path in directory.glob(f"{prefix}*{suffix}"):
        digits = path.name[len(prefix):-len(suffix)]
        if digits.isascii() and digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def _digest(path: Path) -> str:
    digest = blake3.blake3()
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class SavedRound:
    """A verified checkpoint: the model and strategy state after ``round_num``."""

    round_num: int
    weights: Weights
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)


class Checkpointer:
    """Keeps the newest ``keep`` checkpoints of one job in ``directory``.

    ``job_id`` is written into every manifest and required of every checkpoint read (None:
    any job's, for tools that only read a folder they were given).
    """

    def __init__(self, directory: Path, keep: int = 1, job_id: str | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)
        self.job_id = job_id

    @staticmethod
    def model_name(round_num: int) -> str:
        return f"global-round{round_num:04d}.npz"

    @staticmethod
    def manifest_name(round_num: int) -> str:
        return f"checkpoint-round{round_num:04d}.json"

    def save(self, round_num: int, weights: Weights,
             strategy_state: dict[str, np.ndarray] | None = None) -> Path:
        """Model (and the strategy's server state, if any) after ``round_num``.

        Any OSError (a full disk, a file-size limit, a folder that is not writable) is raised
        as a StorageError naming the file.
        """
        path = self.directory / self.model_name(round_num)
        try:
            files: dict[str, object] = {}
            if strategy_state:
                state_path = self.directory / f"strategy-round{round_num:04d}.npz"
                files[state_path.name] = _atomic_write(
                    state_path, lambda fh: _write_npz(fh, strategy_state))
            files[path.name] = _atomic_write(path, lambda fh: _write_npz(fh, dict(weights)))
            manifest = {"format": FORMAT, "job_id": self.job_id, "round_num": round_num,
                        "names": list(weights), "files": files}
            manifest_bytes = json.dumps(manifest, indent=1).encode()
            _atomic_write(self.directory / self.manifest_name(round_num),
                          lambda fh: fh.write(manifest_bytes))
            latest = json.dumps({"round_num": round_num, "file": path.name,
                                 "manifest": self.manifest_name(round_num)}).encode()
            _atomic_write(self.directory / "latest.json", lambda fh: fh.write(latest))
            self._prune()
        except OSError as exc:
            raise StorageError(f"cannot write checkpoint {path}: {exc.strerror or exc}",
                               job_id=self.job_id, round_num=round_num) from exc
        return path

    def _prune(self) -> None:
        """Drop all but the newest ``keep`` rounds, each manifest before its files."""
        kept = {r for r, _ in _by_round(self.directory, "checkpoint-round", ".json")
                [-self.keep:]}
        for prefix, suffix in (("checkpoint-round", ".json"), ("global-round", ".npz"),
                               ("strategy-round", ".npz")):
            for round_num, old in _by_round(self.directory, prefix, suffix):
                if round_num not in kept:
                    old.unlink(missing_ok=True)

    def read(self, round_num: int) -> SavedRound:
        """The verified checkpoint of ``round_num``; a StorageError says why there is none."""
        manifest_path = self.directory / self.manifest_name(round_num)
        try:
            manifest = json.loads(manifest_path.read_bytes())
        except FileNotFoundError:
            raise self._bad(manifest_path, "no manifest (the checkpoint was never completed)",
                            round_num) from None
        except (OSError, ValueError) as exc:
            raise self._bad(manifest_path, f"unreadable manifest: {exc}", round_num) from None
        problem = self._identity_problem(manifest, round_num)
        if problem:
            raise self._bad(manifest_path, problem, round_num)
        files: dict[str, dict[str, object]] = manifest["files"]
        model = self.model_name(round_num)
        if model not in files:
            raise self._bad(manifest_path, f"the manifest lists no {model}", round_num)
        for name, expected in files.items():
            path = self.directory / name
            try:
                problem = _file_problem(path, expected)
            except OSError as exc:  # e.g. a disk that fails to read it back
                problem = f"unreadable: {exc}"
            if problem:
                raise self._bad(path, problem, round_num)
        try:
            weights = load_weights(self.directory / model, order=list(manifest["names"]))
            state_name = f"strategy-round{round_num:04d}.npz"
            state = (_load_arrays(self.directory / state_name) if state_name in files
                     else {})
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise self._bad(self.directory / model, f"unreadable: {exc}", round_num) from None
        return SavedRound(round_num, weights, state)

    def _identity_problem(self, manifest: object, round_num: int) -> str | None:
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            return f"not a format-{FORMAT} checkpoint manifest"
        if self.job_id is not None and manifest.get("job_id") != self.job_id:
            return f"it belongs to job {manifest.get('job_id')!r}, not {self.job_id!r}"
        if manifest.get("round_num") != round_num:
            return f"it is the checkpoint of round {manifest.get('round_num')!r}, not {round_num}"
        files, names = manifest.get("files"), manifest.get("names")
        if not isinstance(files, dict) or not isinstance(names, list) or not all(
                isinstance(n, str) for n in names):
            return "the manifest lists no files or no names"
        allowed = {self.model_name(round_num), f"strategy-round{round_num:04d}.npz"}
        for name, entry in files.items():  # nothing outside this round's own files is read
            if name not in allowed or not isinstance(entry, dict):
                return f"the manifest lists {name!r}, not a file of round {round_num}"
        return None

    def _bad(self, path: Path, why: str, round_num: int) -> StorageError:
        return StorageError(f"checkpoint {path} is not usable: {why}", job_id=self.job_id,
                            round_num=round_num)

    def rounds(self) -> list[int]:
        """Rounds that have a checkpoint file or manifest here, oldest first (unverified)."""
        found = {r for prefix, suffix in (("checkpoint-round", ".json"),
                                          ("global-round", ".npz"))
                 for r, _ in _by_round(self.directory, prefix, suffix)}
        return sorted(found)

    def latest(self, max_round: int | None = None) -> SavedRound | None:
        """The newest good checkpoint (of a round up to ``max_round``), or None.

        Each newer one that fails verification is logged as a warning naming its file and
        why, and the one before it is tried.
        """
        for round_num in reversed(self.rounds()):
            if max_round is not None and round_num > max_round:
                continue
            try:
                return self.read(round_num)
            except StorageError as exc:
                log.warning("%s; falling back to an earlier checkpoint", exc)
        return None

    def discard_after(self, round_num: int) -> None:
        """Delete every checkpoint after ``round_num``: a resumed job runs those rounds again
        and must never find one of the run it abandoned."""
        for prefix, suffix in (("checkpoint-round", ".json"), ("global-round", ".npz"),
                               ("strategy-round", ".npz")):
            for number, path in _by_round(self.directory, prefix, suffix):
                if number > round_num:
                    path.unlink(missing_ok=True)

    def load(self, round_num: int) -> Weights | None:
        """The model saved after ``round_num``, if still kept (a bad one raises)."""
        if round_num not in self.rounds():
            return None
        return self.read(round_num).weights

    def load_strategy_state(self, round_num: int) -> dict[str, np.ndarray]:
        """The strategy state saved after ``round_num`` (empty if it had none)."""
        return self.read(round_num).strategy_state

    def load_latest(self) -> tuple[int, Weights] | None:
        saved = self.latest()
        return None if saved is None else (saved.round_num, saved.weights)


def _file_problem(path: Path, expected: dict[str, object]) -> str | None:
    """Why a checkpoint file does not match its manifest entry, or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    want = expected.get("size_bytes")
    if size != want:
        return f"{size} bytes, the manifest says {want} (truncated or replaced)"
    if _digest(path) != expected.get("blake3"):
        return "its BLAKE3 digest differs from the manifest's (the file was changed or replaced)"
    return None


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def load_weights(path: Path, order: list[str] | None = None) -> Weights:
    """Read a model saved by :class:`Checkpointer` (never unpickles)."""
    with np.load(path, allow_pickle=False) as data:
        names = order or list(data.files)
        return Weights({name: data[name] for name in names})


def save_weights(path: Path, weights: Weights) -> Path:
    """Write a model atomically as an .npz that :func:`load_weights` reads (in name order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda fh: _write_npz(fh, dict(weights)))
    return path
