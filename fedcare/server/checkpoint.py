"""Global-model checkpoints: one .npz per completed round, replaced atomically.

Files are written to a temporary name and renamed, and ``latest.json`` is updated only after the
model file is complete, so a crash at any moment leaves the last good checkpoint readable. Loading
uses ``allow_pickle=False``: a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedcare.core.weights import ALLOWED_DTYPES, Weights


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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


def _by_round(directory: Path, prefix: str) -> list[Path]:
    """``{prefix}NNNN.npz`` files, oldest round first (by number: round10000 after round9999)."""
    found = []
    for path in directory.glob(f"{prefix}*.npz"):
        digits = path.name[len(prefix):-len(".npz")]
        if digits.isascii() and digits.isdigit():
            found.append((int(digits), path))
    return [path for _, path in sorted(found)]


class Checkpointer:
    """Keeps the newest global model of a run in ``directory``."""

    def __init__(self, directory: Path, keep: int = 1) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)

    def save(self, round_num: int, weights: Weights,
             strategy_state: dict[str, np.ndarray] | None = None) -> Path:
        """Model (and the strategy's server state, if any) after ``round_num``."""
        name = f"global-round{round_num:04d}.npz"
        path = self.directory / name
        if strategy_state:
            state_path = self.directory / f"strategy-round{round_num:04d}.npz"
            _atomic_write(state_path, lambda fh: _write_npz(fh, strategy_state))
        _atomic_write(path, lambda fh: _write_npz(fh, dict(weights)))
        meta = {"round_num": round_num, "file": name, "names": list(weights)}
        meta_bytes = json.dumps(meta).encode()
        _atomic_write(self.directory / "latest.json", lambda fh: fh.write(meta_bytes))
        for prefix in ("global-round", "strategy-round"):
            for old in _by_round(self.directory, prefix)[:-self.keep]:
                old.unlink(missing_ok=True)
        return path

    def load_strategy_state(self, round_num: int) -> dict[str, np.ndarray]:
        """The strategy state saved after ``round_num`` (empty if it had none)."""
        path = self.directory / f"strategy-round{round_num:04d}.npz"
        if not path.exists():
            return {}
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def load(self, round_num: int) -> Weights | None:
        """The model saved after ``round_num``, if still kept."""
        path = self.directory / f"global-round{round_num:04d}.npz"
        return load_weights(path) if path.exists() else None

    def latest_path(self) -> Path | None:
        meta = self.directory / "latest.json"
        if not meta.exists():
            return None
        name: str = json.loads(meta.read_text())["file"]
        return self.directory / name

    def load_latest(self) -> tuple[int, Weights] | None:
        meta_path = self.directory / "latest.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        return meta["round_num"], load_weights(self.directory / meta["file"], order=meta["names"])


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
