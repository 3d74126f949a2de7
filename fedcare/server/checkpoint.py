"""Global-model checkpoints: one .npz per completed round, replaced atomically.

Files are written to a temporary name and renamed, and ``latest.json`` is updated only after the
model file is complete, so a crash at any moment leaves the last good checkpoint readable. Loading
uses ``allow_pickle=False``: a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedcare.core.weights import Weights


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Checkpointer:
    """Keeps the newest global model of a run in ``directory``."""

    def __init__(self, directory: Path, keep: int = 1) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)

    def save(self, round_num: int, weights: Weights) -> Path:
        name = f"global-round{round_num:04d}.npz"
        path = self.directory / name
        _atomic_write(path, lambda fh: np.savez(fh, **dict(weights)))
        meta = {"round_num": round_num, "file": name, "names": list(weights)}
        meta_bytes = json.dumps(meta).encode()
        _atomic_write(self.directory / "latest.json", lambda fh: fh.write(meta_bytes))
        for old in sorted(self.directory.glob("global-round*.npz"))[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load(self, round_num: int) -> Weights | None:
        """The model saved after ``round_num``, if still kept."""
        path = self.directory / f"global-round{round_num:04d}.npz"
        return load_weights(path) if path.exists() else None

    def latest_path(self) -> Path | None:
        meta = self.directory / "latest.json"
        if not meta.exists():
            return None
        return self.directory / json.loads(meta.read_text())["file"]

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
