"""Building a ready-made job's strategy from its ``algorithm`` name, with one-line errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.core.strategy import Strategy


def build_strategy(job: str, algorithms: Mapping[str, Callable[..., Strategy]], algorithm: str,
                   seed: int, train_config: Mapping[str, object],
                   params: Mapping[str, Any] | None = None) -> Strategy:
    """``algorithms[algorithm](seed=..., train_config=..., **params)``; a ConfigError naming
    the job when the name is unknown or the parameters do not fit."""
    if algorithm not in algorithms:
        raise ConfigError(f"{job} job: algorithm must be one of {sorted(algorithms)}, got "
                          f"{algorithm!r}")
    try:
        return algorithms[algorithm](seed=seed, train_config=dict(train_config),
                                     **dict(params or {}))
    except TypeError as exc:
        raise ConfigError(f"{job} job: bad algorithm_params for {algorithm}: {exc}") from None
