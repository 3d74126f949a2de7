"""The controller's side of streamed aggregation: a round's training results, folded in as
they arrive, checked before each byte is used, and taken back out unless accepted.

The header of a result (sample count, metrics, tensor names, dtypes and shapes) is checked
before any tensor byte is folded in; each run of values is checked (NaN, infinity, overflow)
before it is; and a result only counts once the transport has all of it with a matching
checksum *and* the controller has taken its reply. Anything else is discarded: an upload cut
off mid-way, one that fails a check half-way through, or one still in flight when the round
ends. See :mod:`fedcare.core.stream`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedcare.core.message import TrainResult
from fedcare.core.strategy import Aggregator
from fedcare.core.stream import UpdateStream
from fedcare.core.validation import spec_incompatibilities
from fedcare.core.weights import TensorSpec, Weights
from fedcare.server.checks import count_problem, metrics_problem, values_problem

_OPEN, _COMPLETE, _ACCEPTED, _DISCARDED = "open", "complete", "accepted", "discarded"


class RoundStreams:
    """The StreamTarget of one training round."""

    def __init__(self, aggregator: Aggregator, expected: Weights,
                 task_id: Callable[[str], str]) -> None:
        self._aggregator = aggregator
        self._expected = expected
        self._task_id = task_id
        self._lock = threading.Lock()
        self._sinks: dict[str, _Sink] = {}
        self._closed = False

    def open(self, task_id: str, site_id: str, num_samples: int,
             metrics: Mapping[str, float], specs: Sequence[TensorSpec]) -> _Sink | None:
        if task_id != self._task_id(site_id):
            return None  # not this round's training task: delivered whole, judged as usual
        problem = count_problem(num_samples) or metrics_problem(metrics)
        if problem:
            raise ValueError(problem)
        problems = spec_incompatibilities(self._expected, specs)
        if problems:
            raise ValueError("model does not match: " + "; ".join(problems))
        with self._lock:
            if self._closed or task_id in self._sinks:
                return None
            inner = self._aggregator.stream(site_id, num_samples, specs)
            if inner is None:
                return None
            sink = _Sink(self._lock, inner, [s.name for s in specs], num_samples)
            self._sinks[task_id] = sink
            return sink

    def add(self, site_id: str, result: TrainResult) -> None:
        """Fold in a whole result (one that was not streamed), never while a stream writes."""
        with self._lock:
            self._aggregator.add(site_id, result)

    def accept(self, task_id: str) -> bool:
        """Count the result of ``task_id``, whose folded reply the controller has taken;
        False if it was not completed (or already taken back out)."""
        with self._lock:
            sink = self._sinks.get(task_id)
            if sink is None or sink.state != _COMPLETE:
                return False
            sink.state = _ACCEPTED
            sink.inner.commit()
            return True

    def close(self) -> None:
        """The round stops taking results: whatever was not accepted is taken back out."""
        with self._lock:
            self._closed = True
            for sink in self._sinks.values():
                sink.withdraw()


class _Sink:
    """One result being folded in (the transport's handle)."""

    def __init__(self, lock: threading.Lock, inner: UpdateStream, names: list[str],
                 num_samples: int) -> None:
        self._lock = lock
        self.inner = inner
        self._names = names
        self._num_samples = num_samples
        self.state = _OPEN

    def write(self, index: int, start: int, values: np.ndarray) -> None:
        problem = values_problem(self._names[index], values, self._num_samples)
        if problem:
            raise ValueError(problem)
        with self._lock:
            if self.state != _OPEN:
                raise ValueError("the round ended before this upload did")
            self.inner.write(index, start, values)

    def complete(self) -> None:
        with self._lock:
            if self.state != _OPEN:
                raise ValueError("the round ended before this upload did")
            self.state = _COMPLETE

    def discard(self) -> None:
        with self._lock:
            self.withdraw()

    def withdraw(self) -> None:
        """Take the values back out unless accepted (lock held)."""
        if self.state in (_OPEN, _COMPLETE):
            self.state = _DISCARDED
            self.inner.discard()
