"""The server half of federated statistics: what each pass makes of the summed totals.

Each pass adds its results to the model that flows through the job under fixed names
(``mean``, ``count``, ``variance``, ``std``, ``histogram``, ``missing``), so a later pass (the
variance needs the mean) and the job's result can use them.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar

import numpy as np

from fedcare.core.errors import AggregationError
from fedcare.core.message import Config
from fedcare.core.weights import Weights


def _with(weights: Weights, **values: np.ndarray) -> Weights:
    return Weights({**weights, **values})


class Mean:
    """Per-column mean of the present values, and how many there are (``count``)."""

    name = "mean"
    config: ClassVar[Config] = MappingProxyType({})

    def finalize(self, totals: Weights, num_samples: int, weights: Weights) -> Weights:
        count = totals["count"]
        mean = np.divide(totals["sum"], count, out=np.full_like(count, np.nan), where=count > 0)
        if np.isnan(mean).any():
            empty = np.flatnonzero(count == 0).tolist()
            raise AggregationError(f"columns {empty} have no present value at any site")
        return _with(weights, mean=mean, count=count)


class Variance:
    """Per-column sample variance (and ``std``) about the global mean: a second pass, after
    :class:`Mean`, whose task carries the mean to the sites."""

    name = "variance"
    send_model = True
    config: ClassVar[Config] = MappingProxyType({})

    def __init__(self, ddof: int = 1) -> None:
        self.ddof = ddof

    def finalize(self, totals: Weights, num_samples: int, weights: Weights) -> Weights:
        count = totals["count"]
        dof = count - self.ddof
        if (dof <= 0).any():
            raise AggregationError(f"columns {np.flatnonzero(dof <= 0).tolist()} have too few "
                                   f"values for a variance with ddof={self.ddof}")
        # The deviations were taken about the first pass's mean; if the sites of this pass
        # are not exactly those (one failed, one joined), their own mean differs, and
        # sum (x - m)^2 = sum (x - own)^2 + n (own - m)^2 gives the exact spread about it.
        own = totals["sum"] / count
        sum_sq = totals["sum_sq_dev"] - count * (own - weights["mean"]) ** 2
        variance = np.maximum(sum_sq, 0.0) / dof
        return _with(weights, variance=variance, std=np.sqrt(variance))


class Histogram:
    """Per-column counts in ``bins`` equal bins over ``[low, high]`` (values outside are not
    counted); ``histogram`` is ``[columns, bins]``, ``histogram_edges`` its bin edges."""

    name = "histogram"

    def __init__(self, bins: int, low: float, high: float) -> None:
        if not (isinstance(bins, int) and bins >= 1 and low < high):
            raise ValueError(f"histogram needs bins >= 1 and low < high, got {bins}, {low}, "
                             f"{high}")
        self.bins, self.low, self.high = bins, float(low), float(high)
        self.config: Config = {"bins": bins, "low": self.low, "high": self.high}

    def finalize(self, totals: Weights, num_samples: int, weights: Weights) -> Weights:
        edges = np.linspace(self.low, self.high, self.bins + 1)
        return _with(weights, histogram=totals["counts"], histogram_edges=edges)


class MissingValues:
    """Per-column count of missing values (NaN), and the number of rows (``rows``)."""

    name = "missing"
    config: ClassVar[Config] = MappingProxyType({})

    def finalize(self, totals: Weights, num_samples: int, weights: Weights) -> Weights:
        return _with(weights, missing=totals["missing"], rows=totals["rows"])
