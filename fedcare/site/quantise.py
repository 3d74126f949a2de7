"""Quantising what leaves a site: fewer bits of each update component reach the server.

* :class:`HalfPrecision` sends float32/float64 parameters of a training result as float16:
  half the bytes of a float32 model on the wire (the codec carries float16), and the server
  widens them again (:func:`fedcare.core.validation.incompatibilities` accepts float16 for a
  wider float, FedAvg sums in float64). Values beyond float16's range (65504) are refused.
* :class:`Int8Update` rounds each parameter's update to 255 levels (symmetric, one scale per
  tensor, ``max|update| / 127``) and sends the dequantised values in the parameter's own
  dtype: every component carries at most 8 bits of information, each within ``scale / 2`` of
  the true update; it saves no bytes (the server aggregates full-precision dtypes), so chain
  it before ``half_precision`` to save them too.
"""

from __future__ import annotations

import numpy as np

from fedcare.core.message import Result, Task, TaskKind, TrainResult
from fedcare.core.weights import Weights
from fedcare.site.filters import Filter, training_update

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
            if value.dtype not in _WIDE:
                continue
            if value.size and float(np.max(np.abs(value))) > _FP16_MAX:
                raise ValueError(f"half_precision: parameter {name!r} holds values beyond "
                                 f"float16's range (|x| > {_FP16_MAX:g})")
            out[name] = value.astype(np.float16)
        return TrainResult(Weights(out), result.num_samples, result.metrics)


class Int8Update(Filter):
    """Round each floating-point parameter's update to int8 levels (per-tensor scale)."""

    name = "int8_update"

    def outbound(self, task: Task, result: Result) -> Result:
        update = training_update(task, result)
        if update is None:
            return result
        flat = update.values.copy()
        for _, tensor in update.tensors(flat):  # views into flat: rounded in place
            peak = float(np.max(np.abs(tensor))) if tensor.size else 0.0
            if peak == 0.0:
                continue
            scale = peak / 127.0
            np.multiply(np.clip(np.rint(tensor / scale), -127, 127), scale, out=tensor)
        return update.rebuilt(flat)
