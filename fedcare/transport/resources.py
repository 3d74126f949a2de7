"""What one simulated site needs from a Ray cluster; kept apart so it is usable without Ray."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedcare.core.errors import ConfigError


@dataclass(frozen=True)
class SiteResources:
    """What one simulated site needs while it runs a task, as Ray schedules it.

    Attributes:
        num_cpus: CPUs per site (> 0); fractions pack several sites per core.
        num_gpus: GPUs per site (>= 0); 0.25 lets four sites share one GPU.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if not (self.num_cpus > 0 and math.isfinite(self.num_cpus)):
            raise ConfigError(f"num_cpus per site must be > 0, got {self.num_cpus}")
        if not (self.num_gpus >= 0 and math.isfinite(self.num_gpus)):
            raise ConfigError(f"num_gpus per site must be >= 0, got {self.num_gpus}")

    def pool_size(self, available: dict[str, float], num_sites: int) -> int:
        """How many actors of these resources fit in ``available`` (at most one per site)."""
        fits = math.floor(available.get("CPU", 0.0) / self.num_cpus + 1e-9)
        if self.num_gpus > 0:
            fits = min(fits, math.floor(available.get("GPU", 0.0) / self.num_gpus + 1e-9))
        return min(fits, num_sites)
