"""Bytes a transport moved over the wire, in each direction, since it started."""

from __future__ import annotations

import threading


class Traffic:
    """Running totals, safe to add to from every stream's thread.

    Counted as they cross the wire (each chunk, framing included), so an upload that fails
    halfway counts what arrived: the numbers are the network's, not the models'.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._sent = 0

    def received(self, size_bytes: int) -> None:
        with self._lock:
            self._received += size_bytes

    def sent(self, size_bytes: int) -> None:
        with self._lock:
            self._sent += size_bytes

    def totals(self) -> tuple[int, int]:
        """(received_bytes, sent_bytes)."""
        with self._lock:
            return self._received, self._sent
