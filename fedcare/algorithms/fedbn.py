"""FedBN (Li et al. 2021): batch-normalisation layers stay at each site; the rest is FedAvg.

Hospitals' scanners and populations differ in feature statistics; keeping normalisation local
lets each site normalise its own data while sharing everything else. The strategy names the
local parameters (regular expressions searched in parameter names, batch-norm by default) and
sends the patterns with every task; the site agent strips those parameters from what leaves
the site, and :func:`fedcare.pytorch.set_weights` keeps the site's own values when loading the
global model (``keep=``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from fedcare.algorithms.fedavg import FedAvg
from fedcare.core.errors import ConfigError
from fedcare.core.weights import Weights

DEFAULT_LOCAL = (r"(^|\.)bn\d*\.", r"(^|\.)norm\d*\.", r"batchnorm", r"running_(mean|var)",
                 r"num_batches_tracked")


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


class FedBN(FedAvg):
    """FedAvg whose parameters matching ``local_layers`` never leave the sites."""

    def __init__(self, *, local_layers: Sequence[str] = DEFAULT_LOCAL, **kwargs: Any) -> None:
        patterns = list(local_layers)
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ConfigError(f"FedBN: bad local_layers pattern {p!r}: {exc}") from None
        if not patterns:
            raise ConfigError("FedBN: local_layers is empty (that is FedAvg)")
        super().__init__(**kwargs)
        self.local_layers = patterns

    def local_names(self, global_weights: Weights) -> frozenset[str]:
        return frozenset(n for n in global_weights if matches(n, self.local_layers))

