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

import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedcare.core.int8 import SCALE_PREFIX
from fedcare.core.message import TrainResult
from fedcare.core.strategy import Aggregator
from fedcare.core.stream import UpdateStream
from fedcare.core.validation import spec_incompatibilities
from fedcare.core.weights import TensorSpec, Weights
from fedcare.server.checks import count_problem, metrics_problem, values_problem

log = logging.getLogger(__name__)

_OPEN, _COMPLETE, _ACCEPTED, _DISCARDED = "open", "complete", "accepted", "discarded"
#: Runs of values received but not yet folded in, per upload (each a view of one chunk).
_IN_FLIGHT = 4


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
        if any(s.name.startswith(SCALE_PREFIX) for s in specs):
            return None  # an int8 update: rebuilt on the global model when whole, then judged
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
            sink = _Sink(self._lock, inner, [s.name for s in specs], num_samples,
                         f"site {site_id}, task {task_id}")
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
                sink.discard_locked()


class _Sink:
    """One result being folded in (the transport's handle).

    Values are checked as they are written, on the transport's receiving thread, and folded
    into the aggregate on a thread of the sink's own, so receiving the next chunk (TLS, HTTP/2,
    the checksum) and folding the last one use two cores. At most ``_IN_FLIGHT`` runs wait to
    be folded (they are views of received chunks: a few MiB). A problem found while folding
    (e.g. values that could not be taken back out exactly) is raised by the next ``write`` or
    by ``complete``. The transport ends every sink with ``complete`` or ``discard``, which
    also ends its thread.
    """

    def __init__(self, lock: threading.Lock, inner: UpdateStream, names: list[str],
                 num_samples: int, who: str) -> None:
        self._lock = lock
        self._who = who  # for the log
        self.inner = inner
        self._names = names
        self._num_samples = num_samples
        self.state = _OPEN
        self._queue: queue.Queue[tuple[int, int, np.ndarray] | None] = queue.Queue(_IN_FLIGHT)
        self._folder: threading.Thread | None = None
        self._failure: BaseException | None = None

    def write(self, index: int, start: int, values: np.ndarray) -> None:
        self._raise_failure()
        problem = values_problem(self._names[index], values, self._num_samples)
        if problem:
            raise ValueError(problem)
        if self._folder is None:
            folder = threading.Thread(target=self._fold_queued, daemon=True, name="fold-upload")
            folder.start()  # (if it cannot start, there is nothing to join later)
            self._folder = folder
        self._queue.put((index, start, values))

    def _fold_queued(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._failure is not None:
                continue  # refused or discarded: what is still queued is dropped
            try:
                with self._lock:
                    if self.state != _OPEN:
                        raise ValueError("the round ended before this upload did")
                    self.inner.write(*item)
            except Exception as exc:  # handed to the receiving thread, which decides
                if not isinstance(exc, ValueError):
                    log.exception("%s: error while folding in its upload", self._who)
                # without its traceback, whose frames would keep this sink (and its stream's
                # undo memory) alive until the cyclic garbage collector runs
                self._failure = exc.with_traceback(None)

    def _drain(self) -> None:
        """Wait until everything written is folded in (or dropped)."""
        if self._folder is not None:
            self._queue.put(None)
            self._folder.join()
            self._folder = None

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None:  # a refusal is raised as a fresh ValueError each time (the
            # kept one stays without a traceback); anything else is a bug, and ends the stream
            raise (ValueError(str(failure)) if isinstance(failure, ValueError) else failure)

    def complete(self) -> None:
        self._drain()
        self._raise_failure()
        with self._lock:
            if self.state != _OPEN:
                raise ValueError("the round ended before this upload did")
            self.state = _COMPLETE

    def discard(self) -> None:
        if self._failure is None:
            self._failure = ValueError("discarded")
        self._drain()
        with self._lock:
            self.discard_locked()

    def discard_locked(self) -> None:
        """Take the values back out unless accepted (lock held)."""
        if self.state in (_OPEN, _COMPLETE):
            self.state = _DISCARDED
            self.inner.discard()
