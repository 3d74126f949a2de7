"""Site filters: what a hospital applies, by its own policy, to what arrives and what leaves.

A filter's ``inbound`` sees every task before the trainer does (e.g. to decrypt it); its
``outbound`` sees every result before it leaves the site (e.g. to clip or drop parameters, add
noise). Chains are built per job from the site's :class:`~fedcare.core.policy.SitePolicy`.
The privacy work adds filters to :data:`FILTERS`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedcare.core.dp import DEFAULT_DELTA, GaussianAccountant, check_clip, check_delta, check_noise
from fedcare.core.errors import ConfigError
from fedcare.core.message import Result, Task, TaskKind, TrainResult
from fedcare.core.policy import FilterSpec, SitePolicy
from fedcare.core.privacy import PrivacySpend
from fedcare.core.weights import Weights

log = logging.getLogger(__name__)


class Filter:
    """One step of a site's filter chain; both directions pass everything through by default."""

    name = "filter"

    def inbound(self, task: Task) -> Task:
        """The task as the trainer will see it."""
        return task

    def outbound(self, task: Task, result: Result) -> Result:
        """The result as it will leave the site."""
        return result


class ClipUpdateNorm(Filter):
    """Scale a training update down so its L2 norm (over every floating-point parameter) is at
    most ``max_norm``: the update is the trained model minus the global model it started from.

    Bounds how much any one site can move the global model, the first half of differential
    privacy (the noise is the other). Integer parameters (counters) pass unchanged.
    """

    name = "clip_update_norm"

    def __init__(self, max_norm: float) -> None:
        if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not (
                math.isfinite(max_norm) and max_norm > 0):
            raise ConfigError(f"clip_update_norm: max_norm must be a number > 0, got "
                              f"{max_norm!r}")
        self.max_norm = float(max_norm)

    def outbound(self, task: Task, result: Result) -> Result:
        if task.kind != TaskKind.TRAIN or not isinstance(result, TrainResult):
            return result
        if task.weights is None:
            raise ValueError("clip_update_norm: the training task carried no global model")
        start = task.weights
        names = [k for k, v in result.weights.items()
                 if np.issubdtype(v.dtype, np.floating) and k in start]
        squared = 0.0
        for name in names:
            delta = np.asarray(result.weights[name], np.float64) - np.asarray(start[name],
                                                                              np.float64)
            squared += float(np.dot(delta.ravel(), delta.ravel()))
        norm = math.sqrt(squared)
        if norm <= self.max_norm:
            return result
        scale = self.max_norm / norm
        log.info("clip_update_norm: task %s update norm %.4g clipped to %.4g",
                 task.task_id, norm, self.max_norm)
        out = dict(result.weights)
        for name in names:
            base = np.asarray(start[name], np.float64)
            clipped = base + (np.asarray(out[name], np.float64) - base) * scale
            out[name] = clipped.astype(out[name].dtype)
        return TrainResult(Weights(out), result.num_samples, result.metrics)


class ExcludeVariables(Filter):
    """Parameters whose name matches one of ``patterns`` never leave the site.

    In a training result they are replaced by the values the server sent (so the aggregate is
    unaffected by this site's local values and the model keeps its shape); from a local model
    asked for cross-site validation they are dropped (the server fills in the global values).
    A trainer's initial model (a job without server-side initial weights) has seen no data and
    passes whole: the job needs every parameter's shape.
    """

    name = "exclude_variables"

    def __init__(self, patterns: Sequence[str]) -> None:
        if isinstance(patterns, str) or not patterns:
            raise ConfigError("exclude_variables: patterns must be a non-empty list of regular "
                              f"expressions, got {patterns!r}")
        try:
            self.patterns = [re.compile(p) for p in patterns]
        except re.error as exc:
            raise ConfigError(f"exclude_variables: bad pattern {exc.pattern!r}: {exc}") from None

    def _excluded(self, name: str) -> bool:
        return any(p.search(name) for p in self.patterns)

    def outbound(self, task: Task, result: Result) -> Result:
        if not isinstance(result, TrainResult) or task.kind == TaskKind.INITIAL_MODEL:
            return result
        start: Mapping[str, np.ndarray] = task.weights or {}
        out: dict[str, np.ndarray] = {}
        for name, value in result.weights.items():
            if not self._excluded(name):
                out[name] = value
            elif name in start:
                out[name] = start[name]
        return TrainResult(Weights(out), result.num_samples, result.metrics)


class GaussianNoise(Filter):
    """Distributed DP-FedAvg at the site: clip the training update to L2 norm ``clip_norm``
    (C), then add Gaussian noise of std z C / sqrt(n), so that the sum of ``num_sites`` (n)
    such updates carries noise of std z C: noise multiplier ``noise_multiplier`` (z) on the sum,
    as in McMahan et al. 2018, without trusting the server to add it.

    What each training task spent is reported (:class:`~fedcare.core.privacy.ReportsPrivacy`)
    from dp-accounting's RDP accountant, at ``delta``, for the whole contribution of this site
    (add/remove-one-site adjacency). Which multiplier the accountant sees depends on what the
    server can see:

    - ``secure_aggregation`` false (default): the server sees this site's update alone, so the
      guarantee is that of noise z / sqrt(n) on one update. Honest, and weak for small z.
    - ``secure_aggregation`` true: the job sums the updates with secure aggregation, so nobody
      sees less than the sum of n updates, and every one of the n sites adds its own share of
      noise (the assumption: all n sites run this filter, with these settings, honestly).
      The sum then carries multiplier z, and that is what is reported.

    Each report is the increase of the accountant's epsilon over every use so far, so the sum
    of one site's reports is its composed (RDP) epsilon, tighter than adding per-use epsilons;
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
    def mechanism(self) -> str:
        seen = "sum of n sites, secure aggregation" if self.secure_aggregation else "own update"
        return f"gaussian update noise (dp-accounting rdp, site-level, {seen})"

    def privacy_spent(self) -> list[PrivacySpend]:
        spent, self._pending = self._pending, []
        return spent


#: The filters a site policy may name.
FILTERS: dict[str, Callable[..., Filter]] = {
    ClipUpdateNorm.name: ClipUpdateNorm,
    ExcludeVariables.name: ExcludeVariables,
    GaussianNoise.name: GaussianNoise,
}


def _build(spec: FilterSpec, where: str) -> Filter:
    factory = FILTERS.get(spec.name)
    if factory is None:
        raise ConfigError(f"site policy {where}: unknown filter {spec.name!r}; known: "
                          f"{sorted(FILTERS)}")
    params: Mapping[str, Any] = spec.params
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"site policy {where}: filter {spec.name}: bad parameters: "
                          f"{exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"site policy {where}: {exc.message}") from None


def build_filters(policy: SitePolicy | None) -> tuple[list[Filter], list[Filter]]:
    """Fresh inbound and outbound chains from a policy (None: empty chains).

    Raises:
        ConfigError: an unknown filter or bad parameters, naming the chain and position.
    """
    if policy is None:
        return [], []
    inbound = [_build(s, f"inbound.{i}") for i, s in enumerate(policy.inbound)]
    outbound = [_build(s, f"outbound.{i}") for i, s in enumerate(policy.outbound)]
    return inbound, outbound
