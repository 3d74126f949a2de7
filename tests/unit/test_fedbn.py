"""FedBN: batch-norm layers never leave the sites; the rest is averaged."""

import numpy as np
import pytest
import torch
from torch import nn

from fedcare import ConfigError, EvalResult, Job, TrainResult, simulate
from fedcare.algorithms import FedBN
from fedcare.pytorch import batch_norm_patterns, get_weights, set_weights
from fedcare.server import RunListener

SHIFTS = [0.0, 5.0, -3.0]  # each site's features live on a different scale (scanner effect)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))


class BNTrainer:
    def __init__(self, ctx):
        g = torch.Generator().manual_seed(ctx.site_index)
        self.x = torch.randn(64, 2, generator=g) + SHIFTS[ctx.site_index]
        self.y = (self.x.sum(1) > 2 * SHIFTS[ctx.site_index]).float()
        self.model = net()
        self.sent = []

    def train(self, weights, config):
        set_weights(self.model, weights)  # the site agent puts its own BN values back
        opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.model.train()
        for _ in range(5):
            loss = nn.functional.binary_cross_entropy_with_logits(
                self.model(self.x).squeeze(1), self.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return TrainResult(get_weights(self.model), len(self.y))

    def evaluate(self, weights, config):
        set_weights(self.model, weights)  # the site agent puts its own BN values back
        self.model.eval()
        with torch.no_grad():
            acc = ((self.model(self.x).squeeze(1) > 0).float() == self.y).float().mean()
        return EvalResult(len(self.y), {"accuracy": float(acc)})


class Spy(RunListener):
    def __init__(self):
        self.failures = []

    def on_failure(self, failure):
        self.failures.append(failure)


def test_batch_norm_stays_at_each_site():
    trainers = {}

    def make(ctx):
        trainers[ctx.site_id] = BNTrainer(ctx)
        return trainers[ctx.site_id]

    initial = get_weights(net())
    strategy = FedBN(local_layers=batch_norm_patterns(net()))
    job = Job(name="bn", initial_weights=lambda: initial, trainer=make, strategy=strategy,
              num_rounds=5, site_ids=("a", "b", "c"), min_sites=3)
    spy = Spy()
    result = simulate(job, listener=spy)
    assert spy.failures == []
    local = strategy.local_names(initial)
    assert local == {"1.weight", "1.bias", "1.running_mean", "1.running_var",
                     "1.num_batches_tracked"}
    for name in local:  # the server never saw them: the global keeps the initial values
        np.testing.assert_array_equal(result.weights[name], initial[name])
    assert not np.allclose(result.weights["0.weight"], initial["0.weight"])
    # every site keeps batch-norm statistics of its own data, which differ between sites
    means = {s: t.model[1].running_mean.numpy().copy() for s, t in trainers.items()}
    assert np.abs(means["a"] - means["b"]).max() > 0.5
    # ... while the shared layers are the same at every site after loading the global model
    for t in trainers.values():
        set_weights(t.model, result.weights, keep=strategy.local_layers)
        np.testing.assert_allclose(t.model[0].weight.detach().numpy(), result.weights["0.weight"])


def test_default_patterns_catch_usual_batch_norm_names():
    names = ["conv1.weight", "bn1.weight", "bn1.running_mean", "layer1.0.bn2.bias",
             "encoder.norm.weight", "fc.bias", "bn1.num_batches_tracked"]
    local = FedBN().local_names({n: np.zeros(1) for n in names})
    assert local == {"bn1.weight", "bn1.running_mean", "layer1.0.bn2.bias",
                     "encoder.norm.weight", "bn1.num_batches_tracked"}


def test_fedbn_refuses_bad_patterns():
    with pytest.raises(ConfigError, match="bad local_layers pattern"):
        FedBN(local_layers=["("])
    with pytest.raises(ConfigError, match="that is FedAvg"):
        FedBN(local_layers=[])
