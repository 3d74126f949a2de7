"""The two reference points of the heart demo, trained centrally with the same code as the sites.

- local: each hospital trains alone on its own data, standardised with its own statistics (what
  a hospital could do without a federation);
- pooled: one model on all hospitals' training rows together, standardised with the pooled
  statistics (the upper baseline federation tries to reach without moving data).

Both use the same optimiser, steps and learning rate budget as the federated run
(``num_rounds * local_steps`` steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedcare.datasets.heart import HospitalData, load_all
from fedcare.jobs.heart_site import HeartModel, fit, fit_scaler, score


@dataclass(frozen=True)
class BaselineResult:
    """Test accuracies per hospital.

    ``local_cross[h]`` is the local model of ``h`` evaluated on every hospital's test set,
    averaged over hospitals, as FLamby reports local training. ``local_metrics`` and
    ``pooled_metrics`` hold every test metric per hospital (AUC, and the additive parts a
    site would send, :func:`fedcare.jobs.heart_site.score`).
    """

    local: dict[str, float]
    local_cross: dict[str, float]
    pooled: dict[str, float]
    local_metrics: dict[str, dict[str, float]]
    pooled_metrics: dict[str, dict[str, float]]


def _train(x: np.ndarray, y: np.ndarray, *, seed: int, steps: int, lr: float, batch_size: int,
           weight_decay: float) -> HeartModel:
    torch.manual_seed(seed)
    model = HeartModel()
    fit_scaler(model, x)
    fit(model, x, y, steps=steps, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
        generator=torch.Generator().manual_seed(seed))
    return model


def run_baselines(*, seed: int, num_rounds: int, local_steps: int, lr: float,
                  batch_size: int = 0, weight_decay: float = 0.0,
                  data: dict[str, HospitalData] | None = None) -> BaselineResult:
    """Local-only and pooled accuracies for one seed (the same split as the federated run)."""
    hospitals = data or load_all(seed=seed)
    kwargs = dict(seed=seed, steps=num_rounds * local_steps, lr=lr, batch_size=batch_size,
                  weight_decay=weight_decay)
    local, cross, local_metrics = {}, {}, {}
    for site_id, h in hospitals.items():
        model = _train(h.x_train, h.y_train, **kwargs)  # type: ignore[arg-type]
        local_metrics[site_id] = score(model, h.x_test, h.y_test)
        local[site_id] = local_metrics[site_id]["accuracy"]
        cross[site_id] = float(np.mean(
            [score(model, o.x_test, o.y_test)["accuracy"] for o in hospitals.values()]))
    x_all = np.concatenate([h.x_train for h in hospitals.values()])
    y_all = np.concatenate([h.y_train for h in hospitals.values()])
    pooled_model = _train(x_all, y_all, **kwargs)  # type: ignore[arg-type]
    pooled_metrics = {s: score(pooled_model, h.x_test, h.y_test) for s, h in hospitals.items()}
    pooled = {s: m["accuracy"] for s, m in pooled_metrics.items()}
    return BaselineResult(local, cross, pooled, local_metrics, pooled_metrics)
