"""Aggregation algorithms (server-side strategies and their site-side parts)."""

from fedcare.algorithms.dpfedavg import DpFedAvg
from fedcare.algorithms.fedavg import Cyclic, FedAvg, WeightedMeanAggregator
from fedcare.algorithms.fedbn import FedBN
from fedcare.algorithms.fedopt import FedAdagrad, FedAdam, FedAvgM, FedOpt, FedYogi
from fedcare.algorithms.fedprox import FedProx
from fedcare.algorithms.robust import ClippedFedAvg, Krum, Median, RobustFedAvg, TrimmedMean
from fedcare.algorithms.scaffold import Scaffold

__all__ = [
    "ClippedFedAvg",
    "Cyclic",
    "DpFedAvg",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBN",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Krum",
    "Median",
    "RobustFedAvg",
    "Scaffold",
    "TrimmedMean",
    "WeightedMeanAggregator",
]
