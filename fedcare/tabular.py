"""Ready trainers for tabular data (PyTorch): logistic regression and the Cox model, trained
by federated rounds (FedAvg, FedProx, SCAFFOLD, ...), with federated preprocessing.

The model, :class:`StandardisedLinear`, carries its preprocessing as buffers the federation
computes before round 1 (:class:`TabularMoments`, from each site's per-column counts, sums and
sums of squares of its present values; no row leaves a site): a missing value is replaced by
the federation's mean of its column, every column is standardised by the federation's mean
and standard deviation, and optional 0/1 indicator columns say which values were missing.
Every site so preprocesses the same way. A job needs three lines::

    def make_trainer(ctx):  # the site half
        x, y, x_test, y_test = my_site_data(ctx)  # NaN = missing
        return LogisticTrainer(x, y, x_test, y_test, seed=ctx.site_index)

    Job(..., trainer=make_trainer, statistics=TabularMoments(), ...)

For an exact fit in a handful of rounds (Newton-Raphson, the pooled coefficients with
standard errors) use :mod:`fedcare.analytics` instead; these trainers are for models trained
like any other federated model (and for comparing algorithms, as the FLamby benchmarks do).

Evaluation reports each site's metrics and the additive parts of the federation's
(:mod:`fedcare.core.metric_parts`): correct predictions over rows for accuracy, concordant
over comparable pairs for the C-index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedcare.algorithms.fedprox import MU_KEY
from fedcare.core.message import Config, EvalResult, StatsResult, TrainResult
from fedcare.core.metric_parts import ratio_parts
from fedcare.core.weights import Weights
from fedcare.pytorch import ScaffoldSite, get_weights, proximal_term, set_weights


class StandardisedLinear(nn.Module):
    """Impute, standardise, (indicators), then one linear layer: a logit or a log-hazard.

    Args:
        num_features: Input columns.
        bias: False for a Cox model (the partial likelihood ignores an intercept).
        indicators: Columns that get a missing-value indicator, appended after the features.
    """

    scaler_mean: torch.Tensor
    scaler_std: torch.Tensor

    def __init__(self, num_features: int, *, bias: bool = True,
                 indicators: Sequence[int] = ()) -> None:
        super().__init__()
        if not all(0 <= i < num_features for i in indicators):
            raise ValueError(f"indicators must be column indices below {num_features}, got "
                             f"{list(indicators)}")
        self.register_buffer("scaler_mean", torch.zeros(num_features))
        self.register_buffer("scaler_std", torch.ones(num_features))
        self.indicators = tuple(indicators)
        self.linear = nn.Linear(num_features + len(self.indicators), 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(x)
        z = (torch.where(missing, self.scaler_mean, x) - self.scaler_mean) / self.scaler_std
        if self.indicators:
            z = torch.cat([z, missing[:, list(self.indicators)].to(z.dtype)], dim=1)
        return self.linear(z).squeeze(-1)  # type: ignore[no-any-return]


def tabular_moments(x: np.ndarray, config: Config) -> StatsResult:
    """A site's per-column count, sum and sum of squares of its present values (NaN =
    missing): the :class:`TabularMoments` task."""
    if config.get("name") != TabularMoments.name:
        raise ValueError(f"unknown statistic {config.get('name')!r}")
    data = x.astype(np.float64)
    present = ~np.isnan(data)
    values = np.where(present, data, 0.0)
    return StatsResult(Weights({"count": present.sum(axis=0).astype(np.float64),
                                "sum": values.sum(axis=0), "sum_sq": (values**2).sum(axis=0)}),
                       len(data))


class TabularMoments:
    """The federation's per-column mean and standard deviation (of present values) into the
    model's ``scaler_mean``/``scaler_std``; a constant column keeps sd 1."""

    name = "tabular_moments"

    def finalize(self, totals: Weights, num_samples: int, weights: Weights) -> Weights:
        count = totals["count"]
        if (count <= 0).any():
            raise ValueError(f"columns {np.flatnonzero(count <= 0).tolist()} have no present "
                             "value at any site")
        mean = totals["sum"] / count
        std = np.sqrt(np.maximum(totals["sum_sq"] / count - mean**2, 0.0))
        return Weights({**weights, "scaler_mean": mean.astype(np.float32),
                        "scaler_std": np.where(std > 1e-8, std, 1.0).astype(np.float32)})


