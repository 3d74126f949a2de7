"""A site's update held back during a multi-step aggregation round (secure or homomorphic).

The update passed the site's outbound filters in the round's first step and stays at the site;
later steps send only what the protocol makes of it (masked integers, ciphertexts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from fedcare.core.message import Task, TrainResult
from fedcare.core.weights import Weights


@dataclass
class KeptUpdate:
    """The round's identity (job, round, session) and the update with the model it started
    from."""

    job_id: str
    round_num: int
    session: str
    update: Weights
    start: Weights
    num_samples: int

    @classmethod
    def kept(cls, task: Task, trained: TrainResult, session: str, start: Weights) -> Self:
        """The round of ``task`` keeping its ``trained`` result (the subclass's own fields take
        their defaults: fresh keys and seeds)."""
        return cls(task.job_id, task.round_num, session, trained.weights, start,
                   trained.num_samples)
