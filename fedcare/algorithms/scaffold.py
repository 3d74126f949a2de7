"""SCAFFOLD (Karimireddy et al. 2020), option II control variates.

Client drift on non-IID sites is corrected with control variates: the server keeps c, each
site keeps c_i. Every training task carries the model x and c (as ``scaffold.c.<name>``); the
site runs K local steps y <- y - lr * (g(y) - c_i + c), updates
c_i+ = c_i - c + (x - y) / (K * lr) and returns y with dc_i = c_i+ - c_i
(as ``scaffold.dc.<name>``). The server then sets
x <- x + server_lr * mean_S(y - x) and c <- c + |S| / N * mean_S(dc_i),
unweighted means over the sites S of the round, N the sites available, as in the paper.
The site side is :class:`fedcare.pytorch.ScaffoldSite`. The means are incremental.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcare.algorithms.fedavg import FedAvg, accumulate
from fedcare.core.errors import ConfigError
from fedcare.core.message import TrainResult
from fedcare.core.strategy import Aggregator
from fedcare.core.weights import Weights

#: Name prefixes of SCAFFOLD's extra tensors: declared by the strategy (``train_payload``,
#: ``result_spec``: what a task carries, what a result must hold), read by the site half
#: (:class:`fedcare.pytorch.ScaffoldSite`), one definition for both.
CONTROL = "scaffold.c."
DELTA = "scaffold.dc."


def _floating(weights: Weights) -> list[str]:
    return [k for k, v in weights.items() if np.issubdtype(v.dtype, np.floating)]


class _ScaffoldAggregator(Aggregator):
    def __init__(self, strategy: Scaffold, global_weights: Weights) -> None:
        self._strategy = strategy
        self._global = global_weights
        self._models: dict[str, np.ndarray] = {}
        self._deltas: dict[str, np.ndarray] = {}
        self._count = 0

    def add(self, site_id: str, result: TrainResult) -> None:
        w = result.weights
        accumulate(self._models, {k: w[k] for k in self._global}, 1.0)
        accumulate(self._deltas, {k: w[DELTA + k] for k in _floating(self._global)}, 1.0)
        self._count += 1

    @property
    def num_results(self) -> int:
        return self._count

    def finish(self) -> Weights:
        s = self._strategy
        out = {}
        for name, x in self._global.items():
            mean_y = self._models[name] / self._count
            if np.issubdtype(x.dtype, np.floating):
                out[name] = (x + s.server_lr * (mean_y - x)).astype(x.dtype)
                share = self._count / max(s.available, self._count)
                s.c[name] = (s.c[name] + share * self._deltas[name] / self._count).astype(x.dtype)
            else:
                out[name] = np.rint(mean_y).astype(x.dtype)
        return Weights(out)


class Scaffold(FedAvg):
    """SCAFFOLD with server learning rate ``server_lr`` (> 0; 1 in the paper's experiments)."""

    def __init__(self, *, server_lr: float = 1.0, **kwargs: Any) -> None:
        if not server_lr > 0:
            raise ConfigError(f"Scaffold: server_lr must be > 0, got {server_lr}")
        super().__init__(**kwargs)
        self.server_lr = server_lr
        self.c: dict[str, np.ndarray] = {}
        self.available = 1

    def select_sites(self, round_num: int, available: Sequence[str]) -> list[str]:
        self.available = len(available)
        return super().select_sites(round_num, available)

    def train_payload(self, round_num: int, global_weights: Weights) -> Weights:
        for name in _floating(global_weights):
            self.c.setdefault(name, np.zeros_like(global_weights[name]))
        return Weights({**global_weights, **{CONTROL + k: v for k, v in self.c.items()}})

    def result_spec(self, global_weights: Weights) -> Weights:
        return Weights({**global_weights,
                        **{DELTA + k: global_weights[k] for k in _floating(global_weights)}})

    def aggregator(self, round_num: int, global_weights: Weights) -> Aggregator:
        return _ScaffoldAggregator(self, global_weights)

    def state(self) -> dict[str, np.ndarray]:
        return {f"c.{k}": v for k, v in self.c.items()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.c = {k[2:]: np.array(v) for k, v in state.items() if k.startswith("c.")}
