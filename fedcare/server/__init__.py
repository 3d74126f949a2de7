"""Server side: the round controller, checkpoints, history and run events."""

from fedcare.server.checkpoint import Checkpointer, load_weights
from fedcare.server.controller import RoundController, RunResult
from fedcare.server.events import RunListener, RunState, RunStatus
from fedcare.server.history import History, RoundRecord, SiteFailure

__all__ = [
    "Checkpointer",
    "History",
    "RoundController",
    "RoundRecord",
    "RunListener",
    "RunResult",
    "RunState",
    "RunStatus",
    "SiteFailure",
    "load_weights",
]
