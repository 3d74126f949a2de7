"""The wire form of an int8-quantised training update: a quarter of float32's bytes.

A site's ``int8_update`` filter sends, for each floating-point parameter ``name`` of the global
model, the update (trained minus global model) rounded to 255 symmetric levels as an int8
tensor under ``name``, and its scale (``max|update| / 127``, float64, shape ``()``) under
``SCALE_PREFIX + name``. The server, which sent the global model, rebuilds
``global + q * scale`` in the parameter's own dtype before anything else sees the result
(:func:`dequantise`); every element is within ``scale / 2`` of the trained value (plus the
rounding of the final dtype). Parameters the global model lacks and integer ones travel as
they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedcare.core.weights import Weights

SCALE_PREFIX = "fedcare.int8_scale."
LEVELS = 127


def is_quantised(weights: Mapping[str, np.ndarray]) -> bool:
    """True when ``weights`` carry int8-quantised parameters (their scales)."""
    return any(name.startswith(SCALE_PREFIX) for name in weights)


def quantise(trained: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray]) -> Weights:
    """``trained`` with each floating-point parameter of ``start`` sent as an int8 update."""
    out: dict[str, np.ndarray] = {}
    for name, value in trained.items():
        if name not in start or not np.issubdtype(value.dtype, np.floating):
            out[name] = value
            continue
        update = np.asarray(value, np.float64) - np.asarray(start[name], np.float64)
        peak = float(np.max(np.abs(update))) if update.size else 0.0
        scale = peak / LEVELS
        levels = (np.rint(update / scale) if scale > 0 else np.zeros_like(update))
        out[name] = np.clip(levels, -LEVELS, LEVELS).astype(np.int8)
        out[SCALE_PREFIX + name] = np.array(scale, np.float64)
    return Weights(out)


def dequantise(received: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray]) -> Weights:
    """The parameters a quantised result stands for, rebuilt on ``start`` (the model the site
    was sent). ValueError, naming the tensor, for a result that does not fit it."""
    out = {k: v for k, v in received.items() if not k.startswith(SCALE_PREFIX)}
    for key, scale_array in received.items():
        if not key.startswith(SCALE_PREFIX):
            continue
        name = key[len(SCALE_PREFIX):]
        base = start.get(name)
        if base is None or not np.issubdtype(base.dtype, np.floating):
            raise ValueError(f"int8 update: {name!r} is not a floating-point parameter of the "
                             "model the site was sent")
        levels = received.get(name)
        if levels is None or levels.dtype != np.int8 or levels.shape != base.shape:
            raise ValueError(f"int8 update: {name!r} must be int8 of shape {list(base.shape)} "
                             "beside its scale")
        scale = float(scale_array) if scale_array.size == 1 and np.issubdtype(
            scale_array.dtype, np.floating) else math.nan
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"int8 update: the scale of {name!r} must be one finite number "
                             ">= 0")
        if np.any(levels == np.iinfo(np.int8).min):
            raise ValueError(f"int8 update: {name!r} holds -128, outside the {LEVELS} levels")
        rebuilt = np.asarray(base, np.float64) + levels.astype(np.float64) * scale
        with np.errstate(over="ignore"):
            out[name] = rebuilt.astype(base.dtype)
        if not np.isfinite(out[name]).all():  # a whole result skips the streamed checks
            raise ValueError(f"int8 update: the scale of {name!r} ({scale:.3g}) overflows "
                             f"{base.dtype}")
    missing = [k for k, v in out.items() if v.dtype == np.int8 and k in start
               and start[k].dtype != np.int8]
    if missing:
        raise ValueError(f"int8 update: {missing[:3]} sent as int8 without a scale")
    return Weights(out)
