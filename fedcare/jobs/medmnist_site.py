"""The site half of the MedMNIST job: the site's images and its classification trainer.

Imported only where the job trains (hospitals, the simulator); the server runs
:mod:`fedcare.jobs.medmnist` and never imports torch or MONAI.

Where the images come from: a site whose kit names a data folder (``SiteContext.data_dir``)
reads its own ``<dataset>.npz`` there, in MedMNIST's format, and trains on all of its training
split; otherwise (the simulator, or a demonstration federation) it carves its share out of the
copy shipped with fedcare, by Dirichlet label skew (:func:`fedcare.medical.medmnist.site_data`).
"""

from __future__ import annotations

from fedcare.core.trainer import SiteContext
from fedcare.datasets.medmnist import FILES
from fedcare.medical.classification import ClassificationTrainer
from fedcare.medical.device import pick_compute
from fedcare.medical.medmnist import load, site_data, subset


def make_trainer(ctx: SiteContext, *, dataset: str = "breastmnist", alpha: float = 0.5,
                 seed: int = 0, split_seed: int | None = None, test: str = "share",
                 width: int = 16, device: str = "auto") -> ClassificationTrainer:
    """One site's trainer, as the server half's ``trainer_params`` describe it."""
    spec = subset(dataset)
    if ctx.data_dir is not None:
        data = load(dataset, ctx.data_dir / FILES[dataset])
        train, held_out = data.train, data.test
    else:
        data = load(dataset)
        train, held_out = site_data(data, ctx.site_index, ctx.num_sites, alpha=alpha,
                                    seed=seed if split_seed is None else split_seed, test=test)
    return ClassificationTrainer(train.images, train.labels, held_out.images, held_out.labels,
                                 spatial_dims=spec.spatial_dims, num_classes=spec.num_classes,
                                 seed=seed, shuffle_seed=seed * 1000 + ctx.site_index,
                                 width=width, compute=pick_compute(device))
