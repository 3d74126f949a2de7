"""The server's sum of masked updates: uint32 values added mod 2**32 as their chunks arrive.

Secure aggregation's uploads are uniformly random-looking integers whose masks cancel only in
the sum, so the server keeps one running modular sum, model-sized in uint32 (the size of a
float32 model), and folds each upload in run by run as the transport receives it, like
:class:`~fedcare.algorithms.fedavg.WeightedMeanAggregator` does with floats: memory does not
grow with the number of sites. An upload that is not accepted is subtracted back out, exactly
(modular arithmetic has no rounding); for that a stream keeps a copy of what it folded in, in
one model-sized buffer shared by the streams one after the other (the transport folds one
upload at a time), and that buffer becomes the memory of the next global model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcare.core.buffers import BufferPool
from fedcare.core.message import TrainResult
from fedcare.core.secagg.fixedpoint import DTYPE
from fedcare.core.strategy import Aggregator
from fedcare.core.stream import UpdateStream
from fedcare.core.weights import TensorSpec, Weights


class MaskedSumAggregator(Aggregator):
    """The modular sum of one round's masked uploads, and which sites are in it.

    Args:
        specs: The model's parameters (names, shapes); uploads are these in uint32.
        pool: Where the shared undo buffer comes from (and, through :meth:`spare`, goes).
        sum_pool: Where the sums' memory comes from: last round's, once nothing holds it
            (fresh memory costs page faults that dwarf the additions).
    """

    def __init__(self, specs: Sequence[TensorSpec], pool: BufferPool | None = None,
                 sum_pool: BufferPool | None = None) -> None:
        self.specs = [TensorSpec(s.name, DTYPE.str, tuple(s.shape)) for s in specs]
        self._pool = pool or BufferPool(keep=0)
        self.sums = [a.reshape(-1) for a in (sum_pool or BufferPool(keep=0)).arrays(self.specs)]
        for total in self.sums:
            total.fill(0)
        self.sites: list[str] = []
        self._undo: list[np.ndarray] | None = None
        self._undo_busy = False

    def expected(self) -> Weights:
        """What an upload must look like (names, uint32, shapes), without its memory."""
        return Weights.adopt({s.name: np.broadcast_to(np.zeros((), DTYPE), s.shape)
                              for s in self.specs})

    def add(self, site_id: str, result: TrainResult) -> None:
        for total, spec in zip(self.sums, self.specs, strict=True):
            values = np.asarray(result.weights[spec.name])
            if values.dtype != DTYPE or values.shape != spec.shape:
                raise ValueError(f"{spec.name}: expected masked uint32{list(spec.shape)}, got "
                                 f"{values.dtype}{list(values.shape)}")
            np.add(total, values.reshape(-1), out=total)  # wraps: mod 2**32
        self.sites.append(site_id)

    def stream(self, site_id: str, num_samples: int,
               specs: Sequence[TensorSpec]) -> UpdateStream | None:
        if self._undo_busy:  # another upload in flight: this one gets memory of its own
            undo = [np.empty(t.size, DTYPE) for t in self.sums]
            return _MaskedStream(self, site_id, undo, shared=False)
        if self._undo is None:
            self._undo = [a.reshape(-1) for a in self._pool.arrays(self.specs)]
        self._undo_busy = True
        return _MaskedStream(self, site_id, self._undo, shared=True)

    @property
    def num_results(self) -> int:
        return len(self.sites)

    def finish(self) -> Weights:
        """The modular sums (still masked), shaped like the model."""
        return Weights.adopt({s.name: t.reshape(s.shape)
                              for s, t in zip(self.specs, self.sums, strict=True)})

    def spare(self) -> list[np.ndarray] | None:
        """The shared undo buffer once no stream uses it (flat uint32, one per parameter),
        for the caller to write the new model into; None if there is none."""
        if self._undo_busy:
            return None
        undo, self._undo = self._undo, None
        return undo


class _MaskedStream(UpdateStream):
    def __init__(self, owner: MaskedSumAggregator, site_id: str, undo: list[np.ndarray],
                 *, shared: bool) -> None:
        self._owner = owner
        self._site_id = site_id
        self._undo = undo
        self._shared = shared
        self._written: list[tuple[int, int, int]] = []

    def write(self, index: int, start: int, values: np.ndarray) -> None:
        if values.dtype != DTYPE:
            raise ValueError(f"expected masked uint32 values, got {values.dtype}")
        stop = start + values.size
        self._undo[index][start:stop] = values
        self._written.append((index, start, stop))
        target = self._owner.sums[index][start:stop]
        np.add(target, values, out=target)

    def commit(self) -> None:
        self._owner.sites.append(self._site_id)
        self._finish()

    def discard(self) -> None:
        for index, start, stop in reversed(self._written):
            target = self._owner.sums[index][start:stop]
            np.subtract(target, self._undo[index][start:stop], out=target)
        self._finish()

    def _finish(self) -> None:
        self._written, self._undo = [], []
        if self._shared:
            self._owner._undo_busy = False
