"""3D segmentation on one site's volumes: a MONAI UNet behind core's Trainer protocol.

The model is MONAI's residual UNet, trained with Dice + cross-entropy (DiceCE) by Adam on
random ``roi_size`` crops, and evaluated by sliding-window inference over whole volumes: one
Dice per foreground label (MONAI's DiceMetric on the argmax prediction), reported as
``dice_<label name>`` plus their mean ``dice_mean``. Weights travel as numpy arrays through
:mod:`fedcare.pytorch`. With ``norm="batch"`` the normalisation layers are ``adn.N``
(:data:`NORM_PATTERN`), which FedBN can keep at each site.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import DataLoader
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.networks.utils import one_hot

from fedcare.core.message import Config, EvalResult, TrainResult
from fedcare.core.weights import Weights
from fedcare.medical.device import Compute, pick_compute, seeded
from fedcare.medical.nifti import Volume, evaluation_dataset, training_dataset
from fedcare.pytorch import get_weights, set_weights

#: Names of the UNet's normalisation parameters and buffers (``...adn.N.weight``): FedBN's
#: ``local_layers`` for a ``norm="batch"`` net, usable by a server that imports no torch.
NORM_PATTERN = r"\.adn\.N\."
NORMS = ("instance", "batch")


@dataclass(frozen=True)
class NetSpec:
    """The UNet's shape: feature channels per level (each level halves the resolution), the
    residual units per level, and the normalisation ("instance" keeps no running statistics;
    "batch" does, and FedBN can keep them local)."""

    num_labels: int
    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 1
    norm: str = "instance"

    def __post_init__(self) -> None:
        if self.num_labels < 2:
            raise ValueError(f"num_labels must be >= 2 (background and one label), got "
                             f"{self.num_labels}")
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"channels needs >= 2 positive levels, got {self.channels}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    @property
    def divisor(self) -> int:
        """Each side of a crop must be a multiple of this (one halving per level below top)."""
        return int(2 ** (len(self.channels) - 1))

    def build(self) -> UNet:
        return UNet(spatial_dims=3, in_channels=1, out_channels=self.num_labels,
                    channels=self.channels, strides=(2,) * (len(self.channels) - 1),
                    num_res_units=self.num_res_units, norm=self.norm)


class SegmentationTrainer:
    """One site's 3D segmentation trainer (core's Trainer protocol).

    ``label_names[i]`` names label value ``i`` (``label_names[0]`` is the background). Task
    config: ``local_epochs`` (passes over the site's training volumes), ``lr`` and optionally
    ``batch_size``. The Adam state is kept across rounds, as the trainer lives for the job.
    ``seed`` draws the initial model (the same at every site), ``data_seed`` (default ``seed``)
    the order of volumes and the crops. ``window_size``: the sliding-window inference tile,
    default ``roi_size``, each side rounded up to a multiple the UNet accepts.
    """

    def __init__(self, train: Sequence[Volume], test: Sequence[Volume], *,
                 label_names: Sequence[str], roi_size: Sequence[int], spec: NetSpec,
                 seed: int = 0, compute: Compute | None = None, batch_size: int = 2,
                 window_size: Sequence[int] | None = None, flip: bool = False,
                 data_seed: int | None = None) -> None:
        if spec.num_labels != len(label_names):
            raise ValueError(f"{len(label_names)} label names for a {spec.num_labels}-label net")
        bad = [s for s in roi_size if s < 1 or s % spec.divisor]
        if len(roi_size) != 3 or bad:
            raise ValueError(f"roi_size must be three multiples of {spec.divisor} (the UNet "
                             f"halves each side {len(spec.channels) - 1} times), got "
                             f"{tuple(roi_size)}")
        if not train and not test:
            raise ValueError("a segmentation trainer needs training or test volumes")
        self.label_names = list(label_names)
        self.roi_size = tuple(int(s) for s in roi_size)
        self.window = tuple(-(-int(s) // spec.divisor) * spec.divisor
                            for s in (window_size or roi_size))
        self.spec = spec
        self.seed = seed
        self.compute = compute or pick_compute()
        self.batch_size = batch_size
        self.train_volumes, self.test_volumes = list(train), list(test)
        self.num_train, self.num_test = len(train), len(test)
        with seeded(seed):
            self.model = spec.build().to(self.compute.device)
            self._initial = get_weights(self.model)
        self._train_set = training_dataset(train, self.roi_size, flip=flip) if train else None
        self._test_set = evaluation_dataset(test) if test else None
        self.generator = torch.Generator().manual_seed(seed if data_seed is None else data_seed)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer: torch.optim.Optimizer | None = None
        self._lr = 0.0
        self.scaler = torch.amp.GradScaler(enabled=self.compute.amp)

    def initial_model(self) -> Weights:
        """The job's initial model (the server imports no torch: a site sends it)."""
        return self._initial

    def _optimizer(self, lr: float) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        elif lr != self._lr:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self._lr = lr
        return self.optimizer

    def fit(self, epochs: int, lr: float, batch_size: int | None = None) -> float:
        """Train the current model for ``epochs`` passes; the mean loss of the last pass."""
        if self._train_set is None:
            raise ValueError("this site has no training volumes")
        loader = DataLoader(self._train_set, batch_size=batch_size or self.batch_size,
                            shuffle=True, generator=self.generator, num_workers=0)
        optimizer = self._optimizer(lr)
        device = self.compute.device
        self.model.train()
        losses: list[float] = []
        for _ in range(epochs):
            losses = []
            for batch in loader:
                image, label = batch["image"].to(device), batch["label"].to(device)
                optimizer.zero_grad(set_to_none=True)
                with self.compute.autocast():
                    loss = self.loss(self.model(image), label)
                self.scaler.scale(loss).backward()
                self.scaler.step(optimizer)
                self.scaler.update()
                losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")

    def train(self, weights: Weights, config: Config) -> TrainResult:
        set_weights(self.model, weights)
        epochs, lr = int(config.get("local_epochs", 1)), float(config["lr"])
        if epochs < 1 or not lr > 0:
            raise ValueError(f"need local_epochs >= 1 and lr > 0, got {epochs} and {lr}")
        batch_size = int(config.get("batch_size", 0)) or None
        loss = self.fit(epochs, lr, batch_size)
        return TrainResult(get_weights(self.model), self.num_train, {"loss": loss})

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """The label map (1, H, W, D) int64 of one normalised (1, H, W, D) image."""
        self.model.eval()
        with self.compute.autocast():
            logits = sliding_window_inference(image[None].to(self.compute.device),
                                              self.window, 1, self.model, overlap=0.25)
        return torch.as_tensor(logits).argmax(dim=1).cpu()

    def dice_per_case(self) -> dict[str, list[float]]:
        """Each test volume's Dice per foreground label, by case name."""
        if self._test_set is None:
            raise ValueError("this site has no test volumes")
        num = len(self.label_names)
        metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
        out = {}
        for index, name in enumerate(self.test_names):
            item = self._test_set[index]
            prediction = one_hot(self.predict(item["image"])[None], num)
            truth = one_hot(torch.as_tensor(item["label"])[None], num)
            out[name] = [float(d) for d in metric(prediction, truth)[0]]
        return out

    def dice(self, names: Collection[str] | None = None) -> dict[str, float]:
        """Mean Dice over the test volumes (or those named) per foreground label, and the
        mean of those (``dice_mean``)."""
        per_case = self.dice_per_case()
        scores = np.array([d for n, d in per_case.items() if names is None or n in names])
        if not len(scores):
            raise ValueError(f"none of the test volumes {sorted(per_case)} is in {names}")
        per_label = scores.mean(axis=0)
        metrics = {f"dice_{n}": float(d) for n, d in zip(self.label_names[1:], per_label,
                                                          strict=True)}
        metrics["dice_mean"] = float(per_label.mean())
        return metrics

    def evaluate(self, weights: Weights, config: Config) -> EvalResult:
        set_weights(self.model, weights)
        return EvalResult(self.num_test, self.dice())

    @property
    def test_names(self) -> list[str]:
        return [v.name for v in self.test_volumes]

    def test_images(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, normalised image, label) of each test volume, for figures."""
        if self._test_set is None:
            return []
        items = [self._test_set[i] for i in range(self.num_test)]
        return [(n, torch.as_tensor(i["image"]), torch.as_tensor(i["label"]))
                for n, i in zip(self.test_names, items, strict=True)]
