"""Who may use the dashboard: the holder of its start-up token, from this machine's browser.

The dashboard acts with an admin's certificate, so reaching it is acting as that admin. Four
locks, as Jupyter's:

* it listens on 127.0.0.1 and answers only requests whose ``Host`` is its own address (a web
  page cannot rebind a domain name of its own to 127.0.0.1 and read the answers);
* the first visit needs the random token printed at start (``/?token=...``, compared in
  constant time); it is swapped for a session cookie (HttpOnly, SameSite=Strict) and the token
  leaves the address bar; ``Authorization: Bearer <token>`` works too, for ``/metrics``;
* every state-changing request (POST) must carry its session's CSRF token in the form and an
  ``Origin`` (or ``Referer``) of the dashboard itself: another site's page can neither read
  the token nor send the cookie (SameSite=Strict), and is refused by its Origin anyway;
* the actions it offers are the ones the server grants the admin's role; a forged request for
  one it does not offer is refused here, and would be refused by the server as well.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

COOKIE = "fedcare_dashboard"
#: Sessions kept at most; the oldest is dropped beyond (a browser per visit is plenty).
MAX_SESSIONS = 64


@dataclass(frozen=True)
class Session:
    session_id: str
    csrf_token: str


class Gate:
    """The start-up token, the sessions it opened, and the hosts the dashboard answers as."""

    def __init__(self, hosts: Iterable[str], token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)
        self.hosts = frozenset(h.lower() for h in hosts)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def host_allowed(self, host: str | None) -> bool:
        return host is not None and host.lower() in self.hosts

    def token_matches(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    def bearer_matches(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(token.strip())

    def open_session(self) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        with self._lock:
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session.session_id] = session
        return session

    def session(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            for known, session in self._sessions.items():
                if hmac.compare_digest(known.encode(), session_id.encode()):
                    return session
        return None

    def origin_allowed(self, origin: str | None, referer: str | None) -> bool:
        """Whether a POST comes from a page of the dashboard itself.

        The ``Origin`` decides when sent (browsers send it on every POST); without one, the
        ``Referer``'s origin; with neither, refused.
        """
        source = origin if origin and origin != "null" else referer
        if not source:
            return False
        parts = urlsplit(source)
        return parts.scheme == "http" and self.host_allowed(parts.netloc)


def csrf_matches(session: Session, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), session.csrf_token.encode())
