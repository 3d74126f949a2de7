"""Distributed DP-FedAvg at the site: clip the update, add this site's share of Gaussian noise.

See :class:`GaussianNoise`; registered as ``gaussian_noise`` in :mod:`fedcare.site.chain`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from fedcare.core.dp import DEFAULT_DELTA, GaussianAccountant, check_clip, check_delta, check_noise
from fedcare.core.errors import ConfigError
from fedcare.core.message import Result, Task, TaskKind, TrainResult
from fedcare.core.privacy import PrivacySpend
from fedcare.core.weights import Weights
from fedcare.site.filters import Filter


class GaussianNoise(Filter):
    """Distributed DP-FedAvg at the site: clip the training update to L2 norm ``clip_norm``
    (C), then add Gaussian noise of std z C / sqrt(n), so that the sum of ``num_sites`` (n)
    such updates carries noise of std z C: noise multiplier ``noise_multiplier`` (z) on the sum,
    as in McMahan et al. 2018, without trusting the server to add it.

    What each training task spent is reported (:class:`~fedcare.core.privacy.ReportsPrivacy`)
    from dp-accounting (:class:`~fedcare.core.dp.GaussianAccountant`: the exact Gaussian
    curve, or RDP), at ``delta``, for the whole contribution of this site
    (add/remove-one-site adjacency). Which multiplier the accountant sees depends on what the
    server can see:

    - ``secure_aggregation`` false (default): the server sees this site's update alone, so the
      guarantee is that of noise z / sqrt(n) on one update. Honest, and weak for small z.
    - ``secure_aggregation`` true: the job sums the updates with secure aggregation, so nobody
      sees less than the sum of n updates, and every one of the n sites adds its own share of
      noise (the assumption: all n sites run this filter, with these settings, honestly).
      The sum then carries multiplier z, and that is what is reported. The site holds the
      job to it (:attr:`summed_only`): it refuses any task that would send its update in the
      clear (plain ``train``, homomorphic rounds), and a secure-aggregation round whose weights
      are not uniform (``SecureAggregation(weighting="uniform")``) or whose threshold t is
      below ``num_sites``: a sum of t >= n sites carries noise of std at least z C even when
      sites drop out. Set ``num_sites`` to the job's t for that guarantee.

    Each report is the increase of the accountant's epsilon over every use so far, so the sum
    of one site's reports is its composed epsilon, tighter than adding per-use epsilons;
    every report carries ``delta``, which composition does not multiply. Parameters named in
    ``frozen`` (regular expressions) and non-floating ones leave at the global values the
    server sent: the site's own values never leave, so they need no noise. The noise comes
    from the operating system's entropy (``rng`` only for tests).
    """

    name = "gaussian_noise"

    def __init__(self, clip_norm: float, noise_multiplier: float, num_sites: int,
                 delta: float = DEFAULT_DELTA, secure_aggregation: bool = False,
                 frozen: Sequence[str] = (), rng: np.random.Generator | None = None) -> None:
        self.clip_norm = check_clip(clip_norm, "gaussian_noise: clip_norm")
        self.noise_multiplier = check_noise(noise_multiplier, "gaussian_noise: noise_multiplier")
        if isinstance(num_sites, bool) or not isinstance(num_sites, int) or num_sites < 1:
            raise ConfigError(f"gaussian_noise: num_sites must be an int >= 1, got "
                              f"{num_sites!r}")
        if self.noise_multiplier == 0:
            raise ConfigError("gaussian_noise: noise_multiplier must be > 0, got 0")
        if not isinstance(secure_aggregation, bool):
            raise ConfigError(f"gaussian_noise: secure_aggregation must be true or false, got "
                              f"{secure_aggregation!r}")
        if isinstance(frozen, str):
            raise ConfigError(f"gaussian_noise: frozen must be a list of patterns, got "
                              f"{frozen!r}")
        try:
            self.frozen = [re.compile(p) for p in frozen]
        except re.error as exc:
            raise ConfigError(f"gaussian_noise: bad pattern {exc.pattern!r}: {exc}") from None
        self.num_sites = num_sites
        self.secure_aggregation = secure_aggregation
        #: The std of this site's noise, per coordinate.
        self.std = self.noise_multiplier * self.clip_norm / math.sqrt(num_sites)
        seen = self.noise_multiplier if secure_aggregation else self.noise_multiplier / math.sqrt(
            num_sites)
        self.accountant = GaussianAccountant(seen, check_delta(delta, "gaussian_noise: delta"))
        self._rng = rng if rng is not None else np.random.default_rng()
        self._reported = 0.0
        self._pending: list[PrivacySpend] = []

    def outbound(self, task: Task, result: Result) -> Result:
        if task.kind != TaskKind.TRAIN or not isinstance(result, TrainResult):
            return result
        if task.weights is None:
            raise ValueError("gaussian_noise: the training task carried no global model")
        start = task.weights
        extra = sorted(set(result.weights) - set(start))
        if extra:  # e.g. SCAFFOLD's control variates: they would leave without noise
            raise ValueError(f"gaussian_noise: the update has tensors the global model lacks "
                             f"{extra[:5]}; refused (they would leave without noise)")
        noised = [k for k, v in result.weights.items()
                  if k in start and np.issubdtype(v.dtype, np.floating)
                  and not any(p.search(k) for p in self.frozen)]
        deltas = {k: np.asarray(result.weights[k], np.float64) - np.asarray(start[k], np.float64)
                  for k in noised}
        norm = math.sqrt(sum(float(np.vdot(d, d)) for d in deltas.values()))
        scale = min(1.0, self.clip_norm / norm) if norm > 0 else 1.0
        out: dict[str, np.ndarray] = {}
        for name, value in result.weights.items():
            if name in deltas:
                noisy = deltas[name] * scale + self._rng.normal(0.0, self.std,
                                                               deltas[name].shape)
                out[name] = (np.asarray(start[name], np.float64) + noisy).astype(value.dtype)
            else:
                out[name] = start[name]
        self.accountant.spend()
        total = self.accountant.epsilon()
        self._pending.append(PrivacySpend(max(total - self._reported, 0.0),
                                          self.accountant.delta, self.mechanism))
        self._reported = total
        metrics = {**result.metrics, "gaussian_noise_epsilon": total}
        return TrainResult(Weights(out), result.num_samples, metrics)

    @property
    def summed_only(self) -> bool:
        """True when the reported epsilon holds only if nobody sees less than a secure sum."""
        return self.secure_aggregation

    @property
    def mechanism(self) -> str:
        seen = "sum of n sites, secure aggregation" if self.secure_aggregation else "own update"
        return f"gaussian update noise (dp-accounting, site-level, {seen})"

    def privacy_spent(self) -> list[PrivacySpend]:
        spent, self._pending = self._pending, []
        return spent


#: Task kinds whose update leaves a site where less than a secure sum of it can be seen.
CLEAR_UPDATE_KINDS = frozenset(("train", "he.train"))


def summed_noise_sites(filters: Sequence[object]) -> int | None:
    """The largest ``num_sites`` of the filters whose epsilon holds only under secure
    aggregation (:attr:`GaussianNoise.summed_only`); None when there is none."""
    sizes = [f.num_sites for f in filters if isinstance(f, GaussianNoise) and f.summed_only]
    return max(sizes) if sizes else None


def clear_update_problem(kind: str) -> str:
    """Why a site with distributed-DP noise refuses a task of ``kind``."""
    return (f"this site adds distributed-DP noise (gaussian_noise with secure_aggregation: "
            f"true), whose epsilon holds only if nobody sees less than a secure sum; a "
            f"'{kind}' task would send its update where it can be read alone (use "
            "SecureAggregation(weighting='uniform'))")
