"""Selective sharing: a site sends only a fraction of its update, the rest stays home.

Two filters on training results, over the update (trained minus global model) of every
floating-point parameter taken as one vector; a component not shared is sent as zero update
(the global model's value), so the aggregate keeps the model's shape.

* :class:`PercentileSharing` (Shokri & Shmatikov, CCS 2015; the percentile filter of Li et
  al., MLMI 2019): exactly the ``fraction`` largest components by magnitude, clipped to
  +-``gamma``. Limits what leaves, but is not differentially private.
* :class:`SvtPrivacy`: the sparse vector technique of Li et al. 2019 (after Lyu, Su & Li, VLDB
  2017, Alg. 1): components are picked by a noisy threshold test on their clipped magnitudes,
  and released with Laplace noise. Each release spends ``eps1 + eps2 + q * eps3`` (below),
  which it reports to the site's ledger.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from fedcare.core.message import Result, Task
from fedcare.core.privacy import PrivacySpend
from fedcare.site.filters import Filter, number, training_update

log = logging.getLogger(__name__)

#: Threshold sweeps the SVT makes over the components not yet picked before it stops short.
_MAX_SWEEPS = 1000


def shared_count(size: int, fraction: float) -> int:
    """How many of ``size`` components a fraction shares: ceil(size * fraction), at least 1."""
    return min(size, max(1, math.ceil(size * fraction - 1e-9))) if size else 0


class PercentileSharing(Filter):
    """Share the ``fraction`` largest update components (by magnitude), each clipped to
    +-``gamma``; every other component is sent unchanged from the global model.

    Args:
        fraction: Share of the update's components that leave, in (0, 1].
        gamma: Bound on each shared component's magnitude (> 0); None: not clipped.
    """

    name = "percentile_sharing"

    def __init__(self, fraction: float, gamma: float | None = None) -> None:
        self.fraction = number(fraction, "percentile_sharing: fraction", high=1.0)
        self.gamma = math.inf if gamma is None else number(gamma, "percentile_sharing: gamma")

    def outbound(self, task: Task, result: Result) -> Result:
        update = training_update(task, result)
        if update is None:
            return result
        values = update.values
        k = shared_count(values.size, self.fraction)
        shared = np.zeros_like(values)
        if k:
            top = np.argpartition(np.abs(values), values.size - k)[values.size - k:]
            shared[top] = np.clip(values[top], -self.gamma, self.gamma)
        log.info("percentile_sharing: task %s shares %d of %d update components",
                 task.task_id, k, values.size)
        return update.rebuilt(shared)


class SvtPrivacy(Filter):
    """The sparse vector technique of Li et al. 2019 on a training update (differentially
    private selective sharing).

    With ``q = ceil(fraction * n)`` of the ``n`` components to share and every component
    clipped to +-``gamma`` (so a query, its clipped magnitude, has sensitivity ``2 gamma``):

    * threshold ``tau + Lap(2 gamma / eps1)``, ``eps1 = epsilon``;
    * each component, in random order, is tested ``|clip(x)| + Lap(4 gamma q / eps2) >=
      threshold`` until ``q`` pass (sweeping again over those that failed, as the paper's
      implementation does), with ``eps2 = (2 q)^(2/3) eps1`` (Lyu et al.'s ratio);
    * each picked component is released as ``clip(clip(x) + Lap(2 gamma / eps3), +-gamma)``,
      ``eps3 = noise_var``; the others are sent as zero update.

    By sequential composition one release spends ``eps1 + eps2 + q * eps3``: reported by
    :meth:`privacy_spent` (delta 0), charged by the site before the update leaves.

    Args:
        fraction: Share of components released, in (0, 1].
        epsilon: ``eps1``, the threshold's budget (> 0).
        noise_var: ``eps3``, each released value's budget (> 0).
        gamma: Clipping bound of every component (> 0).
        tau: The threshold before noise (>= 0).
        rng: Randomness, for tests only; a site always draws fresh entropy (noise a party
            could predict protects nothing).
    """

    name = "svt"

    def __init__(self, fraction: float = 0.1, epsilon: float = 0.1, noise_var: float = 0.1,
                 gamma: float = 1e-5, tau: float = 1e-6,
                 rng: np.random.Generator | None = None) -> None:
        self.fraction = number(fraction, "svt: fraction", high=1.0)
        self.epsilon = number(epsilon, "svt: epsilon")
        self.noise_var = number(noise_var, "svt: noise_var")
        self.gamma = number(gamma, "svt: gamma")
        self.tau = number(tau, "svt: tau", low_open=False)
        self._rng = rng or np.random.default_rng()
        self._spent: list[PrivacySpend] = []

    def epsilon_of(self, size: int) -> float:
        """What one release of an update of ``size`` components spends."""
        q = shared_count(size, self.fraction)
        return float(self.epsilon + (2 * q) ** (2 / 3) * self.epsilon + q * self.noise_var)

    def outbound(self, task: Task, result: Result) -> Result:
        update = training_update(task, result)
        if update is None:
            return result
        values, rng, gamma = update.values, self._rng, self.gamma
        n = values.size
        q = shared_count(n, self.fraction)
        eps2 = (2 * q) ** (2 / 3) * self.epsilon
        clipped = np.clip(values, -gamma, gamma)
        threshold = self.tau + rng.laplace(scale=2 * gamma / self.epsilon)
        candidates = rng.permutation(n)
        picked: list[np.ndarray] = []
        wanted = q
        for _ in range(_MAX_SWEEPS):
            if not wanted or not candidates.size:
                break
            noisy = np.abs(clipped[candidates]) + rng.laplace(scale=4 * gamma * q / eps2,
                                                              size=candidates.size)
            above = np.flatnonzero(noisy >= threshold)[:wanted]  # the first to pass, in order
            picked.append(candidates[above])
            wanted -= above.size
            candidates = np.delete(candidates, above)
        chosen = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        shared = np.zeros_like(values)
        noise = rng.laplace(scale=2 * gamma / self.noise_var, size=chosen.size)
        shared[chosen] = np.clip(clipped[chosen] + noise, -gamma, gamma)
        spent = self.epsilon + eps2 + q * self.noise_var
        self._spent.append(PrivacySpend(spent, 0.0, f"svt (Li et al. 2019): eps1 {self.epsilon:g}"
                                        f" + eps2 {eps2:.4g} + {q} x eps3 {self.noise_var:g}"))
        log.info("svt: task %s releases %d of %d update components (asked %d), epsilon %.4g",
                 task.task_id, chosen.size, n, q, spent)
        return update.rebuilt(shared)

    def privacy_spent(self) -> list[PrivacySpend]:
        spent, self._spent = self._spent, []
        return spent
