"""Weights: the model as an ordered mapping of parameter name to numpy array.

Framework-neutral on purpose: PyTorch adapters live in :mod:`fedcare.pytorch`, and everything that
crosses a site boundary (transport, filters, checkpoints) only ever sees numpy arrays.

Arrays handed out by a ``Weights`` are read-only views: a trainer that wants to change them must
copy first, so one site can never mutate the global model another site is reading in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

#: dtypes allowed in a model. Object, string and void arrays are refused: they could not travel
#: without pickle, and they are not model parameters.
ALLOWED_DTYPES = frozenset(
    np.dtype(t)
    for t in (
        "float16", "float32", "float64",
        "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64",
        "bool",
    )
)


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one parameter: what two models must agree on to be averaged."""

    name: str
    dtype: str
    shape: tuple[int, ...]


class Weights(Mapping[str, np.ndarray]):
    """An ordered, read-only mapping of parameter name to numpy array."""

    __slots__ = ("_arrays",)

    def __init__(self, arrays: Mapping[str, np.ndarray] | None = None) -> None:
        frozen: dict[str, np.ndarray] = {}
        for name, value in (arrays or {}).items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"parameter names must be non-empty strings, got {name!r}")
            array = np.asarray(value)
            if array.dtype not in ALLOWED_DTYPES:
                raise TypeError(f"parameter {name!r} has unsupported dtype {array.dtype}")
            view = array.view()
            view.flags.writeable = False
            frozen[name] = view
        self._arrays = frozen

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {a.dtype}{list(a.shape)}" for n, a in self._arrays.items())
        return f"Weights({inner})"

    @property
    def nbytes(self) -> int:
        """Raw tensor bytes, the floor for what a transfer of this model costs."""
        return sum(a.nbytes for a in self._arrays.values())

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(n, a.dtype.str, tuple(a.shape)) for n, a in self._arrays.items()]

    def copy(self) -> dict[str, np.ndarray]:
        """Writable deep copies, for code that wants to update parameters in place."""
        return {n: a.copy() for n, a in self._arrays.items()}

    def allclose(self, other: Mapping[str, np.ndarray], *, atol: float = 0.0) -> bool:
        if list(self) != list(other):
            return False
        return all(np.allclose(self[n], other[n], rtol=0.0, atol=atol) for n in self)
