"""Aggregation that faulty or malicious sites cannot drag far: median, trimmed mean, Krum, clipping.

Coordinate-wise median, trimmed mean and (Multi-)Krum need every site's update at once, so they
are not incremental: they hold one model per site, at most ``max_sites`` of them (a site beyond
that is refused), i.e. memory is ``max_sites`` x the model. Norm clipping is incremental.

- Median (Yin et al. 2018): per coordinate, the median of the site models.
- Trimmed mean (Yin et al. 2018): per coordinate, drop the ``trim`` fraction of largest and of
  smallest values, average the rest.
- Krum / Multi-Krum (Blanchard et al. 2017): score each update by the summed squared distance
  to its n - f - 2 nearest others; keep the ``multi`` best-scored and average them (sample-
  weighted). Needs n > 2f + 2.
- Norm clipping: each update w_k - w is scaled to an L2 norm of at most ``max_norm`` before
  the sample-weighted average.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from fedcare.algorithms.fedavg import FedAvg, WeightedMeanAggregator
from fedcare.core.errors import AggregationError, ConfigError
from fedcare.core.message import TrainResult
from fedcare.core.strategy import Aggregator
from fedcare.core.weights import Weights

log = logging.getLogger(__name__)


def _flat(weights: Weights) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in weights.values()])


def _unflat(vector: np.ndarray, like: Weights) -> Weights:
    out, offset = {}, 0
    for name, ref in like.items():
        part = vector[offset:offset + ref.size].reshape(ref.shape)
        offset += ref.size
        out[name] = (part if np.issubdtype(ref.dtype, np.floating) else np.rint(part)).astype(
            ref.dtype)
    return Weights(out)


class _CollectingAggregator(Aggregator):
    """Holds every site model (flattened) until finish; bounded by ``max_sites``."""

    def __init__(self, strategy: RobustFedAvg, global_weights: Weights) -> None:
        self._strategy = strategy
        self._like = global_weights
        self._models: list[np.ndarray] = []
        self._samples: list[int] = []

    def add(self, site_id: str, result: TrainResult) -> None:
        if len(self._models) >= self._strategy.max_sites:
            raise AggregationError(f"more than max_sites={self._strategy.max_sites} results "
                                   "for a non-incremental aggregator", site_id=site_id)
        self._models.append(_flat(result.weights))
        self._samples.append(result.num_samples)

    @property
    def num_results(self) -> int:
        return len(self._models)

    def finish(self) -> Weights:
        combined = self._strategy.combine(np.stack(self._models), np.asarray(self._samples))
        return _unflat(combined, self._like)


class RobustFedAvg(FedAvg):
    """Base of the non-incremental robust aggregators."""

    def __init__(self, *, max_sites: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_sites < 1:
            raise ConfigError(f"{type(self).__name__}: max_sites must be >= 1, got {max_sites}")
        self.max_sites = max_sites

    def aggregator(self, round_num: int, global_weights: Weights) -> Aggregator:
        return _CollectingAggregator(self, global_weights)

    def combine(self, models: np.ndarray, samples: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Median(RobustFedAvg):
    def combine(self, models: np.ndarray, samples: np.ndarray) -> np.ndarray:
        return np.asarray(np.median(models, axis=0))


class TrimmedMean(RobustFedAvg):
    """Drops ``trim`` (in [0, 0.5)) of the values at each end, per coordinate.

    That is floor(trim * n) of the n results at each end, so a round with fewer than 1 / trim
    results trims nothing and is a plain (unweighted) mean. A job whose declared sites are that
    few is refused when it is built; otherwise the first such round logs a warning.
    """

    def __init__(self, *, trim: float = 0.1, **kwargs: Any) -> None:
        if not 0.0 <= trim < 0.5:
            raise ConfigError(f"TrimmedMean: trim must be in [0, 0.5), got {trim}")
        super().__init__(**kwargs)
        self.trim = trim
        self._warned = False

    def _trimmed(self, n: int) -> int:
        return int(np.floor(self.trim * n))

    def _needed(self) -> int:
        """The fewest results of which something is trimmed (trim > 0)."""
        n = math.ceil(1 / self.trim)
        while self._trimmed(n) == 0:  # float rounding of trim * n
            n += 1
        return n

    def check_job(self, *, min_sites: int, num_sites: int | None) -> None:
        super().check_job(min_sites=min_sites, num_sites=num_sites)
        if self.trim > 0 and num_sites is not None and self._trimmed(num_sites) == 0:
            raise ConfigError(
                f"TrimmedMean trim={self.trim} would trim nothing with the job's {num_sites} "
                f"sites (floor({self.trim} x {num_sites}) = 0): it needs at least "
                f"{self._needed()} results per round; use a larger trim or Median")

    def combine(self, models: np.ndarray, samples: np.ndarray) -> np.ndarray:
        n = len(models)
        k = self._trimmed(n)
        if k == 0 and self.trim > 0 and not self._warned:
            self._warned = True
            log.warning("TrimmedMean trim=%s trims nothing with %d results (floor(%s x %d) = 0): "
                        "this round is a plain mean; it needs at least %d results per round",
                        self.trim, n, self.trim, n, self._needed())
        ordered = np.sort(models, axis=0)
        return np.asarray(ordered[k:n - k].mean(axis=0))


class Krum(RobustFedAvg):
    """(Multi-)Krum tolerating ``num_byzantine`` sites; averages the ``multi`` best."""

    def __init__(self, *, num_byzantine: int = 1, multi: int = 1, **kwargs: Any) -> None:
        if num_byzantine < 0 or multi < 1:
            raise ConfigError(f"Krum: need num_byzantine >= 0 and multi >= 1, got "
                              f"{num_byzantine}, {multi}")
        super().__init__(**kwargs)
        self.num_byzantine, self.multi = num_byzantine, multi

    def check_job(self, *, min_sites: int, num_sites: int | None) -> None:
        super().check_job(min_sites=min_sites, num_sites=num_sites)
        needed = 2 * self.num_byzantine + 3
        if min_sites < needed or (num_sites is not None and num_sites < needed):
            raise ConfigError(
                f"Krum with num_byzantine={self.num_byzantine} needs every round to have at "
                f"least {needed} sites (n > 2f + 2); the job has min_sites={min_sites}"
                + (f" and {num_sites} sites" if num_sites is not None else ""))

    def combine(self, models: np.ndarray, samples: np.ndarray) -> np.ndarray:
        n, f = len(models), self.num_byzantine
        if n <= 2 * f + 2:
            raise AggregationError(f"Krum needs more than 2f + 2 = {2 * f + 2} results, got {n}")
        sq = np.sum(models**2, axis=1)
        distances = sq[:, None] + sq[None, :] - 2 * models @ models.T
        np.fill_diagonal(distances, np.inf)
        closest = np.sort(distances, axis=1)[:, : n - f - 2]
        scores = closest.sum(axis=1)
        chosen = np.argsort(scores, kind="stable")[: min(self.multi, n)]
        weights = samples[chosen] / samples[chosen].sum()
        return np.asarray((models[chosen] * weights[:, None]).sum(axis=0))


class _ClippingAggregator(WeightedMeanAggregator):
    def __init__(self, global_weights: Weights, max_norm: float) -> None:
        super().__init__(global_weights)
        self._global = global_weights
        self._max_norm = max_norm

    def add(self, site_id: str, result: TrainResult) -> None:
        deltas = {k: np.asarray(v, np.float64) - self._global[k] for k, v in
                  result.weights.items() if np.issubdtype(self._global[k].dtype, np.floating)}
        norm = float(np.sqrt(sum(np.sum(d**2) for d in deltas.values())))
        scale = min(1.0, self._max_norm / norm) if norm > 0 else 1.0
        clipped = {k: (self._global[k] + scale * deltas[k]) if k in deltas else v
                   for k, v in result.weights.items()}
        super().add(site_id, TrainResult(Weights(clipped), result.num_samples, result.metrics))


class ClippedFedAvg(FedAvg):
    """FedAvg of updates clipped to L2 norm ``max_norm`` (> 0); incremental."""

    def __init__(self, *, max_norm: float = 1.0, **kwargs: Any) -> None:
        if not max_norm > 0:
            raise ConfigError(f"ClippedFedAvg: max_norm must be > 0, got {max_norm}")
        super().__init__(**kwargs)
        self.max_norm = max_norm

    def aggregator(self, round_num: int, global_weights: Weights) -> Aggregator:
        return _ClippingAggregator(global_weights, self.max_norm)
