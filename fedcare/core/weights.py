"""Weights: the model as an ordered mapping of parameter name to numpy array.

Framework-neutral on purpose: PyTorch adapters live in :mod:`fedcare.pytorch`, and everything that
crosses a site boundary (transport, filters, checkpoints) only ever sees numpy arrays.

Arrays handed out by a ``Weights`` are read-only views: a trainer that wants to change them must
copy first, so one site can never mutate the global model another site is reading in memory.
They cannot be made writable again (``flags.writeable = True`` raises). A ``Weights`` takes an
array that owns its memory without a copy and marks it read-only, for its creator too: a trainer
that returns freshly computed arrays pays nothing, and one that keeps updating an array in place
after handing it over gets numpy's "read-only" error instead of silently changing a model that
was already sent. A view of memory someone else can still write (a slice, a torch tensor's
buffer) is copied once. Arrays over an immutable buffer such as the ``bytes`` a message was
decoded from, or another ``Weights``' arrays, are taken as they are. (This stops mistakes, not
hostile code in the same process, which could reach the owning array through ``.base``.)
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


#: The most dimensions a tensor may have (numpy allows 64; no model parameter needs more).
MAX_TENSOR_DIMS = 32
#: The most elements one tensor may have, and so the bound on each of its dimensions: 2**40
#: (4 TiB of float32) is far above any model fedcare moves and far below where numpy's byte
#: count (int64) could overflow.
MAX_TENSOR_ELEMENTS = 2**40


def shape_problem(shape: object) -> str | None:
    """Why ``shape`` (from another party) cannot be a tensor's shape, or None.

    Checked before any allocation or reshape, with Python integers (no overflow): at most
    :data:`MAX_TENSOR_DIMS` dimensions, each an int in 0..:data:`MAX_TENSOR_ELEMENTS`, and the
    product of the non-zero ones within the same bound. A zero dimension makes a tensor empty,
    but numpy still multiplies the others (``(0, 2**40, 2**40)`` is "too big" for it), so they
    are bounded together whatever a zero dimension says.
    """
    if not isinstance(shape, list | tuple):
        return f"shape must be a list of integers, got {type(shape).__name__}"
    if len(shape) > MAX_TENSOR_DIMS:
        return f"{len(shape)} dimensions, at most {MAX_TENSOR_DIMS} allowed"
    extent = 1
    for axis, size in enumerate(shape):
        if isinstance(size, bool) or not isinstance(size, int):
            return f"dimension {axis} is {type(size).__name__}, not an integer"
        if not 0 <= size <= MAX_TENSOR_ELEMENTS:
            sign = "-" if size < 0 else ""
            shown = size if size.bit_length() < 64 else f"{sign}2**{size.bit_length() - 1}+"
            return f"dimension {axis} is {shown}, must be in 0..2**40"
        extent *= max(size, 1)
        if extent > MAX_TENSOR_ELEMENTS:
            return (f"dimensions {list(shape[:axis + 1])} hold more than 2**40 elements "
                    "(zero dimensions aside)")
    return None


def _read_only_memory(obj: object) -> bool:
    """True when nothing can write to ``obj``'s memory without re-enabling a flag that only its
    creator holds: read-only down to an array that owns its data, or to a read-only buffer."""
    while True:
        if isinstance(obj, np.ndarray):
            if obj.flags.writeable:
                return False
            if obj.base is None:
                return True  # owns its data, marked read-only
            obj = obj.base
        elif isinstance(obj, memoryview):
            if not obj.readonly:
                return False
            obj = obj.obj  # a read-only view of a bytearray is not enough: look at the owner
        else:
            try:
                with memoryview(obj) as buffer:  # type: ignore[arg-type]
                    return buffer.readonly  # e.g. bytes
            except (TypeError, ValueError, BufferError):  # no buffer, or a closed one
                return False


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array``'s values that cannot be made writable again."""
    if array.base is None and array.flags.writeable:
        # An array that owns its memory (what a trainer or an aggregator just computed) is
        # taken over without a copy: it is made read-only, for its creator too, so numpy
        # refuses to make any view of it writable again.
        array.flags.writeable = False
    elif not _read_only_memory(array):
        # A view of memory someone else can write: one copy, owned here and read-only.
        array = array.copy()
        array.flags.writeable = False
    view = array.view()
    view.flags.writeable = False
    return view


def _checked(arrays: Mapping[str, np.ndarray] | None) -> Iterator[tuple[str, np.ndarray]]:
    for name, value in (arrays or {}).items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"parameter names must be non-empty strings, got {name!r}")
        array = np.asarray(value)
        if array.dtype not in ALLOWED_DTYPES:
            raise TypeError(f"parameter {name!r} has unsupported dtype {array.dtype}")
        yield name, array


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
        self._arrays = {name: _frozen(array) for name, array in _checked(arrays)}

    @classmethod
    def adopt(cls, arrays: Mapping[str, np.ndarray]) -> Weights:
        """Wrap arrays without a copy, the caller handing over their memory for good.

        For buffers nobody else holds, such as the private buffer a received message was
        reassembled into: copying a large model there would cost time and a second copy in
        memory. The arrays are handed out read-only, as always.
        """
        weights = cls.__new__(cls)
        views = {}
        for name, array in _checked(arrays):
            view = array.view()
            view.flags.writeable = False
            views[name] = view
        weights._arrays = views
        return weights

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
