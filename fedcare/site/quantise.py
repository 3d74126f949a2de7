"""Quantising what leaves a site: fewer bits of each update component reach the server.

* :class:`HalfPrecision` sends float32/float64 parameters of a training result as float16:
  half the bytes of a float32 model on the wire (the codec carries float16), and the server
  widens them again (:func:`fedcare.core.validation.incompatibilities` accepts float16 for a
  wider float, FedAvg sums in float64). Values beyond float16's range (65504) are refused.
* :class:`Int8Update` rounds each parameter's update to 255 levels (symmetric, one scale per
  tensor, ``max|update| / 127``) and sends the levels as int8 with the scale beside them
  (:mod:`fedcare.core.int8`): a quarter of float32's bytes. The server rebuilds
  ``global + level * scale`` in the parameter's own dtype, each element within ``scale / 2``
  of the trained value, before it validates and averages the result. Secure and homomorphic
  rounds, which encode the update themselves, get the rebuilt values (8 bits of information
  each, no bytes saved).
"""

from __future__ import annotations

import numpy as np

from fedcare.core.int8 import SCALE_PREFIX, quantise
from fedcare.core.message import Result, Task, TaskKind, TrainResult
from fedcare.core.weights import Weights
from fedcare.site.filters import Filter

_WIDE = (np.dtype(np.float32), np.dtype(np.float64))
_FP16_MAX = float(np.finfo(np.float16).max)


class HalfPrecision(Filter):
    """Send a training result's float32 and float64 parameters as float16."""

    name = "half_precision"

    def outbound(self, task: Task, result: Result) -> Result:
        if task.kind != TaskKind.TRAIN or not isinstance(result, TrainResult):
            return result
        out = dict(result.weights)
        for name, value in result.weights.items():
            if value.dtype not in _WIDE or name.startswith(SCALE_PREFIX):
                continue
            if value.size and float(np.max(np.abs(value))) > _FP16_MAX:
                raise ValueError(f"half_precision: parameter {name!r} holds values beyond "
                                 f"float16's range (|x| > {_FP16_MAX:g})")
            out[name] = value.astype(np.float16)
        return TrainResult(Weights(out), result.num_samples, result.metrics)


class Int8Update(Filter):
    """Send each floating-point parameter's update as int8 levels with a per-tensor scale."""

    name = "int8_update"

    def outbound(self, task: Task, result: Result) -> Result:
        if task.kind != TaskKind.TRAIN or not isinstance(result, TrainResult):
            return result
        if task.weights is None:
            raise ValueError(f"{task.kind} task carried no global model to take an update from")
        return TrainResult(quantise(result.weights, task.weights), result.num_samples,
                           result.metrics)
