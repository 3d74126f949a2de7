"""Medical imaging on fedcare: MONAI-based trainers that implement core's Trainer protocol.

The only package that imports MONAI (``pip install 'fedcare[medical]'``); like
``fedcare.pytorch`` it sits beside the core and nothing in the core imports it.
"""

from fedcare.medical.device import Compute, pick_compute, seeded

__all__ = ["Compute", "pick_compute", "seeded"]
