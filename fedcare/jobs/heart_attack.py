"""Leak audit of the heart job: membership inference on what the sites share and on the model.

A data-protection officer's question is whether an attacker can tell that a given patient was
in a hospital's training data. The audit answers it by attacking, as the attacker would, two
things the job exposes:

- **the final model** (anyone who receives it): the loss-threshold attack of Yeom et al. 2018,
  score = -loss of the row under the model (training rows tend to have lower loss);
- **a site's shared update** (the server, or anyone on the wire without secure aggregation):
  the site trains one more round on the final model exactly as in the job, through its own
  outbound filters, and the score of a row is how much that update lowered its loss,
  loss(global) - loss(shared) (a calibrated form of the same attack, as in the
  loss-difference attacks on updates of Nasr et al. 2019).

Members are every site's training rows, non-members the same sites' held-out test rows (the
same distribution); the result is the attack's ROC AUC over all of them: 0.5 is guessing, 1 is
certain. With the heart data's 740 patients an AUC within about 0.5 +- 0.04 is what guessing
alone gives (two standard deviations of the null), so only values beyond that show a leak.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from fedcare.core.config import load_job
from fedcare.core.message import Task, TaskKind, TrainResult
from fedcare.core.policy import SitePolicy
from fedcare.core.trainer import SiteContext
from fedcare.core.weights import Weights
from fedcare.jobs.heart_site import HeartModel, HeartTrainer, make_trainer
from fedcare.pytorch import set_weights
from fedcare.sim.simulator import simulate
from fedcare.site.agent import SiteAgent
from fedcare.site.chain import build_filters

ENTRY_POINT = "fedcare.jobs.heart:make_job"
#: The round metrics in which the privacy mechanisms report their epsilon.
EPSILON_METRICS = ("dp_fedavg_epsilon", "dp_sgd_epsilon", "gaussian_noise_epsilon")


def auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """ROC AUC of a score that should be higher for members: P(member > non-member), ties
    counting one half (the Mann-Whitney statistic)."""
    m = np.asarray(members, np.float64)[:, None]
    n = np.asarray(non_members, np.float64)[None, :]
    return float((m > n).mean() + 0.5 * (m == n).mean())


@torch.no_grad()
def row_losses(weights: Weights, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of every row under a heart model."""
    model = HeartModel()
    set_weights(model, weights)
    model.eval()
    logits = model(torch.from_numpy(x))
    losses = nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y),
                                                            reduction="none")
    return np.asarray(losses.numpy(), np.float64)


@dataclass(frozen=True)
class Audit:
    """One run of the heart job and both attacks on it.

    Attributes:
        accuracy: The final model's test accuracy, unweighted mean over the hospitals.
        epsilon: What the run's privacy mechanism reported after its last round (the largest
            of them if several), or None for a run without differential privacy.
        mechanism: The metric the epsilon came from.
        model_auc: The loss-threshold attack on the final model.
        update_auc: The loss-difference attack on the sites' shared updates.
        per_site: Both AUCs for each hospital's own rows.
    """

    accuracy: float
    epsilon: float | None
    mechanism: str | None
    model_auc: float
    update_auc: float
    per_site: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _shared_update(trainer: HeartTrainer, site_id: str, policy: SitePolicy | None,
                   weights: Weights, config: Mapping[str, object]) -> Weights:
    """What the site sends for one more training round: its trainer, then its filters."""
    _, outbound = build_filters(policy)
    agent = SiteAgent(site_id, trainer, outbound)
    reply = agent.handle(Task(f"audit/{site_id}", "audit", 0, TaskKind.TRAIN, weights,
                              dict(config)))  # type: ignore[arg-type]
    if reply.error is not None or not isinstance(reply.result, TrainResult):
        raise RuntimeError(f"site {site_id}: the audit's training round failed: {reply.error}")
    return reply.result.weights


def audit(params: Mapping[str, object], *, site_policy: SitePolicy | None = None) -> Audit:
    """Run the heart job with ``params`` (and every site's ``site_policy``) in the simulator,
    then attack its final model and the updates the sites would share next."""
    job = load_job(ENTRY_POINT, dict(params))
    result = simulate(job, site_policy=site_policy)
    last = result.history.rounds[-1]
    accuracy = float(np.mean([e.metrics["accuracy"] for e in last.site_eval.values()]))
    reported = {k: last.train_metrics[k] for k in EPSILON_METRICS if k in last.train_metrics}
    mechanism = max(reported, key=reported.__getitem__) if reported else None
    final = result.weights
    sites = list(job.site_ids or ())
    model_in, model_out, update_in, update_out = [], [], [], []
    per_site: dict[str, dict[str, float]] = {}
    for index, site_id in enumerate(sites):
        trainer = make_trainer(SiteContext(site_id, index, len(sites), seed=job.seed),
                               **job.trainer_params)
        config = job.strategy.configure_train(job.num_rounds + 1, site_id)
        shared = _shared_update(trainer, site_id, site_policy, final, config)
        rows = {"in": (trainer.x_train, trainer.y_train), "out": (trainer.x_test, trainer.y_test)}
        model_scores = {k: -row_losses(final, *v) for k, v in rows.items()}
        update_scores = {k: row_losses(final, *v) - row_losses(shared, *v)
                         for k, v in rows.items()}
        per_site[site_id] = {"model_auc": auc(model_scores["in"], model_scores["out"]),
                             "update_auc": auc(update_scores["in"], update_scores["out"])}
        model_in.append(model_scores["in"])
        model_out.append(model_scores["out"])
        update_in.append(update_scores["in"])
        update_out.append(update_scores["out"])
    return Audit(
        accuracy=accuracy,
        epsilon=reported[mechanism] if mechanism is not None else None,
        mechanism=mechanism,
        model_auc=auc(np.concatenate(model_in), np.concatenate(model_out)),
        update_auc=auc(np.concatenate(update_in), np.concatenate(update_out)),
        per_site=per_site)


def without_dp(params: Mapping[str, object]) -> dict[str, object]:
    """The same job without differential privacy: no DP-SGD, FedAvg for DP-FedAvg (same
    rounds and local training), to attack side by side."""
    plain = {k: v for k, v in params.items() if k != "dp"}
    if plain.get("algorithm") == "dp_fedavg":
        plain.pop("algorithm")
        plain.pop("algorithm_params", None)
    return plain
