"""The benchmark's job: a float32 model of a given size and a trivial local step.

Importable by the server and every site process (bench/ is put on PYTHONPATH by the bench).
"""

from __future__ import annotations

import numpy as np

from fedcare import EvalResult, FedAvg, Job, SiteContext, TrainResult, Weights

NUM_TENSORS = 8


def model(num_params: int, seed: int = 0) -> Weights:
    """``num_params`` float32 parameters in NUM_TENSORS tensors (the last takes the rest)."""
    rng = np.random.default_rng(seed)
    size = num_params // NUM_TENSORS
    sizes = [size] * (NUM_TENSORS - 1) + [num_params - size * (NUM_TENSORS - 1)]
    return Weights({f"layer{i}.weight": rng.standard_normal(n, dtype=np.float32)
                    for i, n in enumerate(sizes)})


def local_step(weights: Weights) -> Weights:
    """The trivial training: one add per parameter (what the floor does too)."""
    return Weights({k: v + np.float32(0.001) for k, v in weights.items()})


class TrivialTrainer:
    def __init__(self, ctx: SiteContext) -> None:
        self.num_samples = 100 + ctx.site_index

    def train(self, weights: Weights, config: object) -> TrainResult:
        return TrainResult(local_step(weights), self.num_samples)

    def evaluate(self, weights: Weights, config: object) -> EvalResult:
        return EvalResult(self.num_samples, {})


def make_job(num_params: int = 1_000_000, num_rounds: int = 3, min_sites: int = 1,
             fraction: float = 1.0) -> Job:
    """``fraction``: the share of sites FedAvg samples each round (bench/simscale.py)."""
    return Job(name="bench", initial_weights=lambda: model(num_params), trainer=TrivialTrainer,
               strategy=FedAvg(fraction=fraction), num_rounds=num_rounds, min_sites=min_sites,
               round_timeout_s=600, evaluate_every=0)


def make_secure_job(num_params: int = 1_000_000, num_rounds: int = 3, min_sites: int = 2,
                    neighbours: int | None = None, threshold: int | None = None) -> Job:
    """The same job with secure aggregation (SecAgg, or SecAgg+ with ``neighbours``)."""
    from fedcare.server.workflows import SecureAggregation

    return Job(name="bench-secure", initial_weights=lambda: model(num_params),
               trainer=TrivialTrainer, strategy=FedAvg(), num_rounds=num_rounds,
               min_sites=min_sites, round_timeout_s=600, evaluate_every=0,
               workflows=(SecureAggregation(threshold=threshold, neighbours=neighbours),))


def make_he_job(num_params: int = 1_000_000, num_rounds: int = 3, min_sites: int = 2,
                poly_modulus_degree: int = 8192) -> Job:
    """The same job with homomorphic (CKKS) aggregation."""
    from fedcare.server.workflows import HomomorphicAggregation

    return Job(name="bench-he", initial_weights=lambda: model(num_params),
               trainer=TrivialTrainer, strategy=FedAvg(), num_rounds=num_rounds,
               min_sites=min_sites, round_timeout_s=600, evaluate_every=0,
               workflows=(HomomorphicAggregation(poly_modulus_degree=poly_modulus_degree),))
