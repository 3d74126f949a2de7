"""A training reply folded into the round's aggregate piece by piece, instead of reassembled.

The whole streamed path, in the order the bytes take it (one name per act: *write* a run of
values, *complete* once all arrived with the right checksum, *accept* to count it, *discard* to
take it back out):

1. :func:`peek_train_reply`: once the first piece of a reply has arrived, its header says
   which tensors follow (a message that is not a training reply is received whole instead).
2. :class:`StreamedUpload` (this module): checks the framing of each piece (a gRPC chunk) and
   hands the tensor bytes on; the checksum is checked when the last piece arrives.
3. :class:`PayloadRouter` (this module): cuts the bytes, in whatever pieces they come, into runs
   of whole elements per tensor, hashing them on the way (no second pass, no whole message).
4. The round's :class:`~fedcare.core.stream.ResultSink` (``fedcare.server.streams``): checks
   every run (NaN, infinity, overflow) and folds it in on a thread of its own.
5. The aggregator's :class:`~fedcare.core.stream.UpdateStream` (e.g. FedAvg's weighted sum, or a
   modular sum of masked integers): folds the values in so that ``discard`` can take them back
   out exactly, until the round ``accept``s the result.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydantic import ValidationError as _PydanticValidationError

from fedcare.core.errors import TransportError
from fedcare.core.message import Reply, TrainResult
from fedcare.core.stream import ResultSink
from fedcare.core.weights import TensorSpec, Weights
from fedcare.transport import checksum
from fedcare.transport.codec import HEADER_AT, _Header, payload_offset, tensor_layout


@dataclass(frozen=True)
class TrainReplyHead:
    """What a training reply says about itself before its tensors arrive."""

    task_id: str
    site_id: str
    num_samples: int
    metrics: dict[str, float]
    specs: list[TensorSpec]
    payload_checksum: str
    payload_at: int  # where the tensor bytes start in the message


def peek_train_reply(head: memoryview, total_size: int) -> TrainReplyHead | None:
    """The header of a training reply with tensors that starts with ``head``, or None.

    None also for anything unusual (another message type, a header that has not all arrived,
    a malformed one): the caller then receives the message whole, and the ordinary decoder
    gives the precise error.
    """
    at = payload_offset(head)
    if at is None or at > len(head) or at > total_size:
        return None
    try:
        header = _Header.model_validate(json.loads(bytes(head[HEADER_AT:at])))
    except (ValueError, RecursionError, _PydanticValidationError):
        return None
    result = header.result
    if (header.type != "reply" or result is None or result.kind != "train"
            or header.error is not None or not header.tensors):
        return None
    specs, nbytes = [], 0
    for tensor in header.tensors:
        try:  # each shape bounded before anything is sized by it
            dtype, count = tensor_layout(tensor.name, tensor.dtype, tensor.shape)
        except TransportError:
            return None
        specs.append(TensorSpec(tensor.name, dtype.str, tuple(tensor.shape)))
        nbytes += count * dtype.itemsize
    if at + nbytes != total_size or len({s.name for s in specs}) != len(specs):
        return None
    return TrainReplyHead(header.task_id, header.site_id, result.num_samples,
                          dict(result.metrics), specs, header.payload_checksum, at)


class PayloadRouter:
    """Feeds a payload arriving in pieces to ``sink`` as runs of whole elements per tensor.

    An element split between two pieces is put together from a few carried-over bytes.
    """

    def __init__(self, specs: list[TensorSpec], sink: ResultSink) -> None:
        self._dtypes = [np.dtype(s.dtype) for s in specs]
        self._sizes = [math.prod(s.shape) for s in specs]
        self._sink = sink
        self._index = 0
        self._done = 0  # elements of the current tensor already written
        self._carry = b""
        self._hash = checksum.new()

    def feed(self, data: memoryview) -> None:
        """Route the next payload bytes (ValueError from the sink propagates)."""
        self._hash.update(data)
        pos = 0
        while pos < len(data):
            self._skip_finished()
            if self._index == len(self._sizes):
                raise TransportError("payload longer than its header describes")
            dtype, index = self._dtypes[self._index], self._index
            if self._carry:
                take = bytes(data[pos:pos + dtype.itemsize - len(self._carry)])
                self._carry += take
                pos += len(take)
                if len(self._carry) == dtype.itemsize:
                    self._write(index, np.frombuffer(self._carry, dtype))
                    self._carry = b""
                continue
            count = min((len(data) - pos) // dtype.itemsize, self._sizes[index] - self._done)
            if count:
                self._write(index, np.frombuffer(data, dtype, count, pos))
                pos += count * dtype.itemsize
            elif pos < len(data):  # less than one element left in this piece
                self._carry = bytes(data[pos:])
                pos = len(data)

    def _write(self, index: int, values: np.ndarray) -> None:
        self._sink.write(index, self._done, values)
        self._done += values.size

    def _skip_finished(self) -> None:
        while self._index < len(self._sizes) and self._done == self._sizes[self._index]:
            self._index, self._done = self._index + 1, 0

    def finish(self, payload_checksum: str) -> None:
        """Check that every element arrived and the checksum matches."""
        self._skip_finished()
        if self._index != len(self._sizes) or self._carry:
            raise TransportError("payload shorter than its header describes")
        if self._hash.hexdigest() != payload_checksum:
            raise TransportError("payload checksum mismatch (corrupted or truncated message)")


class Piece(Protocol):
    """One piece of a message as a transport receives it (a gRPC chunk)."""

    @property
    def data(self) -> memoryview: ...

    @property
    def total_size(self) -> int: ...

    @property
    def last(self) -> bool: ...


class StreamedUpload:
    """Receives the chunks of one training reply whose header has arrived (in its first chunk).

    With no ``sink`` (the result was refused when its header arrived: ``error`` says why) the
    bytes are only counted, and the reply reports the error.
    """

    def __init__(self, head: TrainReplyHead, total_size: int, sink: ResultSink | None,
                 error: str | None = None) -> None:
        self.head = head
        self._expected = total_size
        self._filled = 0
        self._sink = sink
        self._router = PayloadRouter(head.specs, sink) if sink is not None else None
        self._error = error
        self._open = sink is not None

    def feed(self, chunk: Piece) -> Reply | None:
        """Take the next chunk; the Reply once the last one is in (TransportError: the stream
        is broken, and what was folded in has been taken back out)."""
        try:
            return self._feed(chunk)
        except TransportError:
            self.discard()
            raise

    def _feed(self, chunk: Piece) -> Reply | None:
        if self._filled and chunk.total_size:
            raise TransportError("chunk announces a new message before the last one ended")
        data = chunk.data
        end = self._filled + len(data)
        if end > self._expected:
            raise TransportError(f"message longer than the {self._expected} bytes announced")
        skip = max(self.head.payload_at - self._filled, 0)  # the header, in the first chunk
        self._filled = end
        if self._router is not None and self._error is None and skip < len(data):
            try:
                self._router.feed(data[skip:])
            except ValueError as exc:  # a check failed: the site's result is refused
                self._refuse(str(exc))
        if not chunk.last:
            return None
        if self._filled != self._expected:
            raise TransportError(f"message ended after {self._filled} of {self._expected} "
                                 "bytes announced")
        head = self.head
        if self._error is None and self._router is not None and self._sink is not None:
            self._router.finish(head.payload_checksum)
            try:
                self._sink.complete()
                self._open = False
            except ValueError as exc:
                self._refuse(str(exc))
        if self._error is not None:
            return Reply(head.task_id, head.site_id, error=self._error)
        result = TrainResult(Weights({}), head.num_samples, head.metrics)
        return Reply(head.task_id, head.site_id, result=result, folded=True)

    def _refuse(self, error: str) -> None:
        self._error = error
        self.discard()

    def discard(self) -> None:
        """Take back what was folded in (the stream broke or the result was refused)."""
        if self._open and self._sink is not None:
            self._open = False
            self._sink.discard()
