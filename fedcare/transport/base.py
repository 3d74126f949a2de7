"""The one interface between the round controller and the sites.

A transport delivers Tasks to named sites and hands back Replies in the order they arrive. It
knows nothing of rounds or algorithms: the in-process simulator, one process per site, and gRPC
across hospitals are all the same four calls, so job code never changes with the transport.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod

from fedcare.core.message import Reply, Task
from fedcare.core.stream import StreamTarget


class Transport(ABC):
    """Delivers tasks to sites and collects their replies."""

    def __init__(self) -> None:
        self._connected: list[str] = []
        self._changed = threading.Condition()

    def site_ids(self) -> list[str]:
        """Sites connected now, in the order they connected."""
        with self._changed:
            return list(self._connected)

    def wait_for_sites(self, count: int, timeout_s: float) -> list[str]:
        """Block until ``count`` sites are connected or the timeout passes; returns who is there."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while len(self._connected) < count and self._may_still_connect():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._changed.wait(remaining):
                    break
            return list(self._connected)

    def may_still_connect(self) -> bool:
        """False once no further site can ever connect (e.g. every site process has exited)."""
        with self._changed:
            return self._may_still_connect()

    def _may_still_connect(self) -> bool:
        """False once no further site can connect (lets waiting end early). Lock held."""
        return True

    def _set_connected(self, site_id: str, connected: bool) -> None:
        with self._changed:
            if connected and site_id not in self._connected:
                self._connected.append(site_id)
            elif not connected and site_id in self._connected:
                self._connected.remove(site_id)
            self._changed.notify_all()

    @abstractmethod
    def send(self, site_id: str, task: Task) -> None:
        """Queue ``task`` for ``site_id`` without waiting for it to run.

        Raises:
            TransportError: the site is unknown or no longer connected.
        """

    @abstractmethod
    def receive(self, timeout_s: float) -> Reply | None:
        """The next reply from any site, or None if none arrives within ``timeout_s``.

        A site that disconnects with a task outstanding yields an error Reply for that task.
        """

    def stream_into(self, target: StreamTarget | None) -> None:  # noqa: B027 - optional hook
        """Fold training results into ``target`` as their bytes arrive (None: stop).

        Optional: a transport that receives results whole (in process, over a pipe) ignores
        it and delivers them to the controller as usual. One that streams delivers a Reply
        with ``folded`` set once a result is all in.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sites, threads and processes."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
