"""Image classification at one site: a small MONAI ResNet, 2D or 3D, behind core's Trainer.

The network is MONAI's ``ResNet`` with one basic block per stage (a ResNet-10: the MedMNIST
paper's ResNet-18 with one block per stage instead of two, at a quarter of its width by
default) and a 3x3 stem without max-pooling, as the paper's ResNets for 28-pixel images have.
In 3D the stem has stride 2: 28^3 volumes at full resolution cost twenty times more per image
on a CPU, for nothing a tissue-shape mask at this size needs. It trains with cross-entropy and
Adam; Adam's moments start afresh each round, since they belong to the weights the previous
round left, not to the global model a site is sent.

Metrics: accuracy (arg-max), ROC AUC (binary, or the macro mean of one-vs-rest AUCs; undefined,
and left out of a site's report, when its test set holds one class) and the mean
cross-entropy. Runs are repeatable: the initial model is drawn under ``seeded(seed)`` and the
batch order from the trainer's own generator, so sites training in threads of one simulator do
not disturb each other's randomness. On a CUDA machine the trainer computes there with mixed
precision (:func:`pick_compute`).

Batch-norm layers are ordinary parameters and buffers here; under FedBN the site agent keeps
them (:func:`fedcare.pytorch.batch_norm_patterns` names them exactly).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from monai.metrics.rocauc import compute_roc_auc
from monai.networks.nets.resnet import ResNet
from torch import nn

from fedcare.core.message import Config, EvalResult, TrainResult
from fedcare.core.weights import Weights
from fedcare.medical.device import Compute, pick_compute, seeded
from fedcare.pytorch import get_weights, set_weights

#: ``seeded`` sets process-wide seeds: model construction is serialised so that two trainers
#: built at once (simulated sites are threads) each get the model of their own seed.
_INIT_LOCK = threading.Lock()
EVAL_BATCH = 256


def build_net(spatial_dims: int, num_classes: int, *, in_channels: int = 1,
              width: int = 16) -> nn.Module:
    """A MONAI ResNet with stages of ``width``, 2x, 4x and 8x channels, one basic block each.

    Args:
        spatial_dims: 2 (images ``(C, H, W)``) or 3 (volumes ``(C, D, H, W)``).
        num_classes: Outputs (logits), at least 2.
        in_channels: Image channels (1 for MedMNIST's grey images and masks).
        width: Channels of the first stage; 16 keeps a 28^3 volume at a few milliseconds per
            training image on one CPU core, 64 is the paper's ResNet width.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    if in_channels < 1 or width < 1:
        raise ValueError(f"in_channels and width must be >= 1, got {in_channels}, {width}")
    return ResNet(block="basic", layers=[1, 1, 1, 1],
                  block_inplanes=[width, 2 * width, 4 * width, 8 * width],
                  spatial_dims=spatial_dims, n_input_channels=in_channels,
                  num_classes=num_classes, conv1_t_size=3,
                  conv1_t_stride=1 if spatial_dims == 2 else 2, no_max_pool=True)


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    return float(np.asarray(compute_roc_auc(torch.from_numpy(scores),
                                            torch.from_numpy(positive.astype(np.float32)))))


def roc_auc(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Binary AUC from the positive class's probability, else the macro one-vs-rest AUC over
    the classes present; NaN when ``labels`` hold fewer than two classes."""
    present = np.unique(labels)
    if len(present) < 2:
        return math.nan
    if num_classes == 2:
        return _auc(probs[:, 1], labels == 1)
    aucs = [_auc(probs[:, c], labels == c) for c in present]
    return float(np.mean(aucs))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, ROC AUC and mean cross-entropy of ``logits`` ``(N, classes)``."""
    scores = torch.from_numpy(logits.astype(np.float32))
    targets = torch.from_numpy(labels.astype(np.int64))
    probs = torch.softmax(scores, dim=1).numpy()
    return {"accuracy": float((logits.argmax(1) == labels).mean()),
            "auc": roc_auc(probs, labels, logits.shape[1]),
            "loss": float(nn.functional.cross_entropy(scores, targets))}


def _check_images(name: str, images: np.ndarray, labels: np.ndarray, spatial_dims: int,
                  num_classes: int) -> None:
    if images.ndim != 2 + spatial_dims:
        raise ValueError(f"{name} images must be (N, C, {'D, ' if spatial_dims == 3 else ''}"
                         f"H, W) for spatial_dims={spatial_dims}, got shape {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"{name} labels must be ({len(images)},), got {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} labels must lie in 0..{num_classes - 1}")


class ClassificationTrainer:
    """One site's image classifier (implements :class:`fedcare.core.trainer.Trainer`).

    Images are channel-first arrays, ``(N, C, H, W)`` or ``(N, C, D, H, W)``: uint8 is scaled
    by 1/255, floats are used as they are. Task config: ``local_epochs`` (default 1), ``lr``
    (default 1e-3), ``batch_size`` (default 32), ``weight_decay`` (default 0). ``seed`` draws
    the initial model, ``shuffle_seed`` (default ``seed``) the batch order: every site of a
    job starts from the same model but shuffles its own way.
    """

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, *, spatial_dims: int, num_classes: int, seed: int = 0,
                 shuffle_seed: int | None = None, width: int = 16,
                 compute: Compute | None = None) -> None:
        _check_images("training", x_train, y_train, spatial_dims, num_classes)
        _check_images("test", x_test, y_test, spatial_dims, num_classes)
        if len(y_train) == 0:
            raise ValueError("no training images")
        self.x_train, self.y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
        self.x_test, self.y_test = torch.from_numpy(x_test), y_test
        self.num_classes = num_classes
        self.compute = compute or pick_compute()
        with _INIT_LOCK, seeded(seed):
            self.model = build_net(spatial_dims, num_classes, in_channels=x_train.shape[1],
                                   width=width)
        self.initial = get_weights(self.model)
        self.model.to(self.compute.device)
        self.generator = torch.Generator().manual_seed(seed if shuffle_seed is None
                                                       else shuffle_seed)

    def _batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute.device, non_blocking=True)
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def _load(self, weights: Weights) -> None:
        self.model.cpu()
        set_weights(self.model, weights)
        self.model.to(self.compute.device)

    def _weights(self) -> Weights:
        return get_weights(self.model)  # copies to CPU numpy

    def train(self, weights: Weights, config: Config) -> TrainResult:
        epochs = int(config.get("local_epochs", 1))
        lr = float(config.get("lr", 1e-3))
        batch_size = int(config.get("batch_size", 32))
        if epochs < 1 or not lr > 0 or batch_size < 1:
            raise ValueError(f"need local_epochs >= 1, lr > 0, batch_size >= 1; got {epochs}, "
                             f"{lr}, {batch_size}")
        self._load(weights)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=lr,
                                     weight_decay=float(config.get("weight_decay", 0.0)))
        scaler = torch.amp.GradScaler(self.compute.device.type, enabled=self.compute.amp)
        self.model.train()
        total, seen = 0.0, 0
        n = len(self.y_train)
        for _ in range(epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, batch_size):
                rows = order[start:start + batch_size]
                if len(rows) < 2 and n >= 2:
                    continue  # batch norm cannot train on one image
                x = self._batch(self.x_train[rows])
                y = self.y_train[rows].to(self.compute.device)
                with self.compute.autocast():
                    loss = nn.functional.cross_entropy(self.model(x), y)
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(scaler.scale(loss))
                scaler.step(optimizer)
                scaler.update()
                total += float(loss.detach()) * len(rows)
                seen += len(rows)
        return TrainResult(self._weights(), n, {"loss": total / max(seen, 1)})

    @torch.no_grad()
    def logits(self, weights: Weights, images: torch.Tensor | None = None) -> np.ndarray:
        """The model's logits on ``images`` (default: this site's test set), ``(N, classes)``."""
        self._load(weights)
        self.model.eval()
        x_all = self.x_test if images is None else images
        out = []
        for start in range(0, len(x_all), EVAL_BATCH):
            with self.compute.autocast():
                out.append(self.model(self._batch(x_all[start:start + EVAL_BATCH])).float())
        if not out:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return torch.cat(out).cpu().numpy()

    def evaluate(self, weights: Weights, config: Config) -> EvalResult:
        """Accuracy, AUC and loss on this site's test set; the AUC is left out when the set
        holds one class only (a site reports finite numbers; the federation's AUC is then the
        mean over the sites that have one)."""
        if len(self.y_test) == 0:
            return EvalResult(0, {})
        metrics = classification_metrics(self.logits(weights), self.y_test)
        return EvalResult(len(self.y_test),
                          {k: v for k, v in metrics.items() if math.isfinite(v)})

    def initial_model(self) -> Weights:
        """The model this trainer's seed draws (a job's server asks one site for it)."""
        return self.initial
