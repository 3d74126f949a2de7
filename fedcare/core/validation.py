"""Checks applied to every model that arrives from a site, before it may touch the global model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcare.core.weights import Weights


def incompatibilities(reference: Weights, candidate: Mapping[str, np.ndarray]) -> list[str]:
    """Every way ``candidate`` differs from ``reference`` in names, shapes or dtypes.

    Returns human-readable problems (empty when compatible), so the error can name them all at
    once instead of making an operator fix them one round at a time.
    """
    problems: list[str] = []
    missing = [n for n in reference if n not in candidate]
    unexpected = [n for n in candidate if n not in reference]
    if missing:
        problems.append(f"missing parameters {missing}")
    if unexpected:
        problems.append(f"unexpected parameters {unexpected}")
    for name in reference:
        if name not in candidate:
            continue
        want, got = reference[name], np.asarray(candidate[name])
        if got.shape != want.shape:
            problems.append(f"{name}: shape {list(got.shape)}, expected {list(want.shape)}")
        if got.dtype != want.dtype:
            problems.append(f"{name}: dtype {got.dtype}, expected {want.dtype}")
    return problems


def non_finite(weights: Mapping[str, np.ndarray]) -> list[str]:
    """Names of floating-point parameters that hold NaN or infinity."""
    bad = []
    for name, array in weights.items():
        a = np.asarray(array)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad.append(name)
    return bad
