"""Site side: the agent that runs a trainer and applies the site policy."""

from fedcare.site.agent import SiteAgent
from fedcare.site.filters import (
    ClipUpdateNorm,
    ExcludeVariables,
    Filter,
    GaussianNoise,
    build_filters,
)

__all__ = ["ClipUpdateNorm", "ExcludeVariables", "Filter", "GaussianNoise", "SiteAgent",
           "build_filters"]
