"""Laplace noise on the statistics a site sends (counts, sums, histograms): the heart job's
federated standardisation, say, with a differential-privacy guarantee the site chooses.

The Laplace mechanism: every value gets independent ``Lap(sensitivity / epsilon)`` noise,
which makes one release ``epsilon``-DP when ``sensitivity`` bounds the L1 change of the whole
vector of values one patient's row can cause. fedcare cannot know that bound (it depends on
the columns' ranges), so the site's operator states it; each release is charged to the
site's ledger as ``epsilon``.
"""

from __future__ import annotations

import numpy as np

from fedcare.core.message import Result, StatsResult, Task, TaskKind
from fedcare.core.privacy import PrivacySpend
from fedcare.core.weights import Weights
from fedcare.site.filters import Filter, number


class StatisticsNoise(Filter):
    """Add ``Lap(sensitivity / epsilon)`` to every floating-point value of a statistics result.

    Args:
        epsilon: The budget of one release (> 0).
        sensitivity: The L1 sensitivity of all the values of one release to one row (> 0).
        rng: Randomness, for tests only.
    """

    name = "statistics_noise"

    def __init__(self, epsilon: float, sensitivity: float,
                 rng: np.random.Generator | None = None) -> None:
        self.epsilon = number(epsilon, "statistics_noise: epsilon")
        self.sensitivity = number(sensitivity, "statistics_noise: sensitivity")
        self._rng = rng or np.random.default_rng()
        self._spent: list[PrivacySpend] = []

    def outbound(self, task: Task, result: Result) -> Result:
        if task.kind != TaskKind.STATISTICS or not isinstance(result, StatsResult):
            return result
        scale = self.sensitivity / self.epsilon
        noisy = {name: (value + self._rng.laplace(scale=scale, size=value.shape)
                        ).astype(value.dtype) if np.issubdtype(value.dtype, np.floating)
                 else value for name, value in result.values.items()}
        self._spent.append(PrivacySpend(self.epsilon, 0.0,
                                        f"laplace on statistics (scale {scale:.4g})"))
        return StatsResult(Weights(noisy), result.num_samples)

    def privacy_spent(self) -> list[PrivacySpend]:
        spent, self._spent = self._spent, []
        return spent
