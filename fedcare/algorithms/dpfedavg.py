"""DP-FedAvg (McMahan et al. 2018): client-level differential privacy added by the server.

Each round every selected site's update (its model minus the global model) is clipped to L2
norm ``clip_norm`` = C, the clipped updates are summed with equal weights, Gaussian noise of std
``noise_multiplier`` x C = z C is added to every coordinate of the sum, and the sum is divided
by the number of sites selected for the round (fixed before any site trains, so it depends on
no site's data):

    w_{t+1} = w_t + (sum_k clip(w_k - w_t, C) + N(0, z^2 C^2 I)) / m

The guarantee is client-level: it protects any one site's whole contribution (every patient of
a hospital at once), which implies protection of each patient. The (epsilon, delta) after each
round comes from dp-accounting (:class:`~fedcare.core.dp.GaussianAccountant`: the exact
Gaussian curve without sampling, RDP with) and is recorded in the round's
``train_metrics`` as ``dp_fedavg_epsilon``. With every site every round the adjacency is
add/remove-one-site, as McMahan et al. With ``fraction`` < 1 the
fixed-size sample of sites (FedAvg's sampling) is accounted exactly, which dp-accounting does
under replace-one-site adjacency (Wang et al. 2019), where the sum's sensitivity is 2 C: the
sample amplifies privacy against that relation, but the number is not comparable with the
add/remove one, and with a handful of sites it can be larger than without sampling.

Trust: the server sees each site's update before noise. When the server is not trusted, the
sites add the noise themselves (the ``gaussian_noise`` site filter, with secure aggregation
for the full guarantee) and this strategy runs with ``noise_multiplier`` 0 (clipping and equal
weights only; no epsilon is reported then, the sites report theirs).

Parameters named in ``frozen`` (e.g. the heart model's standardisation buffers, set by
federated statistics, not by training) keep their global values: no site can change them, so
they carry none of the sites' training data and need no noise. Non-floating parameters keep
their global values for the same reason. The noise comes from the operating system's entropy:
a seed in the job's parameters would let anyone who reads them subtract the noise.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcare.algorithms.fedavg import FedAvg
from fedcare.core.dp import (
    DEFAULT_DELTA,
    GaussianAccountant,
    Sampling,
    check_clip,
    check_delta,
    check_epsilon,
    check_noise,
    noise_for_epsilon,
)
from fedcare.core.errors import AggregationError, ConfigError
from fedcare.core.message import TrainResult
from fedcare.core.strategy import Aggregator
from fedcare.core.weights import Weights

log = logging.getLogger(__name__)

#: Strategy state key: the sampling of every round released so far, (population, sample size).
_STATE_ROUNDS = "dp_fedavg_rounds"


class DpFedAvg(FedAvg):
    """Federated averaging with client-level differential privacy, noise added by the server.

    Args:
        clip_norm: C, the L2 bound on each site's update (> 0).
        noise_multiplier: z, the noise std on the sum in units of C (>= 0). Give it, or
            ``target_epsilon`` and ``num_rounds``.
        target_epsilon: Calibrate z (dp-accounting) so that ``num_rounds`` rounds spend this
            epsilon; a round that would spend more is refused (the last model stays).
        num_rounds: The rounds the job plans, for ``target_epsilon``.
        delta: The delta of every reported epsilon, in (0, 1).
        frozen: Regular expressions naming parameters no site may change (see the module).
        rng: The noise's generator; only for tests (by default fresh OS entropy).
        **kwargs: As :class:`FedAvg` (``fraction``, ``seed``, ``train_config``, ...).
    """

    def __init__(self, *, clip_norm: float, noise_multiplier: float | None = None,
                 target_epsilon: float | None = None, num_rounds: int | None = None,
                 delta: float = DEFAULT_DELTA, frozen: Sequence[str] = (),
                 rng: np.random.Generator | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clip_norm = check_clip(clip_norm, "DpFedAvg clip_norm")
        self.delta = check_delta(delta, "DpFedAvg delta")
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ConfigError("DpFedAvg: give exactly one of noise_multiplier and "
                              "target_epsilon")
        self.target_epsilon: float | None = None
        if target_epsilon is not None:
            self.target_epsilon = check_epsilon(target_epsilon, "DpFedAvg target_epsilon")
            if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or num_rounds < 1:
                raise ConfigError("DpFedAvg num_rounds must be an int >= 1 with "
                                  f"target_epsilon, got {num_rounds!r}")
        self.num_rounds = num_rounds
        self._noise = (check_noise(noise_multiplier, "DpFedAvg noise_multiplier")
                       if noise_multiplier is not None else None)
        if isinstance(frozen, str):
            raise ConfigError(f"DpFedAvg frozen must be a list of patterns, got {frozen!r}")
        try:
            self.frozen = [re.compile(p) for p in frozen]
        except re.error as exc:
            raise ConfigError(f"DpFedAvg frozen: bad pattern {exc.pattern!r}: {exc}") from None
        self._rng = rng if rng is not None else np.random.default_rng()
        self._accountant: GaussianAccountant | None = None
        self._selected: dict[int, tuple[Sampling, int]] = {}  # round -> sampling, count
        if self._noise is not None:
            self._accountant = GaussianAccountant(self._noise, self.delta)
        elif self.fraction >= 1.0:  # calibrated now: every round is the same mechanism
            self._calibrate(Sampling())

    @property
    def noise_multiplier(self) -> float:
        """z; known once calibrated (at construction, or when the job's sites are known)."""
        if self._accountant is None:
            raise ConfigError("DpFedAvg: the noise multiplier is calibrated when the job "
                              "declares its number of sites")
        return self._accountant.noise_multiplier

    def _calibrate(self, sampling: Sampling) -> None:
        assert self.target_epsilon is not None and self.num_rounds is not None
        noise = noise_for_epsilon(self.target_epsilon, self.delta,
                                  [sampling] * self.num_rounds)
        self._accountant = GaussianAccountant(noise, self.delta)
        log.info("DP-FedAvg: noise multiplier %.4g for epsilon %.4g over %d rounds", noise,
                 self.target_epsilon, self.num_rounds)

    def _sampling(self, population: int) -> Sampling:
        if self.fraction >= 1.0 and self.selector is None:
            return Sampling()
        return Sampling(population, self._sample_size(population))

    def check_job(self, *, min_sites: int, num_sites: int | None) -> None:
        super().check_job(min_sites=min_sites, num_sites=num_sites)
        if self.selector is not None:
            raise ConfigError("DpFedAvg samples sites itself (fraction): a custom selector "
                              "would void its privacy accounting")
        if self._accountant is None:
            if num_sites is None:
                raise ConfigError("DpFedAvg with target_epsilon and fraction < 1 needs the "
                                  "job's number of sites (to calibrate the noise)")
            self._calibrate(self._sampling(num_sites))

    def select_sites(self, round_num: int, available: Sequence[str]) -> list[str]:
        chosen = super().select_sites(round_num, available)
        self._selected[round_num] = (self._sampling(len(available)), len(chosen))
        return chosen

    def aggregator(self, round_num: int, global_weights: Weights) -> Aggregator:
        accountant = self._accountant
        if accountant is None:
            raise AggregationError("DpFedAvg: the noise multiplier was never calibrated "
                                   "(the job did not declare its sites)", round_num=round_num)
        if round_num not in self._selected:
            raise AggregationError("DpFedAvg: no sites were selected for this round",
                                   round_num=round_num)
        sampling, count = self._selected.pop(round_num)
        return _DpAggregator(self, round_num, global_weights, sampling, count)

    def _release(self, round_num: int, sampling: Sampling) -> None:
        """Charge the accountant for a round about to be released (or refuse it)."""
        accountant = self._accountant
        assert accountant is not None
        if self.target_epsilon is not None and accountant.noise_multiplier > 0:
            after = accountant.epsilon(sampling)
            if after > self.target_epsilon * (1 + 1e-6):
                raise AggregationError(
                    f"DP-FedAvg: this round would bring epsilon to {after:.4g}, over the "
                    f"target {self.target_epsilon:g}; the last model stays", round_num=round_num)
        accountant.spend(sampling)

    def round_metrics(self, round_num: int) -> dict[str, float]:
        accountant = self._accountant
        if accountant is None or accountant.noise_multiplier == 0:
            return {}
        return {"dp_fedavg_epsilon": accountant.epsilon(), "dp_fedavg_delta": self.delta,
                "dp_fedavg_noise_multiplier": accountant.noise_multiplier}

    def epsilon(self) -> float:
        """The epsilon (at ``delta``) of every round released so far."""
        return self._accountant.epsilon() if self._accountant is not None else 0.0

    def state(self) -> dict[str, np.ndarray]:
        uses = self._accountant.uses if self._accountant is not None else []
        rows = [(u.population or 0, u.sample_size) for u in uses]
        return {_STATE_ROUNDS: np.asarray(rows, np.int64).reshape(len(rows), 2)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        rows = state.get(_STATE_ROUNDS)
        if rows is None or self._accountant is None:
            return
        accountant = GaussianAccountant(self._accountant.noise_multiplier, self.delta)
        for population, size in np.asarray(rows).reshape(-1, 2).tolist():
            accountant.spend(Sampling(int(population), int(size)) if population else Sampling())
        self._accountant = accountant

    def _keeps_global(self, name: str, value: np.ndarray) -> bool:
        return (not np.issubdtype(value.dtype, np.floating)
                or any(p.search(name) for p in self.frozen))


class _DpAggregator(Aggregator):
    """Sums one round's clipped updates; adds the noise and averages at :meth:`finish`."""

    def __init__(self, strategy: DpFedAvg, round_num: int, global_weights: Weights,
                 sampling: Sampling, num_selected: int) -> None:
        self._strategy = strategy
        self._round_num = round_num
        self._global = global_weights
        self._sampling = sampling
        self._num_selected = num_selected
        self._names = [n for n, v in global_weights.items()
                       if not strategy._keeps_global(n, v)]
        self._sum = {n: np.zeros(global_weights[n].shape, np.float64) for n in self._names}
        self._count = 0

    def add(self, site_id: str, result: TrainResult) -> None:
        deltas = {n: np.asarray(result.weights[n], np.float64) - self._global[n]
                  for n in self._names}
        norm = math.sqrt(sum(float(np.vdot(d, d)) for d in deltas.values()))
        scale = min(1.0, self._strategy.clip_norm / norm) if norm > 0 else 1.0
        for name, delta in deltas.items():
            self._sum[name] += scale * delta
        self._count += 1

    @property
    def num_results(self) -> int:
        return self._count

    def finish(self) -> Weights:
        if self._count == 0:
            raise RuntimeError("finish() called before any result was added")
        strategy = self._strategy
        strategy._release(self._round_num, self._sampling)
        std = strategy.noise_multiplier * strategy.clip_norm
        out: dict[str, np.ndarray] = {}
        for name, ref in self._global.items():
            if name not in self._sum:
                out[name] = ref
                continue
            total = self._sum[name]
            if std > 0:
                total = total + strategy._rng.normal(0.0, std, size=total.shape)
            out[name] = (ref + total / self._num_selected).astype(ref.dtype)
        return Weights(out)
