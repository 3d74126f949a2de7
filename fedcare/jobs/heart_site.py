"""The site half of the Fed-Heart-Disease job: the model and the trainer (PyTorch).

Imported only where the job trains: at the hospitals and in the simulator. The server runs
the job's server half (:mod:`fedcare.jobs.heart`) and never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedcare.algorithms.fedprox import MU_KEY
from fedcare.core.dp import DpSgdSettings
from fedcare.core.message import Config, EvalResult, StatsResult, TrainResult
from fedcare.core.metric_parts import auc_parts, ratio_parts, roc_auc
from fedcare.core.privacy import PrivacySpend
from fedcare.core.trainer import SiteContext
from fedcare.core.weights import Weights
from fedcare.datasets.heart import FEATURE_NAMES, load_all, load_hospital, load_hospital_flamby
from fedcare.dpsgd import DpSgd
from fedcare.jobs.heart import FeatureMoments, standardisation
from fedcare.pytorch import ScaffoldSite, get_weights, proximal_term, set_weights
from fedcare.sim import partition
from fedcare.tabular import StandardisedLinear

NUM_FEATURES = len(FEATURE_NAMES)


class HeartModel(StandardisedLinear):
    """Standardise, then one linear layer; outputs the logit of heart disease."""

    def __init__(self) -> None:
        super().__init__(NUM_FEATURES)


@torch.no_grad()
def fit_scaler(model: nn.Module, x: np.ndarray) -> None:
    """Set a model's ``scaler_mean``/``scaler_std`` buffers from centrally held rows (the
    baselines; a federation computes the same from per-site sums)."""
    x64 = x.astype(np.float64)
    mean, std = standardisation(float(len(x64)), x64.sum(0), (x64**2).sum(0))
    model.scaler_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    model.scaler_std.copy_(torch.from_numpy(std.astype(np.float32)))


def fit(model: HeartModel, x: np.ndarray, y: np.ndarray, *, steps: int, lr: float,
        batch_size: int, weight_decay: float, generator: torch.Generator,
        anchor: Weights | None = None, mu: float = 0.0,
        after_backward: Callable[[nn.Module], None] | None = None) -> float:
    """Plain SGD on binary cross-entropy; ``batch_size`` 0 means full batch. Returns last loss.

    With ``mu`` > 0 the FedProx term mu/2 * ||w - anchor||^2 is added to the loss.
    """
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        if 0 < batch_size < len(yt):
            idx = torch.randint(len(yt), (batch_size,), generator=generator)
            xb, yb = xt[idx], yt[idx]
        else:
            xb, yb = xt, yt
        loss = nn.functional.binary_cross_entropy_with_logits(model(xb), yb)
        if mu > 0 and anchor is not None:
            loss = loss + proximal_term(model, anchor, mu)
        optimizer.zero_grad()
        loss.backward()
        if after_backward is not None:
            after_backward(model)  # e.g. SCAFFOLD's gradient correction
        optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def score(model: HeartModel, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy (threshold 0.5), mean binary cross-entropy and ROC AUC (left out where the
    test rows hold one class), with the additive parts of accuracy and AUC
    (:mod:`fedcare.core.metric_parts`) from which the server computes the federation's."""
    model.eval()
    logits = model(torch.from_numpy(x))
    yt = torch.from_numpy(y)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, yt)
    correct = float(((logits > 0).float() == yt).float().sum())
    probabilities = torch.sigmoid(logits.double()).numpy()
    metrics = {"accuracy": correct / len(y), "loss": float(loss),
               **ratio_parts("accuracy", correct, len(y)),
               **auc_parts("auc", probabilities, y)}
    auc = roc_auc(probabilities, y)
    if np.isfinite(auc):
        metrics["auc"] = auc
    return metrics


def _row_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")


