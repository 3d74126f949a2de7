"""The site half of the hippocampus job: a MONAI UNet trainer on this site's volumes.

Imported only where the job trains (at the hospitals and in the simulator); the server runs
:mod:`fedcare.jobs.hippocampus` and never imports torch or MONAI.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fedcare.core.trainer import SiteContext
from fedcare.datasets.hippocampus import LABELS, site_split
from fedcare.medical.nifti import load_cases
from fedcare.medical.segmentation import NetSpec, SegmentationTrainer

log = logging.getLogger(__name__)


def make_trainer(ctx: SiteContext, *, seed: int = 0, split_seed: int = 0,
                 roi_size: Sequence[int] = (40, 56, 40),
                 window_size: Sequence[int] | None = None,
                 channels: Sequence[int] = (16, 32, 64, 128),
                 norm: str = "instance") -> SegmentationTrainer:
    """One site's trainer: its own folder (``ctx.data_dir``) or its packaged partition.

    Refused cases (unreadable, mismatched, unknown labels) are logged with their file and
    left out; a site with no usable training or test volume fails here, naming itself.
    """
    split = site_split(ctx.site_id, data_dir=ctx.data_dir, seed=split_seed)
    for problem in split.problems:
        log.warning("site %s: skipped %s", ctx.site_id, problem)
    labels = sorted(LABELS)
    train = load_cases(split.train, labels, what=f"training volumes at site {ctx.site_id}")
    test = load_cases(split.test, labels, what=f"test volumes at site {ctx.site_id}")
    return SegmentationTrainer(
        train.volumes, test.volumes, label_names=[LABELS[k] for k in labels],
        roi_size=roi_size, window_size=window_size,
        spec=NetSpec(len(labels), tuple(channels), norm=norm),
        seed=seed, data_seed=seed * 1000 + ctx.site_index)
