"""Sample-weighted means of site metrics, accumulated one site at a time."""

from __future__ import annotations

from collections.abc import Mapping


class WeightedMetrics:
    """Running sum_k n_k * m_k / sum_k n_k for every metric name any site reported."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, num_samples: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self._sums[name] = self._sums.get(name, 0.0) + num_samples * float(value)
            self._counts[name] = self._counts.get(name, 0) + num_samples

    def result(self) -> dict[str, float]:
        return {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts[k] > 0}
