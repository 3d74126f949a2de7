"""Summing additive site statistics for federated-statistics tasks."""

from __future__ import annotations

import numpy as np

from fedcare.algorithms.fedavg import accumulate
from fedcare.core.errors import AggregationError
from fedcare.core.job import FederatedStatistic
from fedcare.core.validation import incompatibilities, non_finite
from fedcare.core.weights import Weights


class SumAggregator:
    """Elementwise float64 sums of every site's statistics, folded in as they arrive.

    Every site must send the names, shapes and dtypes of ``spec`` when one is given. Without a
    spec (FederatedStatistic declares none yet) the first valid result sets them, so a site that
    answers first with a malformed result gets the honest sites after it refused.
    """

    def __init__(self, spec: Weights | None = None) -> None:
        self._acc: dict[str, np.ndarray] = {}
        self._like: Weights | None = spec
        self.num_samples = 0
        self.num_results = 0

    def add(self, values: Weights, num_samples: int) -> None:
        if self._like is None:
            self._like = values
        else:
            problems = incompatibilities(self._like, values)
            if problems:
                raise ValueError("statistics do not match other sites: " + "; ".join(problems))
        with np.errstate(over="ignore"):  # an overflowing sum is refused by finalize
            accumulate(self._acc, values, 1.0)
        self.num_samples += num_samples
        self.num_results += 1

    def totals(self) -> Weights:
        return Weights(self._acc)

    def finalize(self, statistic: FederatedStatistic, weights: Weights) -> Weights:
        """``statistic.finalize`` on the totals, refused (AggregationError) unless the totals
        and the updated model are finite and the total count positive."""
        if self.num_results == 0 or self.num_samples <= 0:
            raise AggregationError(f"statistic {statistic.name}: total count is "
                                   f"{self.num_samples} from {self.num_results} site(s)")
        totals = self.totals()
        bad = non_finite(totals)
        if bad:
            raise AggregationError(f"statistic {statistic.name}: sums overflow in {bad}")
        with np.errstate(all="ignore"):  # a zero count divides: reported below, not warned
            result = Weights(statistic.finalize(totals, self.num_samples, weights))
        bad = non_finite(result)
        if bad:
            raise AggregationError(f"statistic {statistic.name}: finalize gave NaN or infinity "
                                   f"in {bad} (e.g. a site sent a negative count)")
        return result
