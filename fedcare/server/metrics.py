"""Sample-weighted means of site metrics, accumulated one site at a time; ratio metrics
from their summed parts (:mod:`fedcare.core.metric_parts`)."""

from __future__ import annotations

from collections.abc import Mapping

from fedcare.core.metric_parts import DENOMINATOR, NUMERATOR, pooled_ratios


class WeightedMetrics:
    """Running sum_k n_k * m_k / sum_k n_k for every metric name any site reported.

    Kept as a running mean (not a sum), so it stays within the range of the values folded in
    and cannot overflow, however large the sample counts. The parts of a ratio metric
    (``NAME.num``, ``NAME.den``) are summed instead, and ``NAME`` is their ratio: the metric
    of the federation's rows, not a mean of the sites' metrics.
    """

    def __init__(self) -> None:
        self._means: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._sums: dict[str, float] = {}

    def add(self, num_samples: int, metrics: Mapping[str, float]) -> None:
        if num_samples <= 0:
            return
        for name, value in metrics.items():
            if name.endswith((NUMERATOR, DENOMINATOR)):
                self._sums[name] = self._sums.get(name, 0.0) + float(value)
                continue
            count = self._counts.get(name, 0) + num_samples
            mean = self._means.get(name, 0.0)
            self._means[name] = mean + (float(value) - mean) * (num_samples / count)
            self._counts[name] = count

    def result(self) -> dict[str, float]:
        return {**self._means, **self._sums, **pooled_ratios(self._sums)}
