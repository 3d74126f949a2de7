"""Every filter a site policy (or a job's ``outbound_filters``) may name, and the chains built
from them: fresh objects for every job, so no state crosses jobs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.core.policy import FilterSpec, SitePolicy
from fedcare.site.dp_noise import GaussianNoise
from fedcare.site.filters import ClipUpdateNorm, ExcludeVariables, Filter
from fedcare.site.quantise import HalfPrecision, Int8Update
from fedcare.site.sharing import PercentileSharing, SvtPrivacy
from fedcare.site.statistics_noise import StatisticsNoise

#: The filters a site policy may name.
FILTERS: dict[str, Callable[..., Filter]] = {f.name: f for f in (
    ClipUpdateNorm, ExcludeVariables, PercentileSharing, SvtPrivacy, HalfPrecision, Int8Update,
    StatisticsNoise, GaussianNoise)}


def build_filter(spec: FilterSpec, where: str) -> Filter:
    """One filter from its description; ``where`` names it in errors (``site policy
    outbound.2``)."""
    factory = FILTERS.get(spec.name)
    if factory is None:
        raise ConfigError(f"{where}: unknown filter {spec.name!r}; known: "
                          f"{sorted(FILTERS)}")
    params: Mapping[str, Any] = spec.params
    if "rng" in params:
        raise ConfigError(f"{where}: filter {spec.name}: rng is not a setting")
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"{where}: filter {spec.name}: bad parameters: "
                          f"{exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


def build_filters(policy: SitePolicy | None, job_outbound: Sequence[FilterSpec] = ()
                  ) -> tuple[list[Filter], list[Filter]]:
    """Fresh inbound and outbound chains from a site's policy (None: empty chains), the
    filters a job asks for (``job_outbound``) running first on what leaves, so the site's
    own have the last word.

    Raises:
        ConfigError: an unknown filter or bad parameters, naming the chain and position.
    """
    job = [build_filter(s, f"job outbound_filters.{i}") for i, s in enumerate(job_outbound)]
    if policy is None:
        return [], job
    inbound = [build_filter(s, f"site policy inbound.{i}") for i, s in enumerate(policy.inbound)]
    outbound = [build_filter(s, f"site policy outbound.{i}") for i, s in enumerate(policy.outbound)]
    return inbound, job + outbound
