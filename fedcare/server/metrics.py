"""Sample-weighted means of site metrics, accumulated one site at a time; ratio metrics and
AUCs from their summed parts (:mod:`fedcare.core.metric_parts`)."""

from __future__ import annotations

from collections.abc import Mapping

from fedcare.core.metric_parts import is_bin, is_part, pooled_metrics


class WeightedMetrics:
    """Running sum_k n_k * m_k / sum_k n_k for every metric name any site reported.

    Kept as a running mean (not a sum), so it stays within the range of the values folded in
    and cannot overflow, however large the sample counts. The parts of a ratio metric
    (``NAME.num``, ``NAME.den``) and of an AUC (``NAME.pos.B``, ``NAME.neg.B``) are summed
    instead, and ``NAME`` is combined from the sums: the metric of the federation's rows, not
    a mean of the sites' metrics. The result keeps the ratio parts but not the histogram bins
    (up to thousands per AUC; each site's record still holds its own).
    """

    def __init__(self) -> None:
        self._means: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._sums: dict[str, float] = {}

    def add(self, num_samples: int, metrics: Mapping[str, float]) -> None:
        if num_samples <= 0:
            return
        for name, value in metrics.items():
            if is_part(name):
                self._sums[name] = self._sums.get(name, 0.0) + float(value)
                continue
            count = self._counts.get(name, 0) + num_samples
            mean = self._means.get(name, 0.0)
            self._means[name] = mean + (float(value) - mean) * (num_samples / count)
            self._counts[name] = count

    def result(self) -> dict[str, float]:
        ratio_parts = {k: v for k, v in self._sums.items() if not is_bin(k)}
        return {**self._means, **ratio_parts, **pooled_metrics(self._sums)}
