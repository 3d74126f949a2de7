"""Fixed-point encoding of weighted model updates in the integers mod 2**32.

Masks only cancel in a finite group, so each site sends its update as integers mod 2**32. Site
k encodes ``w_k * clip(d_k, -c, c)``, its update ``d_k`` (trained model minus the global
model) clipped element-wise to ``[-c, c]`` and weighted by ``w_k = n_k / N`` (its samples over
those of every site in the round, so the weights sum to at most 1), as
``round(w_k * clip(d_k) * scale) mod 2**32``. The sum of any subset of sites then lies in
``[-(c * scale + n / 2), c * scale + n / 2]``, which ``scale = (2**31 - 1 - n) / c`` keeps
inside the signed 32-bit range: the server reads the modular sum back as a signed integer
without ambiguity.

Bound: each site rounds once, by at most 1/2, so the decoded weighted mean of the ``m`` sites
that were summed, ``sum_k q_k / (scale * W)`` with ``W = sum_k w_k``, is within
``m / (2 * scale * W)`` of the exact weighted mean of their clipped updates (see
:func:`error_bound`); for ``c = 1`` and 100 sites of equal size that is 2.4e-8 per element.
Values beyond ``+-c`` are clipped (counted, and reported by the site in its metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MODULUS_BITS = 32
DTYPE = np.dtype(np.uint32)
_LIMIT = 2**31 - 1
#: Elements encoded at a time (512 KiB of float64: stays in cache).
_BLOCK = 1 << 16


@dataclass(frozen=True)
class FixedPoint:
    """The encoding of one round: its clipping bound and the number of sites taking part."""

    clip: float
    num_sites: int

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip)
                and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        if not 1 <= self.num_sites < 2**20:
            raise ValueError(f"num_sites must be in 1..2**20, got {self.num_sites}")

    @property
    def scale(self) -> float:
        return (_LIMIT - self.num_sites) / self.clip

    def encode(self, update: np.ndarray, weight: float, out: np.ndarray,
               start: np.ndarray | None = None) -> int:
        """``out`` (flat uint32) = the encoding of ``update - start`` (``start`` zero by
        default; any float or integer arrays of one shape) with ``weight`` in (0, 1]; returns
        how many elements were clipped. Works block by block, in cache."""
        if not 0 < weight <= 1:
            raise ValueError(f"a site's weight must be in (0, 1], got {weight}")
        factor = weight * self.scale
        bound = self.clip * factor  # clip(d) * factor == clip(d * factor, +-bound), exactly
        flat = np.asarray(update).reshape(-1)
        base = None if start is None else np.asarray(start).reshape(-1)
        if out.shape != flat.shape or (base is not None and base.shape != flat.shape):
            raise ValueError(f"encode: shapes differ ({flat.shape}, {out.shape})")
        size = min(_BLOCK, flat.size)
        scaled, whole = np.empty(size, np.float64), np.empty(size, np.int64)
        clipped = 0
        for at in range(0, flat.size, _BLOCK):
            stop = min(at + _BLOCK, flat.size)
            block, ints = scaled[:stop - at], whole[:stop - at]
            if base is None:
                np.copyto(block, flat[at:stop], casting="unsafe")
            else:
                np.subtract(flat[at:stop], base[at:stop], out=block, dtype=np.float64)
            block *= factor
            clipped += int(np.count_nonzero(block > bound) + np.count_nonzero(block < -bound))
            np.clip(block, -bound, bound, out=block)
            np.rint(block, out=block)
            np.copyto(ints, block, casting="unsafe")
            np.copyto(out[at:stop], ints, casting="unsafe")  # mod 2**32: two's complement
        return clipped

    def decode(self, total: np.ndarray, weight_sum: float) -> np.ndarray:
        """The weighted mean (float64) of the updates summed into ``total`` (flat uint32),
        whose weights add up to ``weight_sum``."""
        signed = total.view(np.int32).astype(np.float64)
        signed /= self.scale * weight_sum
        return signed

    def error_bound(self, num_summed: int, weight_sum: float) -> float:
        """The largest difference, per element, between a decoded mean of ``num_summed``
        sites and the exact weighted mean of their clipped updates."""
        return num_summed / (2 * self.scale * weight_sum)
