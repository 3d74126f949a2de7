"""FedProx (Li et al. 2020): FedAvg whose sites add mu/2 * ||w - w_global||^2 to their loss.

The server side is FedAvg plus ``proximal_mu`` in every training config; the site side is
:func:`fedcare.pytorch.proximal_term`, which a trainer adds to its loss. mu = 0 is FedAvg.
"""

from __future__ import annotations

from typing import Any

from fedcare.algorithms.fedavg import FedAvg
from fedcare.core.errors import ConfigError
from fedcare.core.message import Config

MU_KEY = "proximal_mu"


class FedProx(FedAvg):
    """FedAvg with a proximal term of strength ``mu`` (>= 0; the paper uses 0.001 to 1)."""

    def __init__(self, *, mu: float = 0.01, **kwargs: Any) -> None:
        if not mu >= 0:
            raise ConfigError(f"FedProx: mu must be >= 0, got {mu}")
        super().__init__(**kwargs)
        self.mu = float(mu)

    def configure_train(self, round_num: int, site_id: str) -> Config:
        return {**super().configure_train(round_num, site_id), MU_KEY: self.mu}
