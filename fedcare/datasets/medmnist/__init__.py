"""MedMNIST v2/v3 (Yang et al. 2023): four official ``.npz`` files, unmodified.

BreastMNIST and PneumoniaMNIST (2D, 28x28) and AdrenalMNIST3D and VesselMNIST3D (3D, 28^3),
each with its official train/val/test split. ``SOURCE.md`` records origin, licence (CC BY 4.0),
the citations MedMNIST asks for, and checksums. MedMNIST is not naturally multi-site: a
federation is simulated by partitioning (``fedcare.medical.medmnist``, which also loads and
validates the files; this package only says where they are).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA_DIR", "FILES"]

DATA_DIR = Path(__file__).parent

#: Data set name -> file shipped next to this module.
FILES: dict[str, str] = {
    "breastmnist": "breastmnist.npz",
    "pneumoniamnist": "pneumoniamnist.npz",
    "adrenalmnist3d": "adrenalmnist3d.npz",
    "vesselmnist3d": "vesselmnist3d.npz",
}
