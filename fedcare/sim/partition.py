"""Split one pooled data set into simulated hospital sites.

Federated algorithms behave very differently on IID and non-IID data, so simulations need control
over *how* sites differ. Every simulated partitioner here keeps the same invariants, which callers
(and the tests) rely on:

* the result is one int64 index array per site, sorted ascending;
* the arrays are disjoint and their union is exactly ``range(n)``: no sample is dropped or
  duplicated, so pooled and federated metrics are computed over the same rows;
* the output is a pure function of the arguments, drawn from ``numpy.random.default_rng(seed)``.

:func:`natural` is the exception: it is not a simulation but the real split, one site per group
value (e.g. the hospital each row came from).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from fedcare.core.errors import ConfigError

__all__ = ["iid", "label_skew", "natural", "quantity_skew"]

MAX_ATTEMPTS = 1000
"""Dirichlet draws tried before giving up on ``min_size``; bounds run time on infeasible asks."""


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_sites(num_samples: int, num_sites: int) -> None:
    num_samples = _check_int("num_samples", num_samples)
    num_sites = _check_int("num_sites", num_sites)
    if num_sites < 1:
        raise ConfigError(f"num_sites must be >= 1, got {num_sites}")
    if num_sites > num_samples:
        raise ConfigError(
            f"num_sites ({num_sites}) must be <= num_samples ({num_samples}): "
            "every site needs at least one sample"
        )


def _check_dirichlet(num_samples: int, num_sites: int, alpha: float, min_size: int) -> None:
    _check_sites(num_samples, num_sites)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.integer | np.floating):
        raise ConfigError(f"alpha must be a number, got {alpha!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha must be > 0 and finite, got {alpha!r}")
    min_size = _check_int("min_size", min_size)
    if min_size < 0:
        raise ConfigError(f"min_size must be >= 0, got {min_size}")
    if min_size * num_sites > num_samples:
        raise ConfigError(
            f"min_size * num_sites ({min_size} * {num_sites} = {min_size * num_sites}) "
            f"must be <= num_samples ({num_samples})"
        )


def _split(indices: np.ndarray, proportions: np.ndarray) -> list[np.ndarray]:
    """Cut ``indices`` into ``len(proportions)`` consecutive runs sized by the proportions.

    Cutting at rounded cumulative positions (rather than rounding each size) guarantees the run
    lengths sum to ``len(indices)`` exactly, whatever the floating-point error in the proportions.
    """
    cuts = np.round(np.cumsum(proportions)[:-1] * len(indices)).astype(np.int64)
    return np.split(indices, cuts)


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(part).astype(np.int64, copy=False) for part in parts]


def _give_up(what: str, alpha: float, min_size: int) -> ConfigError:
    return ConfigError(
        f"{what}: no Dirichlet(alpha={alpha}) draw in {MAX_ATTEMPTS} attempts gave every site "
        f">= min_size={min_size} samples; increase alpha or lower min_size"
    )


def iid(num_samples: int, num_sites: int, *, seed: int) -> list[np.ndarray]:
    """Shuffle all samples and deal them into near-equal sites.

    Site sizes differ by at most one; this is the baseline every non-IID result is compared to.
    """
    _check_sites(num_samples, num_sites)
    rng = np.random.default_rng(seed)
    return _finish(np.array_split(rng.permutation(num_samples), num_sites))


def label_skew(
    labels: np.ndarray, num_sites: int, *, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Dirichlet label skew (Hsu et al. 2019, as in FedLab).

    For every class, the share each site receives is drawn from ``Dir(alpha * ones(num_sites))``
    and that class's shuffled indices are cut accordingly. Small ``alpha`` (e.g. 0.1) gives most of
    a class to one or two sites (strong skew); large ``alpha`` (e.g. 100) approaches IID.

    Because a skewed draw can leave a site (almost) empty, the whole assignment is redrawn until
    every site has at least ``min_size`` samples, up to ``MAX_ATTEMPTS`` times; redraws use the same
    generator, so the result stays deterministic.

    Raises:
        ConfigError: if an argument is invalid, or no draw satisfies ``min_size``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {labels.shape}")
    _check_dirichlet(len(labels), num_sites, alpha, min_size)
    rng = np.random.default_rng(seed)
    class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    concentration = np.full(num_sites, float(alpha))
    for _ in range(MAX_ATTEMPTS):
        per_site: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for indices in class_indices:
            shuffled = rng.permutation(indices)
            for site, chunk in enumerate(_split(shuffled, rng.dirichlet(concentration))):
                per_site[site].append(chunk)
        parts = [np.concatenate(chunks) for chunks in per_site]
        if min(len(part) for part in parts) >= min_size:
            return _finish(parts)
    raise _give_up("label_skew", alpha, min_size)


def quantity_skew(
    num_samples: int, num_sites: int, *, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Dirichlet quantity skew: sites differ in size, not in label mix.

    Site sizes are proportional to one ``Dir(alpha * ones(num_sites))`` draw and samples are
    assigned at random, so each site's labels are IID. This models a few large academic hospitals
    next to many small clinics. Draws are repeated until every site has ``min_size`` samples, up to
    ``MAX_ATTEMPTS`` times.

    Raises:
        ConfigError: if an argument is invalid, or no draw satisfies ``min_size``.
    """
    _check_dirichlet(num_samples, num_sites, alpha, min_size)
    rng = np.random.default_rng(seed)
    concentration = np.full(num_sites, float(alpha))
    for _ in range(MAX_ATTEMPTS):
        parts = _split(rng.permutation(num_samples), rng.dirichlet(concentration))
        if min(len(part) for part in parts) >= min_size:
            return _finish(parts)
    raise _give_up("quantity_skew", alpha, min_size)


def natural(groups: Sequence[Hashable] | np.ndarray) -> dict[Hashable, np.ndarray]:
    """Partition by an existing group column, e.g. the hospital each row came from.

    This is the real-world split, not a simulation: one entry per distinct group value, keyed in
    order of first appearance so that site order is stable across runs. NumPy scalars become plain
    Python values (``np.str_("va")`` -> ``"va"``) so keys compare and print as users expect.

    Raises:
        ConfigError: if ``groups`` is a NumPy array that is not 1-D.
    """
    if isinstance(groups, np.ndarray):
        if groups.ndim != 1:
            raise ConfigError(f"groups must be 1-D, got shape {groups.shape}")
        groups = groups.tolist()
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    return {group: np.asarray(rows, dtype=np.int64) for group, rows in members.items()}
