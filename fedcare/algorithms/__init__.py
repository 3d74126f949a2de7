"""Aggregation algorithms (server-side strategies and their site-side parts)."""

from fedcare.algorithms.fedavg import FedAvg, WeightedMeanAggregator

__all__ = ["FedAvg", "WeightedMeanAggregator"]
