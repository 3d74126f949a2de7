"""Sample-level DP-SGD for a site's PyTorch model, through Opacus (Abadi et al. 2016).

Every optimiser step draws a Poisson sample of the site's rows (rate batch size / rows; 1 for
full batches), clips each row's gradient to ``max_grad_norm``, sums them, adds Gaussian noise of
std ``noise_multiplier`` x ``max_grad_norm`` and takes an SGD step on the sum divided by the
expected batch size. Opacus's :class:`~opacus.PrivacyEngine` does all of it, and its RDP
accountant says what the steps so far cost; this module only keeps one engine for the whole
job (a site trains many rounds on the same rows: the accountant must see every step) and
reports what each round spent, as :class:`~fedcare.core.privacy.ReportsPrivacy` asks.

The noise and the batch sampling draw from a generator seeded from the operating system's
entropy, never from the job's seed: the server knows that seed, and could otherwise subtract
the noise. Opacus's ``secure_mode`` (a cryptographically secure generator) needs torchcsprng,
which fedcare does not install; the generator here is PyTorch's ordinary one.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fedcare.core.dp import DpSgdSettings
from fedcare.core.privacy import PrivacySpend

#: How each report names the mechanism.
MECHANISM = "dp-sgd (opacus rdp, sample-level)"

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Said at every engine and step; the module docstring says the first, and the second is
# about the rows, which need no gradient. Filtered once here: warnings.catch_warnings is not
# thread-safe, and the simulator runs its sites as threads.
warnings.filterwarnings("ignore", message=r"[\s\S]*Secure RNG turned off", category=UserWarning)
warnings.filterwarnings("ignore", message=r"Full backward hook is firing when gradients are "
                        r"computed with respect to module outputs", category=UserWarning)

#: RDP orders: Opacus's defaults and larger ones, which the many full-batch steps of a
#: federated job at a small epsilon need (with the defaults alone the bound is looser).
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [
    80, 96, 128, 192, 256, 384, 512, 768, 1024]


class DpSgd:
    """DP-SGD on one site's rows for one model, across all the rounds of a job.

    Args:
        model: The model; Opacus wraps it for per-sample gradients, and the caller keeps
            using (loading and reading) the model itself.
        x, y: The site's training rows and labels.
        settings: Clip norm, delta, and the noise multiplier or a target epsilon.
        batch_size: Expected rows per step; 0 (or more than the rows) for full batches.
        loss: Per-row losses, ``loss(output, target)`` with no reduction.
        generator: For tests only: the generator of noise and sampling (by default seeded
            from the operating system's entropy).
    """

    def __init__(self, model: nn.Module, x: np.ndarray, y: np.ndarray,
                 settings: DpSgdSettings, *, batch_size: int, loss: Loss,
                 generator: torch.Generator | None = None) -> None:
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.data_loader import DPDataLoader

        self.settings = settings
        self.model = model
        self._loss = loss
        rows = len(y)
        if rows == 0:
            raise ValueError("dp-sgd: the site has no training rows")
        batch = batch_size if 0 < batch_size < rows else rows
        dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        plain = torch.utils.data.DataLoader(dataset, batch_size=batch)
        #: The Poisson sampling rate per step, as Opacus computes it (1 / batches per epoch).
        self.sample_rate = 1 / len(plain)
        self.expected_batch_size = rows * self.sample_rate
        if settings.noise_multiplier is not None:
            noise = settings.noise_multiplier
        else:
            assert settings.target_epsilon is not None and settings.planned_steps is not None
            noise = get_noise_multiplier(target_epsilon=settings.target_epsilon,
                                         target_delta=settings.delta,
                                         sample_rate=self.sample_rate,
                                         steps=settings.planned_steps, accountant="rdp",
                                         alphas=ALPHAS)
        self.noise_multiplier = float(noise)
        if generator is None:
            generator = torch.Generator().manual_seed(secrets.randbits(63))
        # Our own Poisson loader, so that sampling too draws from the secret generator.
        loader = DPDataLoader.from_data_loader(plain, generator=generator)
        # The sum of clipped per-row gradients plus noise, divided by the expected batch size
        # through the learning rate: exact for empty Poisson batches too (no mean of nothing).
        self._optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        model.train()
        self.engine = PrivacyEngine(accountant="rdp")
        self.module, self.optimizer, self.loader = self.engine.make_private(
            module=model, optimizer=self._optimizer, data_loader=loader,
            noise_multiplier=self.noise_multiplier, max_grad_norm=settings.max_grad_norm,
            poisson_sampling=False, loss_reduction="sum", noise_generator=generator)
        self._batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(())
        self._reported = 0.0
        self._pending: list[PrivacySpend] = []

    def epsilon(self) -> float:
        """The epsilon (at the settings' delta) of every step so far; inf without noise."""
        if not self.engine.accountant.history:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return float(self.engine.accountant.get_epsilon(self.settings.delta, alphas=ALPHAS))

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            return next(self._batches)

    def train(self, steps: int, *, lr: float, weight_decay: float = 0.0) -> float:
        """``steps`` DP-SGD steps; the mean loss of the last batch (nan if it was empty).

        Raises:
            RuntimeError: with a target epsilon, when these steps took the site past it: the
                update must not leave (the steps are spent all the same).
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr / self.expected_batch_size
            group["weight_decay"] = weight_decay * self.expected_batch_size
        self.module.train()
        last = math.nan
        for _ in range(steps):
            xb, yb = self._next_batch()
            self.optimizer.zero_grad()
            losses = self._loss(self.module(xb), yb)
            losses.sum().backward()
            self.optimizer.step()
            last = float(losses.detach().mean()) if len(yb) else math.nan
        spent = self.epsilon()
        target = self.settings.target_epsilon
        if target is not None and spent > target * (1 + 1e-6):
            raise RuntimeError(f"dp-sgd: these steps bring this site's epsilon to {spent:.4g}, "
                               f"over the job's target {target:g}; the update is not sent")
        self._pending.append(PrivacySpend(max(spent - self._reported, 0.0),
                                          self.settings.delta, MECHANISM))
        self._reported = spent
        return last

    def privacy_spent(self) -> list[PrivacySpend]:
        """What each round trained since the last call spent (see :mod:`fedcare.core.privacy`):
        the increase of Opacus's epsilon, so one site's reports add up to its composed
        epsilon; each carries the settings' delta, which composition does not multiply."""
        spent, self._pending = self._pending, []
        return spent
