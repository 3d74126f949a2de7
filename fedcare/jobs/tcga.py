"""Fed-TCGA-BRCA: a Cox proportional-hazards model across 6 regions (FLamby's benchmark).

The model is a linear risk score on standardised features (global statistics computed
federatedly, as in the heart job), trained on the Cox partial likelihood (Breslow, full batch);
the metric is Harrell's concordance index on each centre's test patients.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedcare.algorithms.fedprox import MU_KEY
from fedcare.core.errors import ConfigError
from fedcare.core.job import Job
from fedcare.core.message import Config, EvalResult, StatsResult, TrainResult
from fedcare.core.metric_parts import ratio_parts
from fedcare.core.trainer import SiteContext
from fedcare.core.weights import Weights
from fedcare.datasets.tcga_brca import CENTERS, NUM_FEATURES, load_center
from fedcare.jobs.heart import ALGORITHMS, FeatureMoments
from fedcare.jobs.heart_site import feature_statistics, fit_scaler
from fedcare.pytorch import ScaffoldSite, get_weights, proximal_term, set_weights


class CoxModel(nn.Module):
    """Standardise, then a linear log-hazard (no intercept: the partial likelihood ignores it)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scaler_mean", torch.zeros(NUM_FEATURES))
        self.register_buffer("scaler_std", torch.ones(NUM_FEATURES))
        self.linear = nn.Linear(NUM_FEATURES, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.scaler_mean) / self.scaler_std).squeeze(-1)


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


class TcgaTrainer:
    def __init__(self, site_id: str, seed: int) -> None:
        d = load_center(site_id)
        self.train_data = (d.x_train, d.e_train, d.t_train)
        self.test_data = (d.x_test, d.e_test, d.t_test)
        torch.manual_seed(seed)
        self.model = CoxModel()
        self.scaffold = ScaffoldSite()  # idle unless the strategy sends control variates

    def train(self, weights: Weights, config: Config) -> TrainResult:
        steps, lr = int(config["local_steps"]), float(config["lr"])
        scaffold = self.scaffold.begin(self.model, weights)
        x, e, t = (torch.from_numpy(a) for a in self.train_data)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        loss = torch.zeros(())
        for _ in range(steps):
            loss = cox_loss(self.model(x), e, t)
            mu = float(config.get(MU_KEY, 0.0))
            if mu > 0:
                loss = loss + proximal_term(self.model, weights, mu)
            optimizer.zero_grad()
            loss.backward()
            if scaffold:
                self.scaffold.correct(self.model)
            optimizer.step()
        extra = self.scaffold.end(self.model, steps, lr) if scaffold else {}
        return TrainResult(Weights({**get_weights(self.model), **extra}), len(e),
                           {"loss": float(loss.detach())})

    @torch.no_grad()
    def evaluate(self, weights: Weights, config: Config) -> EvalResult:
        set_weights(self.model, weights)
        x, e, t = self.test_data
        risk = self.model(torch.from_numpy(x)).numpy()
        metrics = {"loss": float(cox_loss(torch.from_numpy(risk), torch.from_numpy(e),
                                          torch.from_numpy(t)))}
        concordant, comparable = c_index_pairs(risk, e, t)
        if comparable:  # a centre whose test set has no comparable pair has no C-index
            metrics["c_index"] = concordant / comparable
        # the federation's C-index: its pairs summed over centres, not a mean of centres
        metrics.update(ratio_parts("c_index", concordant, comparable))
        return EvalResult(len(e), metrics)

    def statistics(self, config: Config) -> StatsResult:
        return feature_statistics(self.train_data[0], config)


def _fit_central(x: np.ndarray, e: np.ndarray, t: np.ndarray, *, steps: int, lr: float,
                 seed: int) -> CoxModel:
    torch.manual_seed(seed)
    model = CoxModel()
    fit_scaler(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    xt, et, tt = (torch.from_numpy(a) for a in (x, e, t))
    for _ in range(steps):
        loss = cox_loss(model(xt), et, tt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@torch.no_grad()
def _test_c_index(model: CoxModel, site_id: str) -> float:
    d = load_center(site_id)
    return c_index(model(torch.from_numpy(d.x_test)).numpy(), d.e_test, d.t_test)


def run_baselines(*, seed: int, num_rounds: int, local_steps: int, lr: float
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """Test C-index per centre of (local-only models, the pooled model), same step budget."""
    steps = num_rounds * local_steps
    data = {c: load_center(c) for c in CENTERS}
    local = {c: _test_c_index(_fit_central(d.x_train, d.e_train, d.t_train, steps=steps, lr=lr,
                                           seed=seed), c) for c, d in data.items()}
    pooled_model = _fit_central(np.concatenate([d.x_train for d in data.values()]),
                                np.concatenate([d.e_train for d in data.values()]),
                                np.concatenate([d.t_train for d in data.values()]),
                                steps=steps, lr=lr, seed=seed)
    return local, {c: _test_c_index(pooled_model, c) for c in CENTERS}


def make_job(*, num_rounds: int = 40, local_steps: int = 5, lr: float = 0.1, seed: int = 0,
             min_sites: int = 3, algorithm: str = "fedavg",
             algorithm_params: dict[str, float] | None = None) -> Job:
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"tcga job: algorithm must be one of {sorted(ALGORITHMS)}, "
                          f"got {algorithm!r}")
    try:
        strategy = ALGORITHMS[algorithm](seed=seed, train_config={
            "local_steps": local_steps, "lr": lr}, **(algorithm_params or {}))
    except TypeError as exc:
        raise ConfigError(f"tcga job: bad algorithm_params for {algorithm}: {exc}") from None

    def initial() -> Weights:
        torch.manual_seed(seed)
        return get_weights(CoxModel())

    return Job(name="tcga", initial_weights=initial,
               trainer=lambda ctx: TcgaTrainer(ctx.site_id, seed * 1000 + ctx.site_index),
               strategy=strategy, num_rounds=num_rounds,
               min_sites=1 if algorithm == "cyclic" else min_sites, site_ids=CENTERS,
               statistics=FeatureMoments(), seed=seed)


__all__ = ["CoxModel", "SiteContext", "c_index", "c_index_pairs", "cox_loss", "make_job"]
