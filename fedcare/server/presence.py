"""When each site last connected or disconnected, as this server process saw it.

Kept in memory from the transport's connection events (the audit log holds them durably); the
admin API's ``Sites`` reports it beside who is connected now, so an admin sees since when a
site is up, or since when it is gone. A server that restarts knows only what it saw since.
With it go, for a connected site, what the transport knows of it (:class:`SiteDetail`: its
stated version and policy summary, how long ago its last message ended) and, for every site
seen, the organisation its certificate names.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from fedcare.transport.grpc.server import SiteDetail


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
        self._org: dict[str, str] = {}

    def record(self, site_id: str, connected: bool, at_s: float | None = None,
               org: str | None = None) -> None:
        """``org``: the organisation the site's certificate names (kept once the site is gone)."""
        with self._lock:
            self._last[site_id] = Presence(connected, time.time() if at_s is None else at_s)
            if org is not None:
                self._org[site_id] = org

    def view(self, connected_now: list[str], details: Mapping[str, SiteDetail] | None = None
             ) -> dict[str, dict[str, object]]:
        """Per site: connected now (the transport's word, which decides), and since when the
        last event said so (None when the events disagree, e.g. an old stream's close
        arriving after its replacement connected); its organisation; and, when connected, its
        stated ``version`` and ``policy`` (None: not stated) and ``last_message_age_s``."""
        details = details or {}
        with self._lock:
            last, orgs = dict(self._last), dict(self._org)
        out: dict[str, dict[str, object]] = {}
        for site_id in sorted({*last, *connected_now}):
            now = site_id in connected_now
            event = last.get(site_id)
            since = event.since_s if event is not None and event.connected == now else None
            detail = details.get(site_id) if now else None
            policy = detail.policy if detail is not None else None
            out[site_id] = {
                "connected": now, "since_s": since,
                "org": detail.org if detail is not None and detail.org else orgs.get(site_id),
                "version": detail.version if detail is not None else None,
                "policy": policy.model_dump() if policy is not None else None,
                "last_message_age_s": (round(detail.last_message_age_s, 3)
                                       if detail is not None else None)}
        return out