class HeartTrainer:
    """One hospital's trainer: sees only that hospital's train and test rows.

    With ``dp`` it trains by sample-level DP-SGD (Opacus, :mod:`fedcare.dpsgd`) and reports
    what each round spent (:meth:`privacy_spent`); the round's epsilon so far is also the
    training metric ``dp_sgd_epsilon``. The site's feature sums for the federated
    standardisation are not covered by DP-SGD (they are the statistics task's, before round 1).
    """

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, *, seed: int = 0, dp: DpSgdSettings | None = None,
                 batch_size: int = 0) -> None:
        self.x_train, self.y_train = x_train, y_train
        self.x_test, self.y_test = x_test, y_test
        self.model = HeartModel()
        self.generator = torch.Generator().manual_seed(seed)
        self.scaffold = ScaffoldSite()  # idle unless the strategy sends control variates
        self.initial_seed = 0
        self.dp = dp
        self.dp_batch_size = batch_size
        self._dpsgd: DpSgd | None = None

    def privacy_spent(self) -> list[PrivacySpend]:
        """What DP-SGD spent in each round since the last call; nothing without ``dp``."""
        return self._dpsgd.privacy_spent() if self._dpsgd is not None else []

    def _train_dp(self, weights: Weights, config: Config) -> TrainResult:
        assert self.dp is not None
        if config.get(MU_KEY, 0.0) or any(k.startswith("scaffold") for k in weights):
            raise ValueError("dp-sgd trains plain SGD: FedProx and SCAFFOLD terms are not "
                             "clipped per row, so they cannot run with dp")
        batch_size = int(config.get("batch_size", 0))
        if batch_size != self.dp_batch_size and self._dpsgd is not None:
            raise ValueError("dp-sgd: the batch size cannot change during a job")
        set_weights(self.model, weights)
        if self._dpsgd is None:  # one engine for the whole job: it must count every step
            self.dp_batch_size = batch_size
            self._dpsgd = DpSgd(self.model, self.x_train, self.y_train, self.dp,
                                batch_size=batch_size, loss=_row_losses)
        loss = self._dpsgd.train(int(config["local_steps"]), lr=float(config["lr"]),
                                 weight_decay=float(config.get("weight_decay", 0.0)))
        metrics = {"dp_sgd_epsilon": self._dpsgd.epsilon()}
        if np.isfinite(loss):
            metrics["loss"] = loss
        return TrainResult(get_weights(self.model), len(self.y_train), metrics)

    def train(self, weights: Weights, config: Config) -> TrainResult:
        if self.dp is not None:
            return self._train_dp(weights, config)
        steps, lr = int(config["local_steps"]), float(config["lr"])
        scaffold = self.scaffold.begin(self.model, weights)
        loss = fit(self.model, self.x_train, self.y_train, steps=steps, lr=lr,
                   batch_size=int(config.get("batch_size", 0)),
                   weight_decay=float(config.get("weight_decay", 0.0)),
                   generator=self.generator, anchor=weights,
                   mu=float(config.get(MU_KEY, 0.0)),
                   after_backward=self.scaffold.correct if scaffold else None)
        extra = self.scaffold.end(self.model, steps, lr) if scaffold else {}
        return TrainResult(Weights({**get_weights(self.model), **extra}), len(self.y_train),
                           {"loss": loss})

    def evaluate(self, weights: Weights, config: Config) -> EvalResult:
        set_weights(self.model, weights)
        return EvalResult(len(self.y_test), score(self.model, self.x_test, self.y_test))

    def statistics(self, config: Config) -> StatsResult:
        return feature_statistics(self.x_train, config)

    def initial_model(self) -> Weights:
        """The job's initial model (the server asks one site for it: it imports no torch)."""
        return initial_weights(self.initial_seed)


def feature_statistics(x_train: np.ndarray, config: Config) -> StatsResult:
    """A site's count, sum and sum of squares of its training features (no rows)."""
    if config.get("name") != FeatureMoments.name:
        raise ValueError(f"unknown statistic {config.get('name')!r}")
    x = x_train.astype(np.float64)
    values = {"count": np.array([len(x)], dtype=np.float64),
              "sum": x.sum(axis=0), "sum_sq": (x**2).sum(axis=0)}
    return StatsResult(Weights(values), len(x))


def _site_data(ctx: SiteContext, split_seed: int, partition_name: str, alpha: float,
               split: str = "seeded") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if partition_name == "natural" and split == "flamby":
        d = load_hospital_flamby(ctx.site_id, data_dir=ctx.data_dir)
        return d.x_train, d.y_train, d.x_test, d.y_test
    if partition_name == "natural":
        # A real site reads its own copy from the data_dir of its kit config; the simulator
        # (no data_dir) reads the copy shipped in the package.
        d = load_hospital(ctx.site_id, seed=split_seed, data_dir=ctx.data_dir)
        return d.x_train, d.y_train, d.x_test, d.y_test
    # Simulated sites: pool the hospitals' splits, then re-partition them.
    hospitals = load_all(seed=split_seed).values()
    x_tr = np.concatenate([h.x_train for h in hospitals])
    y_tr = np.concatenate([h.y_train for h in hospitals])
    x_te = np.concatenate([h.x_test for h in hospitals])
    y_te = np.concatenate([h.y_test for h in hospitals])
    n, seed = ctx.num_sites, ctx.seed
    if partition_name == "iid":
        train_parts = partition.iid(len(y_tr), n, seed=seed)
    elif partition_name == "label_skew":
        train_parts = partition.label_skew(y_tr, n, alpha=alpha, seed=seed, min_size=2)
    else:
        train_parts = partition.quantity_skew(len(y_tr), n, alpha=alpha, seed=seed, min_size=2)
    test_parts = partition.iid(len(y_te), n, seed=seed)
    tr, te = train_parts[ctx.site_index], test_parts[ctx.site_index]
    return x_tr[tr], y_tr[tr], x_te[te], y_te[te]




def initial_weights(seed: int) -> Weights:
    torch.manual_seed(seed)
    return get_weights(HeartModel())


def make_trainer(ctx: SiteContext, *, seed: int = 0, split_seed: int | None = None,
                 partition: str = "natural", alpha: float = 0.5,
                 split: str = "seeded", dp: dict[str, float] | None = None) -> HeartTrainer:
    """One hospital's trainer, as the server half's ``trainer_params`` describe it; ``dp``:
    DP-SGD settings (:class:`~fedcare.core.dp.DpSgdSettings`), checked again here."""
    settings = DpSgdSettings.from_mapping(dp) if dp is not None else None
    x_tr, y_tr, x_te, y_te = _site_data(ctx, seed if split_seed is None else split_seed,
                                        partition, alpha, split)
    trainer = HeartTrainer(x_tr, y_tr, x_te, y_te, seed=seed * 1000 + ctx.site_index,
                           dp=settings)
    trainer.initial_seed = seed
    return trainer
