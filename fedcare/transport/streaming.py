"""Decoding a training reply straight into the round's aggregate, piece by piece.

The codec's message is ``MAGIC | header length | JSON header | tensor bytes``; once the header
has arrived, :func:`peek_train_reply` says which tensors follow, and a :class:`PayloadRouter`
cuts the bytes that come after it, in whatever pieces they arrive, into runs of whole elements
per tensor for a :class:`~fedcare.core.stream.ResultSink`. The payload is hashed on the way, so
the checksum is checked without a second pass and without ever holding the whole message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError as _PydanticValidationError

from fedcare.core.errors import TransportError
from fedcare.core.stream import ResultSink
from fedcare.core.weights import TensorSpec
from fedcare.transport import checksum
from fedcare.transport.codec import _DTYPES, HEADER_AT, _Header, payload_offset


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
        dtype = _DTYPES.get(tensor.dtype)
        if dtype is None:
            return None
        specs.append(TensorSpec(tensor.name, dtype.str, tuple(tensor.shape)))
        nbytes += math.prod(tensor.shape) * dtype.itemsize
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
