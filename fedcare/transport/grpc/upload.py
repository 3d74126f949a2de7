"""A training reply folded into the round's aggregate chunk by chunk, instead of reassembled.

The server keeps no reassembled copy of a streamed upload: each chunk's tensor bytes go straight
to the round's :class:`~fedcare.core.stream.ResultSink`, which keeps what it needs to take them
back out until the result is accepted. Framing is checked as strictly as the Reassembler
does, and the payload's checksum is checked when the last chunk arrives.
"""

from __future__ import annotations

from fedcare.core.errors import TransportError
from fedcare.core.message import Reply, TrainResult
from fedcare.core.stream import ResultSink
from fedcare.core.weights import Weights
from fedcare.transport.grpc.chunks import WireChunk
from fedcare.transport.streaming import PayloadRouter, TrainReplyHead


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

    def feed(self, chunk: WireChunk) -> Reply | None:
        """Take the next chunk; the Reply once the last one is in (TransportError: the stream
        is broken, and what was folded in has been taken back out)."""
        try:
            return self._feed(chunk)
        except TransportError:
            self.abort()
            raise

    def _feed(self, chunk: WireChunk) -> Reply | None:
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
        self.abort()

    def abort(self) -> None:
        """Take back what was folded in (the stream broke or the result was refused)."""
        if self._open and self._sink is not None:
            self._open = False
            self._sink.discard()
