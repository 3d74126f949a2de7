"""Model-sized memory handed out again once nothing uses it any more.

On some machines (virtual ones especially) fresh memory is far dearer than the work done in it:
the first touch of every page faults, 0.1-0.3 s per 100 MB measured on the 2-core benchmark VM,
against 12 ms to copy 100 MB into memory already touched. A round that writes each new global
model into fresh memory pays that every round; a :class:`BufferPool` lets it write into the
memory of a model that is no longer referenced anywhere instead.

A buffer is reused only when no array views it (``mmap.resize`` refuses while any buffer export
is alive), so nothing that still holds an old model can ever see it change.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence

import numpy as np

from fedcare.core.weights import TensorSpec

_ALIGN = 64


class BufferPool:
    """Up to ``keep`` memory maps, each carved into the tensors of one model."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._maps: list[mmap.mmap] = []

    def arrays(self, specs: Sequence[TensorSpec]) -> list[np.ndarray]:
        """Writable arrays of the given specs, backed by one map nobody else uses."""
        offsets, total = [], 0
        for spec in specs:
            offsets.append(total)
            nbytes = math.prod(spec.shape) * np.dtype(spec.dtype).itemsize
            total += -(-nbytes // _ALIGN) * _ALIGN
        buffer = self._free(max(total, 1))
        return [np.frombuffer(buffer, np.dtype(s.dtype), math.prod(s.shape), at).reshape(s.shape)
                for s, at in zip(specs, offsets, strict=True)]

    def _free(self, size: int) -> mmap.mmap:
        for buffer in self._maps:
            if len(buffer) == size and _unused(buffer):
                return buffer
        buffer = mmap.mmap(-1, size)
        self._maps.append(buffer)
        if len(self._maps) > self.keep:  # forget the oldest: it goes when its last user does
            self._maps.pop(0)
        return buffer


def _unused(buffer: mmap.mmap) -> bool:
    try:
        buffer.resize(len(buffer))  # BufferError while any array (or memoryview) views it
    except (BufferError, OSError, SystemError, ValueError):  # in use, or no mremap
        return False
    return True