def cox_loss(risk: torch.Tensor, event: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood per event (Breslow; 0 without events)."""
    order = torch.argsort(time, descending=True)
    risk, event = risk[order], event[order]
    at_risk = torch.logcumsumexp(risk, dim=0)  # log sum over patients still at risk
    return -((risk - at_risk) * event).sum() / event.sum().clamp(min=1.0)


def c_index_pairs(risk: np.ndarray, event: np.ndarray, time: np.ndarray
                  ) -> tuple[float, float]:
    """Harrell's C as its additive parts: (concordant, comparable) pairs, where a pair is
    comparable when the earlier time is an observed death and concordant when that patient
    has the higher risk (ties count 1/2)."""
    comparable = (time[:, None] < time[None, :]) & (event[:, None] == 1)
    concordant = (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])
    return float((concordant * comparable).sum()), float(comparable.sum())


def c_index(risk: np.ndarray, event: np.ndarray, time: np.ndarray) -> float:
    """Harrell's C (see :func:`c_index_pairs`); NaN without comparable pairs."""
    concordant, comparable = c_index_pairs(risk, event, time)
    return concordant / comparable if comparable else math.nan


class _LinearTrainer:
    """What both trainers share: full-batch SGD with FedProx and SCAFFOLD, the statistics."""

    def __init__(self, model: StandardisedLinear, x_train: np.ndarray, seed: int) -> None:
        self.model = model
        self.x_train = x_train
        self.scaffold = ScaffoldSite()  # idle unless the strategy sends control variates
        self.seed = seed

    def _loss(self) -> torch.Tensor:
        raise NotImplementedError

    def _num_train(self) -> int:
        return len(self.x_train)

    def train(self, weights: Weights, config: Config) -> TrainResult:
        steps, lr = int(config["local_steps"]), float(config["lr"])
        scaffold = self.scaffold.begin(self.model, weights)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        mu = float(config.get(MU_KEY, 0.0))
        loss = torch.zeros(())
        for _ in range(steps):
            loss = self._loss()
            if mu > 0:
                loss = loss + proximal_term(self.model, weights, mu)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            if scaffold:
                self.scaffold.correct(self.model)
            optimizer.step()
        extra = self.scaffold.end(self.model, steps, lr) if scaffold else {}
        return TrainResult(Weights({**get_weights(self.model), **extra}), self._num_train(),
                           {"loss": float(loss.detach())})

    def statistics(self, config: Config) -> StatsResult:
        return tabular_moments(self.x_train, config)


class CoxTrainer(_LinearTrainer):
    """A Cox model of one site's survival data (``e``: 1 = event observed, ``t``: time),
    trained on the Breslow partial likelihood of its own risk sets; evaluated by the
    C-index (and its pairs)."""

    def __init__(self, train: tuple[np.ndarray, np.ndarray, np.ndarray],
                 test: tuple[np.ndarray, np.ndarray, np.ndarray], *, seed: int = 0,
                 indicators: Sequence[int] = ()) -> None:
        torch.manual_seed(seed)
        super().__init__(StandardisedLinear(train[0].shape[1], bias=False,
                                            indicators=indicators), train[0], seed)
        self.train_data, self.test_data = train, test

    def _loss(self) -> torch.Tensor:
        x, e, t = (torch.from_numpy(a) for a in self.train_data)
        return cox_loss(self.model(x), e, t)

    @torch.no_grad()
    def evaluate(self, weights: Weights, config: Config) -> EvalResult:
        set_weights(self.model, weights)
        x, e, t = self.test_data
        risk = self.model(torch.from_numpy(x)).numpy()
        metrics = {"loss": float(cox_loss(torch.from_numpy(risk), torch.from_numpy(e),
                                          torch.from_numpy(t)))}
        concordant, comparable = c_index_pairs(risk, e, t)
        if comparable:  # a site whose test set has no comparable pair has no C-index
            metrics["c_index"] = concordant / comparable
        # the federation's C-index: its pairs summed over sites, not a mean of sites'
        metrics.update(ratio_parts("c_index", concordant, comparable))
        return EvalResult(len(e), metrics)


class LogisticTrainer(_LinearTrainer):
    """Logistic regression of one site's 0/1 labels; evaluated by accuracy (threshold 0.5),
    cross-entropy and the accuracy's parts."""

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, *, seed: int = 0, indicators: Sequence[int] = ()) -> None:
        torch.manual_seed(seed)
        super().__init__(StandardisedLinear(x_train.shape[1], indicators=indicators),
                         x_train, seed)
        self.y_train, self.x_test, self.y_test = y_train, x_test, y_test

    def _loss(self) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            self.model(torch.from_numpy(self.x_train)), torch.from_numpy(self.y_train))

    @torch.no_grad()
    def evaluate(self, weights: Weights, config: Config) -> EvalResult:
        set_weights(self.model, weights)
        logits = self.model(torch.from_numpy(self.x_test))
        labels = torch.from_numpy(self.y_test)
        correct = float(((logits > 0).float() == labels).float().sum())
        loss = float(nn.functional.binary_cross_entropy_with_logits(logits, labels))
        return EvalResult(len(labels), {"accuracy": correct / max(len(labels), 1),
                                        "loss": loss,
                                        **ratio_parts("accuracy", correct, len(labels))})


__all__ = ["CoxTrainer", "LogisticTrainer", "StandardisedLinear", "TabularMoments",
           "c_index", "c_index_pairs", "cox_loss", "tabular_moments"]
