"""Medical imaging on fedcare: MONAI-based trainers that implement core's Trainer protocol.

The only package that imports MONAI (``pip install 'fedcare[medical]'``); like
``fedcare.pytorch`` it sits beside the core and nothing in the core imports it. Segmentation
(:mod:`fedcare.medical.segmentation`, NIfTI and DICOM loading in :mod:`fedcare.medical.nifti`)
and classification (:mod:`fedcare.medical.classification`, MedMNIST in
:mod:`fedcare.medical.medmnist`).
"""

from fedcare.medical.classification import ClassificationTrainer, build_net
from fedcare.medical.device import Compute, pick_compute, seeded
from fedcare.medical.medmnist import SUBSETS, load, site_data
from fedcare.medical.nifti import CaseError, NoUsableCase, load_case, load_cases
from fedcare.medical.segmentation import SegmentationTrainer

__all__ = ["SUBSETS", "CaseError", "ClassificationTrainer", "Compute", "NoUsableCase",
           "SegmentationTrainer", "build_net", "load", "load_case", "load_cases",
           "pick_compute", "seeded", "site_data"]
