"""Fed-TCGA-BRCA: a Cox proportional-hazards model across 6 regions (FLamby's benchmark).

The model is a linear risk score on standardised features (global statistics computed
federatedly, as in the heart job), trained on the Cox partial likelihood (Breslow, full batch):
:class:`fedcare.tabular.CoxTrainer`. The metric is Harrell's concordance index on each
centre's test patients (the federation's: concordant over comparable pairs, summed over
centres). For the exact Cox fit of these data see :mod:`fedcare.jobs.clinical`.
"""

from __future__ import annotations

import numpy as np
import torch

from fedcare.core.errors import ConfigError
from fedcare.core.job import Job
from fedcare.core.metric_parts import ratio_parts
from fedcare.core.trainer import SiteContext
from fedcare.core.weights import Weights
from fedcare.datasets.tcga_brca import CENTERS, NUM_FEATURES, load_center
from fedcare.jobs.heart import ALGORITHMS
from fedcare.jobs.heart_site import fit_scaler
from fedcare.jobs.strategies import build_strategy
from fedcare.pytorch import get_weights
from fedcare.tabular import (
    CoxTrainer,
    StandardisedLinear,
    TabularMoments,
    c_index,
    c_index_pairs,
    cox_loss,
)


class CoxModel(StandardisedLinear):
    """Standardise, then a linear log-hazard (no intercept: the partial likelihood ignores it)."""

    def __init__(self) -> None:
        super().__init__(NUM_FEATURES, bias=False)


class TcgaTrainer(CoxTrainer):
    """One centre's :class:`~fedcare.tabular.CoxTrainer` on FLamby's train/test split."""

    def __init__(self, site_id: str, seed: int) -> None:
        d = load_center(site_id)
        super().__init__((d.x_train, d.e_train, d.t_train), (d.x_test, d.e_test, d.t_test),
                         seed=seed)


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
def _test_metrics(model: CoxModel, site_id: str) -> dict[str, float]:
    """What a centre's evaluation reports: its C-index (where defined) and its pair counts."""
    d = load_center(site_id)
    concordant, comparable = c_index_pairs(model(torch.from_numpy(d.x_test)).numpy(), d.e_test,
                                           d.t_test)
    metrics = ratio_parts("c_index", concordant, comparable)
    if comparable > 0:
        metrics["c_index"] = concordant / comparable
    return metrics


def run_baselines(*, seed: int, num_rounds: int, local_steps: int, lr: float
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Test metrics per centre (C-index and its pair counts) of (local-only models, the pooled
    model), same step budget."""
    steps = num_rounds * local_steps
    data = {c: load_center(c) for c in CENTERS}
    local = {c: _test_metrics(_fit_central(d.x_train, d.e_train, d.t_train, steps=steps, lr=lr,
                                           seed=seed), c) for c, d in data.items()}
    pooled_model = _fit_central(np.concatenate([d.x_train for d in data.values()]),
                                np.concatenate([d.e_train for d in data.values()]),
                                np.concatenate([d.t_train for d in data.values()]),
                                steps=steps, lr=lr, seed=seed)
    return local, {c: _test_metrics(pooled_model, c) for c in CENTERS}


def make_job(*, num_rounds: int = 40, local_steps: int = 5, lr: float = 0.1, seed: int = 0,
             min_sites: int = 3, algorithm: str = "fedavg",
             algorithm_params: dict[str, float] | None = None) -> Job:
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"tcga job: algorithm must be one of {sorted(ALGORITHMS)}, "
                          f"got {algorithm!r}")
    strategy = build_strategy("tcga", ALGORITHMS, algorithm, seed,
                              {"local_steps": local_steps, "lr": lr}, algorithm_params)

    def initial() -> Weights:
        torch.manual_seed(seed)
        return get_weights(CoxModel())

    return Job(name="tcga", initial_weights=initial,
               trainer=lambda ctx: TcgaTrainer(ctx.site_id, seed * 1000 + ctx.site_index),
               strategy=strategy, num_rounds=num_rounds,
               min_sites=1 if algorithm == "cyclic" else min_sites, site_ids=CENTERS,
               statistics=TabularMoments(), seed=seed)


__all__ = ["CoxModel", "SiteContext", "c_index", "c_index_pairs", "cox_loss", "make_job"]
