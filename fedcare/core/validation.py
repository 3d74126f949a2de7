"""Checks applied to every model that arrives from a site, before it may touch the global model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from fedcare.core.weights import TensorSpec, Weights


class _Described(NamedTuple):
    """A tensor known by its header only (its bytes have not arrived yet)."""

    shape: tuple[int, ...]
    dtype: np.dtype


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
        want, got = reference[name], candidate[name]
        if not isinstance(got, _Described):
            got = np.asarray(got)
        if got.shape != want.shape:
            problems.append(f"{name}: shape {list(got.shape)}, expected {list(want.shape)}")
        if got.dtype != want.dtype and not _widened(want.dtype, got.dtype):
            problems.append(f"{name}: dtype {got.dtype}, expected {want.dtype}")
    return problems


def _widened(want: np.dtype, got: np.dtype) -> bool:
    """A float32 or float64 parameter a site sent in half precision (its ``half_precision``
    filter, to halve what leaves it): aggregation widens it again, in float64 sums."""
    return got == np.float16 and want in (np.float32, np.float64)


def non_finite(weights: Mapping[str, np.ndarray]) -> list[str]:
    """Names of floating-point parameters that hold NaN or infinity."""
    bad = []
    for name, array in weights.items():
        a = np.asarray(array)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad.append(name)
    return bad


def spec_incompatibilities(reference: Weights, specs: Sequence[TensorSpec]) -> list[str]:
    """:func:`incompatibilities` of a model described by its tensors' names, dtypes and shapes."""
    described = {s.name: _Described(tuple(s.shape), np.dtype(s.dtype)) for s in specs}
    problems = incompatibilities(reference, described)  # type: ignore[arg-type]
    if len(described) != len(specs):
        problems.append("a parameter appears twice")
    return problems
