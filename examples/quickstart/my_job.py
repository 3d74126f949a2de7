"""Quickstart: your own federated job in about twenty lines (see README)."""

import numpy as np
import torch
from torch.nn.functional import binary_cross_entropy_with_logits as bce

from fedcare import EvalResult, FedAvg, Job, TrainResult
from fedcare.pytorch import get_weights, set_weights
from fedcare.sim import partition

X = np.random.default_rng(0).normal(size=(2000, 5)).astype(np.float32)  # stand-in for your data
Y = (X @ np.arange(5.0) > 0).astype(np.float32)


class MyTrainer:
    def __init__(self, site):  # called once per site; sees only that site's rows
        rows = partition.label_skew(Y, site.num_sites, alpha=0.5, seed=site.seed)[site.site_index]
        cut = int(0.8 * len(rows))
        self.train_rows, self.test_rows = rows[:cut], rows[cut:]
        self.model = torch.nn.Linear(5, 1)

    def _loss(self, rows):
        return bce(self.model(torch.from_numpy(X[rows])).squeeze(1), torch.from_numpy(Y[rows]))

    def train(self, weights, config):
        set_weights(self.model, weights)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=config["lr"])
        for _ in range(config["local_steps"]):
            loss = self._loss(self.train_rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return TrainResult(get_weights(self.model), len(self.train_rows), {"loss": loss.item()})

    def evaluate(self, weights, config):
        set_weights(self.model, weights)
        with torch.no_grad():
            logits = self.model(torch.from_numpy(X[self.test_rows])).squeeze(1)
        accuracy = ((logits > 0).numpy() == Y[self.test_rows]).mean()
        return EvalResult(len(self.test_rows), {"accuracy": float(accuracy)})


def make_job(rounds: int = 10, lr: float = 0.5):
    torch.manual_seed(0)
    return Job(name="quickstart", initial_weights=lambda: get_weights(torch.nn.Linear(5, 1)),
               trainer=MyTrainer, strategy=FedAvg(train_config={"lr": lr, "local_steps": 5}),
               num_rounds=rounds)
