"""Core concepts of fedcare. Framework-neutral: nothing here imports torch or another layer."""

from fedcare.core.errors import (
    AggregationError,
    ConfigError,
    FedcareError,
    SiteError,
    TransportError,
)
from fedcare.core.job import FederatedStatistic, Job, JobSource
from fedcare.core.message import (
    Config,
    EvalResult,
    Reply,
    StatsResult,
    Task,
    TaskKind,
    TrainResult,
)
from fedcare.core.strategy import Aggregator, Strategy
from fedcare.core.trainer import SiteContext, StatisticsProvider, Trainer
from fedcare.core.weights import TensorSpec, Weights

__all__ = [
    "AggregationError",
    "Aggregator",
    "Config",
    "ConfigError",
    "EvalResult",
    "FedcareError",
    "FederatedStatistic",
    "Job",
    "JobSource",
    "Reply",
    "SiteContext",
    "SiteError",
    "StatisticsProvider",
    "StatsResult",
    "Strategy",
    "Task",
    "TaskKind",
    "TensorSpec",
    "TrainResult",
    "Trainer",
    "TransportError",
    "Weights",
]
