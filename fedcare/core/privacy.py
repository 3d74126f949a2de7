"""What a site spends of its privacy budget: the one vocabulary of mechanisms and the ledger.

A differentially private mechanism at a site (a filter on what leaves, like the sparse vector
technique or Gaussian noise on an update; DP-SGD inside the trainer) reports what each of its
uses cost as a :class:`PrivacySpend`, computed by a maintained accountant (Opacus, dp-accounting),
never by hand. Anything that spends implements :class:`ReportsPrivacy`: the site asks it after
each task, charges the site's own ledger with what it reports *before* the result leaves, and
refuses the task when the site's budget would be exceeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fedcare.core.errors import ConfigError


@dataclass(frozen=True)
class PrivacySpend:
    """The (epsilon, delta) one use of a mechanism cost, and which mechanism it was.

    Attributes:
        epsilon: The privacy loss of this use (>= 0, finite).
        delta: Its failure probability (0 <= delta < 1).
        mechanism: What spent it, for people: e.g. ``"svt (Li et al. 2019)"``,
            ``"dp-sgd (opacus rdp)"``, ``"gaussian update noise"``.
    """

    epsilon: float
    delta: float
    mechanism: str

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, int | float) and math.isfinite(self.epsilon)
                and self.epsilon >= 0):
            raise ConfigError(f"{self.mechanism}: epsilon must be a finite number >= 0, got "
                              f"{self.epsilon!r}")
        if not (isinstance(self.delta, int | float) and 0 <= self.delta < 1):
            raise ConfigError(f"{self.mechanism}: delta must be in [0, 1), got {self.delta!r}")


@runtime_checkable
class ReportsPrivacy(Protocol):
    """A site-side mechanism (filter or trainer) that spends privacy budget."""

    def privacy_spent(self) -> list[PrivacySpend]:
        """What it spent since the last call (each use once), in order."""
        ...
