"""Folding a site's result into the round's aggregate while its bytes are still arriving.

A large model need not be held whole at the server before it is averaged: a transport that
receives a result piece by piece can hand each run of elements to an :class:`UpdateStream` the
moment it arrives, so the server holds the aggregate and a bounded amount in flight instead of
the upload too. A result is only counted once the transport has all of it, checksum verified,
and the controller accepts it; until then :meth:`UpdateStream.discard` takes everything it
wrote back out, so a site whose upload turns out bad (NaN in its last tensor, a checksum
mismatch, a dropped connection, a round that ended meanwhile) leaves nothing of itself behind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from fedcare.core.weights import TensorSpec


class UpdateStream(ABC):
    """One site's training result being folded in as it arrives.

    Calls come from one thread at a time (the caller serializes them).
    """

    @abstractmethod
    def write(self, index: int, start: int, values: np.ndarray) -> None:
        """Fold in elements ``start .. start + len(values)`` of tensor ``index`` (flattened, in
        C order; ``values`` is 1-D with the tensor's dtype). Each element is written once.

        Raises:
            ValueError: the values cannot be used (the message says why); the caller then
                discards the stream.
        """

    @abstractmethod
    def commit(self) -> None:
        """Every element was written and the result is accepted: count it."""

    @abstractmethod
    def discard(self) -> None:
        """Take back everything written so far; the stream is finished."""


class StreamTarget(Protocol):
    """Where a transport may fold this round's training results as they arrive (the controller).

    ``open`` is asked when the header of a training reply has arrived and before any tensor
    byte has. It returns a sink, or None when the result should be delivered whole as usual,
    and raises ValueError to refuse the result outright (the message says why).
    """

    def open(self, task_id: str, site_id: str, num_samples: int,
             metrics: Mapping[str, float], specs: Sequence[TensorSpec]) -> ResultSink | None: ...


class RoundTarget(StreamTarget, Protocol):
    """A round's StreamTarget as the job runner uses it: it also says whether a streamed
    result is complete (and counts it), and takes back out whatever was not accepted."""

    def accept(self, task_id: str) -> bool: ...

    def close(self) -> None: ...


class ResultSink(Protocol):
    """What a transport feeds one streamed result into."""

    def write(self, index: int, start: int, values: np.ndarray) -> None:
        """Take the next run of values; ValueError: they (or, for a sink that folds in the
        background, an earlier run) cannot be used, and the result is refused."""

    def complete(self) -> None:
        """All bytes arrived and the checksum matched: returns once everything written is
        folded in; raises ValueError if it is too late or a run could not be folded in."""

    def discard(self) -> None: ...
