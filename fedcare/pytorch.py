"""PyTorch adapters: Weights <-> ``state_dict``, and small helpers for plain PyTorch trainers.

The only module of the core package that imports torch: everything else sees numpy arrays.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedcare.algorithms import scaffold
from fedcare.core.validation import incompatibilities
from fedcare.core.weights import Weights


def weights_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Weights:
    """Copy a ``state_dict`` (parameters and buffers) to CPU numpy arrays, in order."""
    arrays = {}
    for name, tensor in state_dict.items():
        if tensor.dtype == torch.bfloat16:
            raise TypeError(f"parameter {name!r} is bfloat16, which numpy cannot hold; "
                            "convert the model to float32 first")
        arrays[name] = tensor.detach().cpu().numpy().copy()
    return Weights(arrays)  # the copies own their memory: taken over, not copied again


def state_dict_from_weights(weights: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tensors that own writable copies of the arrays (Weights arrays are read-only)."""
    return {name: torch.from_numpy(np.array(array, copy=True)) for name, array in weights.items()}


def get_weights(module: torch.nn.Module) -> Weights:
    """The module's state as Weights."""
    return weights_from_state_dict(module.state_dict())


def set_weights(module: torch.nn.Module, weights: Weights,
                keep: Sequence[str] | str | None = None) -> None:
    """Load Weights into ``module``, refusing any name, shape or dtype mismatch by name.

    ``keep``: regular expressions (or a JSON list of them) naming
    parameters the module keeps as they are, e.g. its own batch-norm layers under FedBN.
    """
    patterns = json.loads(keep) if isinstance(keep, str) else list(keep or [])
    own = get_weights(module)
    merged = {k: (own[k] if any(re.search(p, k) for p in patterns) else v)
              for k, v in weights.items()} if patterns else weights
    problems = incompatibilities(own, merged)
    if problems:
        raise ValueError(f"weights do not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state_dict_from_weights(merged), strict=True)


def proximal_term(module: torch.nn.Module, global_weights: Weights, mu: float) -> torch.Tensor:
    """FedProx's mu/2 * ||w - w_global||^2 over the trainable parameters, to add to the loss."""
    total = torch.zeros(())
    for name, param in module.named_parameters():
        if param.requires_grad:
            anchor = torch.tensor(np.asarray(global_weights[name]), dtype=param.dtype)
            total = total + torch.sum((param - anchor) ** 2)
    return 0.5 * mu * total


def batch_norm_patterns(module: torch.nn.Module) -> list[str]:
    """Exact-name patterns of every batch-norm parameter and buffer in ``module``, for FedBN.

    Found by layer type, so it works whatever the layers are called (``FedBN``'s default
    patterns only know the usual names such as ``bn1.`` or ``norm.``).
    """
    names = []
    for prefix, layer in module.named_modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            for name, _ in [*layer.named_parameters(recurse=False),
                            *layer.named_buffers(recurse=False)]:
                names.append("^" + re.escape(f"{prefix}.{name}" if prefix else name) + "$")
    return names


class ScaffoldSite:
    """The site side of SCAFFOLD: the site's control variate c_i, kept across rounds.

    Use: ``model_weights, active = scaffold.begin(model, weights)`` before training (it loads
    the model), ``scaffold.correct(model)`` after each ``backward()``, and
    ``scaffold.end(model, steps, lr)`` for the arrays to add to the result.
    """

    CONTROL = scaffold.CONTROL  # the server's control variate, sent with the model
    DELTA = scaffold.DELTA  # this site's change of its own, sent back with its update

    def __init__(self) -> None:
        self.c_i: dict[str, torch.Tensor] = {}
        self._c: dict[str, torch.Tensor] = {}
        self._x: dict[str, torch.Tensor] = {}

    def begin(self, model: torch.nn.Module, weights: Weights) -> bool:
        """Load the model part of ``weights``; True when the task carries SCAFFOLD state."""
        model_part = Weights({k: v for k, v in weights.items() if not k.startswith(self.CONTROL)})
        set_weights(model, model_part)
        self._c = {k[len(self.CONTROL):]: torch.tensor(np.asarray(v))
                   for k, v in weights.items() if k.startswith(self.CONTROL)}
        self._x = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self._c}
        for name, c in self._c.items():
            self.c_i.setdefault(name, torch.zeros_like(c))
        return bool(self._c)

    def correct(self, model: torch.nn.Module) -> None:
        """g <- g - c_i + c on every trainable parameter."""
        for name, param in model.named_parameters():
            if param.grad is not None and name in self._c:
                param.grad += self._c[name] - self.c_i[name]

    def end(self, model: torch.nn.Module, steps: int, lr: float) -> dict[str, np.ndarray]:
        """Option II update of c_i; returns ``scaffold.dc.<name>`` arrays for the result."""
        state = model.state_dict()
        out = {}
        for name, c in self._c.items():
            y = state[name].detach()
            new = self.c_i[name] - c + (self._x[name] - y) / (steps * lr)
            out[self.DELTA + name] = (new - self.c_i[name]).numpy().astype(
                np.asarray(y).dtype, copy=True)
            self.c_i[name] = new
        return out
