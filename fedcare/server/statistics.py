"""Summing additive site statistics for federated-statistics tasks."""

from __future__ import annotations

import numpy as np

from fedcare.algorithms.fedavg import accumulate
from fedcare.core.validation import incompatibilities
from fedcare.core.weights import Weights


class SumAggregator:
    """Elementwise float64 sums of every site's statistics, folded in as they arrive."""

    def __init__(self) -> None:
        self._acc: dict[str, np.ndarray] = {}
        self._like: Weights | None = None
        self.num_samples = 0
        self.num_results = 0

    def add(self, values: Weights, num_samples: int) -> None:
        if self._like is None:
            self._like = values
        else:
            problems = incompatibilities(self._like, values)
            if problems:
                raise ValueError("statistics do not match other sites: " + "; ".join(problems))
        accumulate(self._acc, values, 1.0)
        self.num_samples += num_samples
        self.num_results += 1

    def totals(self) -> Weights:
        return Weights(self._acc)
