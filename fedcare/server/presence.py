"""When each site last connected or disconnected, as this server process saw it.

Kept in memory from the transport's connection events (the audit log holds them durably); the
admin API's ``Sites`` reports it beside who is connected now, so an admin sees since when a
site is up, or since when it is gone. A server that restarts knows only what it saw since.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Presence:
    """A site's last connection event: ``connected`` or not, since ``since_s`` (Unix time)."""

    connected: bool
    since_s: float


class PresenceBook:
    """The last connection event of every site that connected to this server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, Presence] = {}

    def record(self, site_id: str, connected: bool, at_s: float | None = None) -> None:
        with self._lock:
            self._last[site_id] = Presence(connected, time.time() if at_s is None else at_s)

    def view(self, connected_now: list[str]) -> dict[str, dict[str, object]]:
        """Per site: connected now (the transport's word, which decides), and since when the
        last event said so (None when the events disagree, e.g. an old stream's close
        arriving after its replacement connected)."""
        with self._lock:
            last = dict(self._last)
        out: dict[str, dict[str, object]] = {}
        for site_id in sorted({*last, *connected_now}):
            now = site_id in connected_now
            event = last.get(site_id)
            since = event.since_s if event is not None and event.connected == now else None
            out[site_id] = {"connected": now, "since_s": since}
        return out
