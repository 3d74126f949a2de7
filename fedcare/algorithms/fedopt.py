"""Adaptive server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization").

Each round the sites' sample-weighted mean model gives the pseudo-gradient
``delta = mean_k(w_k) - w``; the server then takes one optimiser step on it:

- FedAvgM:   v = beta1 * v + delta;                           w = w + lr * v
- FedAdagrad: m = beta1 * m + (1 - beta1) * delta;  v = v + delta^2
- FedAdam:    m as above;  v = beta2 * v + (1 - beta2) * delta^2
- FedYogi:    m as above;  v = v - (1 - beta2) * delta^2 * sign(v - delta^2)
  and for the three adaptive ones  w = w + lr * m / (sqrt(v) + tau),  with v starting at tau^2.

The mean is computed incrementally (one accumulator, whatever the number of sites). Server
moments live in the strategy object and are checkpointed with the model every round, so a
resumed job continues with the same moments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcare.algorithms.fedavg import FedAvg, WeightedMeanAggregator
from fedcare.core.errors import ConfigError
from fedcare.core.message import TrainResult
from fedcare.core.strategy import Aggregator
from fedcare.core.stream import UpdateStream
from fedcare.core.weights import TensorSpec, Weights


class _StepAggregator(Aggregator):
    """Running weighted mean of site models, then one server-optimiser step at finish."""

    def __init__(self, strategy: FedOpt, global_weights: Weights) -> None:
        self._strategy = strategy
        self._global = global_weights
        self._mean = WeightedMeanAggregator(global_weights)

    def add(self, site_id: str, result: TrainResult) -> None:
        self._mean.add(site_id, result)

    def stream(self, site_id: str, num_samples: int,
               specs: Sequence[TensorSpec]) -> UpdateStream | None:
        return self._mean.stream(site_id, num_samples, specs)

    @property
    def num_results(self) -> int:
        return self._mean.num_results

    def finish(self) -> Weights:
        return self._strategy.step(self._global, self._mean.finish())


class FedOpt(FedAvg):
    """Base of the server-optimiser family; subclasses define ``_second_moment``.

    Args:
        server_lr: Server learning rate (eta), > 0.
        beta1: First-moment decay in [0, 1).
        beta2: Second-moment decay in [0, 1) (unused by FedAdagrad and FedAvgM).
        tau: Adaptivity (epsilon), > 0; also the initial sqrt(v).
        **kwargs: FedAvg's options (fraction, seed, train_config, evaluate_config).
    """

    def __init__(self, *, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        if not server_lr > 0:
            raise ConfigError(f"{name}: server_lr must be > 0, got {server_lr}")
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"{name}: {label} must be in [0, 1), got {beta}")
        if not tau > 0:
            raise ConfigError(f"{name}: tau must be > 0, got {tau}")
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def aggregator(self, round_num: int, global_weights: Weights) -> Aggregator:
        return _StepAggregator(self, global_weights)

    def state(self) -> dict[str, np.ndarray]:
        return {**{f"m.{k}": v for k, v in self.m.items()},
                **{f"v.{k}": v for k, v in self.v.items()}}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.m = {k[2:]: np.array(v) for k, v in state.items() if k.startswith("m.")}
        self.v = {k[2:]: np.array(v) for k, v in state.items() if k.startswith("v.")}

    def step(self, current: Weights, mean: Weights) -> Weights:
        """One server step from ``current`` towards the sites' ``mean`` (float params only)."""
        out: dict[str, np.ndarray] = {}
        for name, w in current.items():
            if not np.issubdtype(w.dtype, np.floating):
                out[name] = mean[name]  # counters and flags are simply averaged
                continue
            delta = mean[name].astype(np.float64) - w.astype(np.float64)
            m = self.m.get(name, np.zeros_like(delta))
            v = self.v.get(name, np.full_like(delta, self.tau**2))
            m, v, update = self._update(m, v, delta)
            self.m[name], self.v[name] = m, v
            out[name] = (w + self.server_lr * update).astype(w.dtype)
        return Weights(out)

    def _update(self, m: np.ndarray, v: np.ndarray, delta: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.beta1 * m + (1 - self.beta1) * delta
        v = self._second_moment(v, delta)
        return m, v, m / (np.sqrt(v) + self.tau)

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FedAdagrad(FedOpt):
    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return np.asarray(v + delta**2)


class FedAdam(FedOpt):
    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return np.asarray(self.beta2 * v + (1 - self.beta2) * delta**2)


class FedYogi(FedOpt):
    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        d2 = delta**2
        return np.asarray(v - (1 - self.beta2) * d2 * np.sign(v - d2))


class FedAvgM(FedOpt):
    """Server momentum (Hsu et al. 2019): v = beta1 * v + delta; w = w + server_lr * v."""

    def __init__(self, *, server_lr: float = 1.0, beta1: float = 0.9, **kwargs: Any) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, **kwargs)

    def _update(self, m: np.ndarray, v: np.ndarray, delta: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.beta1 * m + delta
        return m, v, m
