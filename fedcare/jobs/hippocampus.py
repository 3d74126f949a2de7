"""Federated 3D segmentation of the hippocampus on real MRI (MSD Task04), three hospitals.

This module is the job's server half and imports neither torch nor MONAI; the site half (the
UNet and its trainer) is :mod:`fedcare.jobs.hippocampus_site`. The initial model comes from a
site. In the simulator and in ``fedcare demo hippocampus`` the three hospitals are a simulated
split of single-centre data (:mod:`fedcare.datasets.hippocampus`); a real site reads its own
``imagesTr/``/``labelsTr/`` folder from its kit's ``data_dir``.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedcare import algorithms
from fedcare.core.errors import ConfigError
from fedcare.core.job import Job
from fedcare.core.strategy import Strategy
from fedcare.datasets.hippocampus import SITES

ENTRY_POINT = "fedcare.jobs.hippocampus:make_job"
#: The UNet's normalisation layers (``...adn.N.*``; :data:`fedcare.medical.segmentation.
#: NORM_PATTERN`), kept at each site by FedBN.
NORM_PATTERN = r"\.adn\.N\."
ALGORITHMS = ("fedavg", "fedbn")


def _check_sizes(name: str, values: Sequence[int], length: int | None) -> list[int]:
    out = list(values)
    if (length is not None and len(out) != length) or not out or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in out):
        what = f"{length} positive integers" if length else "positive integers"
        raise ConfigError(f"hippocampus job: {name} must be {what}, got {values!r}")
    return out


def make_job(
    *,
    num_rounds: int = 10,
    local_epochs: int = 2,
    lr: float = 2e-3,
    batch_size: int = 2,
    seed: int = 0,
    split_seed: int = 0,
    roi_size: Sequence[int] = (40, 56, 40),
    window_size: Sequence[int] | None = None,
    channels: Sequence[int] = (16, 32, 64, 128),
    norm: str = "instance",
    algorithm: str = "fedavg",
    min_sites: int = 2,
    round_timeout_s: float = 900.0,
    site_ids: Sequence[str] | None = SITES,
) -> Job:
    """The hippocampus segmentation job.

    Each round every site trains ``local_epochs`` passes over its training volumes (random
    ``roi_size`` crops, ``batch_size`` per step, Adam at ``lr``); the global model is then
    evaluated at each site on its test volumes by sliding-window inference (``window_size``),
    reporting Dice per label (``dice_anterior``, ``dice_posterior``, ``dice_mean``);
    ``window_size`` defaults to ``roi_size``.
    ``channels``: the UNet's feature channels per level; each side of ``roi_size`` must be a
    multiple of 2^(levels - 1). ``algorithm``: "fedavg", or "fedbn" (``norm="batch"`` layers
    stay at each site). ``split_seed`` fixes the simulated split of the packaged cases and of a
    site's own folder. ``site_ids``: None for any sites (each then needs a ``data_dir``).
    """
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"hippocampus job: algorithm must be one of {ALGORITHMS}, got "
                          f"{algorithm!r}")
    if norm not in ("instance", "batch"):
        raise ConfigError(f"hippocampus job: norm must be 'instance' or 'batch', got {norm!r}")
    if algorithm == "fedbn" and norm != "batch":
        raise ConfigError("hippocampus job: fedbn keeps batch-norm layers local; it needs "
                          "norm='batch'")
    if local_epochs < 1 or not lr > 0 or batch_size < 1:
        raise ConfigError(f"hippocampus job: need local_epochs >= 1, lr > 0, batch_size >= 1 "
                          f"(got {local_epochs}, {lr}, {batch_size})")
    chans = _check_sizes("channels", channels, None)
    if len(chans) < 2:
        raise ConfigError(f"hippocampus job: channels needs >= 2 levels, got {channels!r}")
    roi = _check_sizes("roi_size", roi_size, 3)
    window = _check_sizes("window_size", window_size, 3) if window_size is not None else None
    divisor = 2 ** (len(chans) - 1)
    if any(s % divisor for s in roi):
        raise ConfigError(f"hippocampus job: each side of roi_size {roi} must be a multiple of "
                          f"{divisor} (a {len(chans)}-level UNet halves it {len(chans) - 1} "
                          "times)")
    train_config = {"local_epochs": local_epochs, "lr": lr, "batch_size": batch_size}
    strategy: Strategy
    if algorithm == "fedbn":
        strategy = algorithms.FedBN(local_layers=(NORM_PATTERN,), seed=seed,
                                    train_config=train_config)
    else:
        strategy = algorithms.FedAvg(seed=seed, train_config=train_config)
    return Job(
        name="hippocampus",
        initial_weights=None,  # a site sends it: the server needs no torch
        trainer="fedcare.jobs.hippocampus_site:make_trainer",
        trainer_params={"seed": seed, "split_seed": split_seed, "roi_size": roi,
                        "window_size": window, "channels": chans, "norm": norm},
        strategy=strategy,
        num_rounds=num_rounds,
        min_sites=min_sites,
        round_timeout_s=round_timeout_s,
        site_ids=tuple(site_ids) if site_ids is not None else None,
        seed=seed,
    )
