"""Where a medical trainer computes, and how it stays repeatable.

A GPU is used when one is present (CUDA, with mixed precision for the forward pass); otherwise
the CPU in float32. ``seeded`` makes a run repeatable on the CPU (MONAI's ``set_determinism``
seeds Python, numpy and torch and asks cuDNN for deterministic kernels on a GPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from monai.utils import set_determinism


@dataclass(frozen=True)
class Compute:
    """The device a trainer runs on and whether it uses automatic mixed precision."""

    device: torch.device
    amp: bool

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Mixed precision on CUDA; a no-op on the CPU (bfloat16 autocast slows small 3D nets)."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()


def pick_compute(device: str = "auto", amp: bool | None = None) -> Compute:
    """``device``: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".

    ``amp`` defaults to True on CUDA and is refused on the CPU.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    on_gpu = device.startswith("cuda")
    if amp and not on_gpu:
        raise ValueError("amp (mixed precision) needs a CUDA device; this trainer runs on the CPU")
    return Compute(torch.device(device), on_gpu if amp is None else amp)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, numpy and torch for the block (MONAI's set_determinism), then release."""
    set_determinism(seed=seed)
    try:
        yield
    finally:
        set_determinism(seed=None)
