"""A small job with real floating-point work: linear regression by local SGD at every site.

Each site draws its own data from (seed, site index), with a different true model per site,
and takes a few float32 gradient steps per round; FedAvg (optionally sampling a fraction of the
sites) averages them. Any difference in what a site computes, in which sites are sampled, or in
how results are summed shows in the final model's bits, which is what the backend tests need.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcare import EvalResult, FedAvg, Job, SiteContext, TrainResult, Weights

NUM_FEATURES = 8


def initial() -> Weights:
    rng = np.random.default_rng(123)
    return Weights({"w": rng.standard_normal(NUM_FEATURES).astype(np.float32),
                    "b": np.zeros(1, np.float32)})


class RegressionTrainer:
    def __init__(self, ctx: SiteContext, steps: int, lr: float) -> None:
        rng = np.random.default_rng([ctx.seed, ctx.site_index])
        n = 20 + 7 * ctx.site_index
        true_w = rng.standard_normal(NUM_FEATURES) + ctx.site_index / 4
        self.x = rng.standard_normal((n, NUM_FEATURES)).astype(np.float32)
        self.y = (self.x @ true_w + rng.normal(0, 0.1, n)).astype(np.float32)
        self.steps, self.lr = steps, np.float32(lr)

    def _loss(self, w: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean((self.x @ w + b - self.y) ** 2))

    def train(self, weights: Mapping[str, np.ndarray], config: object) -> TrainResult:
        w, b = weights["w"].copy(), weights["b"].copy()
        for _ in range(self.steps):
            err = self.x @ w + b - self.y
            w -= self.lr * (self.x.T @ err) / np.float32(len(self.y))
            b -= self.lr * err.mean(keepdims=True)
        return TrainResult(Weights({"w": w, "b": b}), len(self.y), {"loss": self._loss(w, b)})

    def evaluate(self, weights: Mapping[str, np.ndarray], config: object) -> EvalResult:
        return EvalResult(len(self.y), {"loss": self._loss(weights["w"], weights["b"])})


def make_job(num_rounds: int = 3, fraction: float = 1.0, steps: int = 5, lr: float = 0.05,
             seed: int = 0, evaluate_every: int = 1) -> Job:
    def trainer(ctx: SiteContext) -> RegressionTrainer:
        return RegressionTrainer(ctx, steps, lr)

    return Job(name="regression", initial_weights=initial, trainer=trainer,
               strategy=FedAvg(fraction=fraction, seed=seed), num_rounds=num_rounds,
               seed=seed, evaluate_every=evaluate_every, round_timeout_s=120.0)
