"""Differential privacy settings and their accounting, shared by the server and the sites.

Every (epsilon, delta) fedcare reports comes from a maintained accountant, never from a formula
of its own: here Google's dp-accounting (its RDP accountant), which imports no torch, so the
server and the site filters can use it; DP-SGD inside a PyTorch trainer reports what Opacus's own
accountant says (:mod:`fedcare.dpsgd`). Both are the ``privacy`` extra
(``pip install 'fedcare[privacy]'``), imported only when a job asks for privacy.

The settings are checked when a job or filter is built, so a job with epsilon <= 0, delta >= 1,
a clip norm <= 0 or a negative noise multiplier never starts; the error names the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fedcare.core.errors import ConfigError

#: Default delta: well below 1 / (number of patients) for any hospital data set.
DEFAULT_DELTA = 1e-5


def _dp_accounting() -> ModuleType:
    try:
        import dp_accounting
    except ImportError:  # pragma: no cover - the extra is installed wherever tests run
        raise ConfigError("differential privacy needs dp-accounting: pip install "
                          "'fedcare[privacy]'") from None
    module: ModuleType = dp_accounting
    return module


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{field} must be a finite number, got {value!r}")
    return float(value)


def check_epsilon(value: object, field: str) -> float:
    """A target epsilon: a finite number > 0."""
    epsilon = _number(value, field)
    if epsilon <= 0:
        raise ConfigError(f"{field} must be > 0, got {value!r}")
    return epsilon


def check_delta(value: object, field: str) -> float:
    """A delta in (0, 1): 0 would need pure DP, which a Gaussian mechanism does not give."""
    delta = _number(value, field)
    if not 0 < delta < 1:
        raise ConfigError(f"{field} must be in (0, 1), got {value!r}")
    return delta


def check_clip(value: object, field: str) -> float:
    """An L2 clip norm: a finite number > 0."""
    clip = _number(value, field)
    if clip <= 0:
        raise ConfigError(f"{field} must be > 0, got {value!r}")
    return clip


def check_noise(value: object, field: str) -> float:
    """A noise multiplier (noise std / sensitivity): a finite number >= 0."""
    noise = _number(value, field)
    if noise < 0:
        raise ConfigError(f"{field} must be >= 0, got {value!r}")
    return noise


@dataclass(frozen=True)
class Sampling:
    """How the units a mechanism protects (sites, or patients) enter one use of it.

    ``population`` None: every unit, every time (no amplification). Otherwise ``sample_size``
    of ``population`` units drawn uniformly without replacement (fixed-size sampling, as
    FedAvg's ``fraction``), or each unit independently with probability ``sample_size /
    population`` when ``poisson`` (as Opacus's data loader).
    """

    population: int | None = None
    sample_size: int = 0
    poisson: bool = False

    @property
    def rate(self) -> float:
        return 1.0 if self.population is None else self.sample_size / self.population


class GaussianAccountant:
    """(epsilon, delta) of repeated uses of a Gaussian mechanism, by dp-accounting.

    Uses without sampling compose exactly into one Gaussian mechanism of multiplier
    ``z / sqrt(T)``, whose exact (epsilon, delta) curve dp-accounting gives in closed form; the
    RDP bound is also computed and the smaller reported (both hold). With sampling, RDP.

    One use adds Gaussian noise of std ``noise_multiplier`` x the clip norm to a sum of clipped
    contributions. Without sampling, and with Poisson sampling, the neighbouring relation is
    add/remove one unit (the sum's sensitivity is the clip norm). Fixed-size sampling without
    replacement is analysed (Wang, Balle and Kasiviswanathan 2019) under replace-one, where
    the sensitivity of the sum is twice the clip norm, so the accountant sees half the
    multiplier.
    """

    def __init__(self, noise_multiplier: float, delta: float) -> None:
        self.noise_multiplier = check_noise(noise_multiplier, "noise_multiplier")
        self.delta = check_delta(delta, "delta")
        self._uses: list[Sampling] = []

    @property
    def uses(self) -> list[Sampling]:
        return list(self._uses)

    def spend(self, sampling: Sampling = Sampling()) -> None:
        """Record one use."""
        self._uses.append(sampling)

    def epsilon(self, extra: Sampling | None = None) -> float:
        """The epsilon of every use so far at ``delta`` (plus ``extra``, not recorded);
        inf without noise."""
        uses = [*self._uses, *([extra] if extra is not None else [])]
        if not uses:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return dp_epsilon(self.noise_multiplier, self.delta, uses)


def _unsampled_multiplier(noise_multiplier: float, uses: list[Sampling]) -> float | None:
    """T uses of the Gaussian mechanism without sampling are one of multiplier z / sqrt(T)."""
    if any(u.population is not None for u in uses):
        return None
    return noise_multiplier / math.sqrt(len(uses))


def _gaussian_loss(multiplier: float) -> Any:
    """dp-accounting's exact privacy loss of one Gaussian mechanism (sensitivity 1)."""
    from dp_accounting.pld import privacy_loss_mechanism

    return privacy_loss_mechanism.GaussianPrivacyLoss(multiplier, sensitivity=1)


def dp_epsilon(noise_multiplier: float, delta: float, uses: list[Sampling]) -> float:
    """Epsilon at ``delta`` of ``uses`` of the Gaussian mechanism: dp-accounting's RDP bound,
    or without sampling the smaller of it and the exact one (the privacy-loss distribution of
    one Gaussian of multiplier z / sqrt(T), Balle and Wang 2018: ``delta(epsilon)`` in closed
    form, solved for epsilon to 1e-9)."""
    epsilon = rdp_epsilon(noise_multiplier, delta, uses)
    single = _unsampled_multiplier(noise_multiplier, uses)
    if single is None:
        return epsilon
    loss = _gaussian_loss(single)
    if loss.get_delta_for_epsilon(0.0) <= delta:
        return 0.0
    low, high = 0.0, epsilon  # delta(epsilon) falls as epsilon grows; delta(rdp) <= delta
    while high - low > 1e-9 * max(1.0, high):
        middle = (low + high) / 2
        if loss.get_delta_for_epsilon(middle) > delta:
            low = middle
        else:
            high = middle
    return min(epsilon, high)


def _composed(noise_multiplier: float, uses: list[Sampling]) -> tuple[Any, Any]:
    """dp-accounting's event for ``uses``, and the neighbouring relation to account it under."""
    dpa = _dp_accounting()
    replace_one = any(u.population is not None and not u.poisson for u in uses)
    if replace_one and any(u.poisson for u in uses):
        raise ValueError("Poisson and fixed-size sampling cannot be mixed")
    events = []
    for use in uses:
        if use.population is None:
            events.append(dpa.GaussianDpEvent(noise_multiplier / (2 if replace_one else 1)))
        elif use.poisson:
            events.append(dpa.PoissonSampledDpEvent(use.rate,
                                                    dpa.GaussianDpEvent(noise_multiplier)))
        else:
            events.append(dpa.SampledWithoutReplacementDpEvent(
                use.population, use.sample_size, dpa.GaussianDpEvent(noise_multiplier / 2)))
    relation = (dpa.NeighboringRelation.REPLACE_ONE if replace_one
                else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
    return dpa.ComposedDpEvent(events), relation


def rdp_epsilon(noise_multiplier: float, delta: float, uses: list[Sampling]) -> float:
    """Epsilon at ``delta`` of ``uses`` of the Gaussian mechanism, from dp-accounting's RDP
    accountant (uses with fixed-size sampling and with Poisson sampling cannot be mixed)."""
    event, relation = _composed(noise_multiplier, uses)
    accountant = _dp_accounting().rdp.RdpAccountant(neighboring_relation=relation)
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, delta: float, uses: list[Sampling]) -> float:
    """The smallest noise multiplier whose ``uses`` stay within ``target_epsilon`` at
    ``delta``: dp-accounting's own calibration (without sampling the exact Gaussian mechanism's,
    with sampling Brent's method over its RDP accountant)."""
    check_epsilon(target_epsilon, "target_epsilon")
    check_delta(delta, "delta")
    if not uses:
        raise ConfigError("noise_for_epsilon: no uses to calibrate for")
    dpa = _dp_accounting()
    if _unsampled_multiplier(1.0, uses) is not None:  # one Gaussian of z / sqrt(T), exactly
        from dp_accounting.pld import common, privacy_loss_mechanism

        single = privacy_loss_mechanism.GaussianPrivacyLoss.from_privacy_guarantee(
            common.DifferentialPrivacyParameters(target_epsilon, delta), sensitivity=1)
        return float(single.standard_deviation) * math.sqrt(len(uses))
    _, relation = _composed(1.0, uses)
    noise = dpa.calibrate_dp_mechanism(
        lambda: dpa.rdp.RdpAccountant(neighboring_relation=relation),
        lambda z: _composed(z, uses)[0], target_epsilon, delta,
        dpa.LowerEndpointAndGuess(1e-2, 1.0), tol=1e-5)
    return float(noise)


@dataclass(frozen=True)
class DpSgdSettings:
    """Sample-level DP-SGD at a site: per-example gradients clipped to ``max_grad_norm``,
    Gaussian noise of ``noise_multiplier`` x that norm on their sum (Abadi et al. 2016).

    Either ``noise_multiplier`` is given, or ``target_epsilon`` and the planned number of
    optimiser steps (``planned_steps``, the whole job's), from which the multiplier is
    calibrated by Opacus. With a target, a site refuses to release an update that would take
    it past the target (a job run longer than planned).
    """

    max_grad_norm: float
    delta: float = DEFAULT_DELTA
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    planned_steps: int | None = None

    def __post_init__(self) -> None:
        check_clip(self.max_grad_norm, "dp.max_grad_norm")
        check_delta(self.delta, "dp.delta")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError("dp: give exactly one of dp.noise_multiplier and "
                              "dp.target_epsilon")
        if self.noise_multiplier is not None and check_noise(
                self.noise_multiplier, "dp.noise_multiplier") == 0:
            raise ConfigError("dp.noise_multiplier must be > 0 (no noise, no privacy), got 0")
        if self.target_epsilon is not None:
            check_epsilon(self.target_epsilon, "dp.target_epsilon")
            steps = self.planned_steps
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ConfigError(f"dp.planned_steps must be an int >= 1 with "
                                  f"dp.target_epsilon, got {steps!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], where: str = "dp") -> DpSgdSettings:
        """From job parameters (JSON); unknown keys are refused, naming them."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {values!r}")
        known = {"max_grad_norm", "delta", "noise_multiplier", "target_epsilon",
                 "planned_steps"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown settings {unknown}; known: {sorted(known)}")
        if "max_grad_norm" not in values:
            raise ConfigError(f"{where}.max_grad_norm is required")
        return cls(**values)  # type: ignore[arg-type]  # checked in __post_init__

    def to_mapping(self) -> dict[str, float | int]:
        """JSON job parameters, the inverse of :meth:`from_mapping`."""
        out: dict[str, float | int] = {"max_grad_norm": self.max_grad_norm,
                                       "delta": self.delta}
        for name in ("noise_multiplier", "target_epsilon", "planned_steps"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out
