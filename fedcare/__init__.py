"""fedcare: federated learning for healthcare.

Write a trainer once (``train``/``evaluate`` on one site's data), bundle it in a :class:`Job`,
and run it with :func:`simulate` on a laptop or across real sites: only the transport changes.
"""

from fedcare.algorithms.fedavg import FedAvg
from fedcare.core.config import load_job
from fedcare.core.errors import (
    AggregationError,
    ConfigError,
    FedcareError,
    SiteError,
    TransportError,
)
from fedcare.core.job import FederatedStatistic, Job
from fedcare.core.message import Config, EvalResult, StatsResult, TrainResult
from fedcare.core.strategy import Aggregator, Strategy
from fedcare.core.tracking import TrackingConfig
from fedcare.core.trainer import SiteContext, Trainer
from fedcare.core.weights import Weights
from fedcare.server.controller import RoundController, RunResult
from fedcare.server.events import RunListener
from fedcare.sim.simulator import simulate

__version__ = "0.1.0"

__all__ = [
    "AggregationError",
    "Aggregator",
    "Config",
    "ConfigError",
    "EvalResult",
    "FedAvg",
    "FedcareError",
    "FederatedStatistic",
    "Job",
    "RoundController",
    "RunListener",
    "RunResult",
    "SiteContext",
    "SiteError",
    "StatsResult",
    "Strategy",
    "TrackingConfig",
    "TrainResult",
    "Trainer",
    "TransportError",
    "Weights",
    "load_job",
    "simulate",
]
