"""In-process transport: each site is a worker thread with its own inbox.

Messages are not encoded: arrays travel as read-only views (see Weights), which is what keeps one
simulated site from mutating the global model another is reading. Each site handles its tasks in
order, like a real site; sites run concurrently, and replies are handed on as they finish.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping

from fedcare.core.errors import TransportError
from fedcare.core.message import Reply, Task
from fedcare.transport.base import Transport

Handler = Callable[[Task], Reply]
_STOP = object()


class MemoryTransport(Transport):
    """Sites as handlers in this process, one thread each."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        super().__init__()
        self._replies: queue.Queue[Reply] = queue.Queue()
        self._inboxes: dict[str, queue.Queue[object]] = {}
        self._threads: list[threading.Thread] = []
        for site_id, handler in handlers.items():
            inbox: queue.Queue[object] = queue.Queue()
            thread = threading.Thread(
                target=self._serve, args=(site_id, handler, inbox), name=f"site-{site_id}",
                daemon=True,
            )
            self._inboxes[site_id] = inbox
            self._threads.append(thread)
            thread.start()
            self._set_connected(site_id, True)

    def _serve(self, site_id: str, handler: Handler, inbox: queue.Queue[object]) -> None:
        while (task := inbox.get()) is not _STOP:
            assert isinstance(task, Task)
            try:
                reply = handler(task)
            except Exception as exc:  # a handler must not take the site thread down
                reply = Reply(task.task_id, site_id, error=f"{type(exc).__name__}: {exc}")
            self._replies.put(reply)

    def send(self, site_id: str, task: Task) -> None:
        if site_id not in self.site_ids():
            raise TransportError(f"unknown or disconnected site, task {task.task_id}",
                                 site_id=site_id)
        self._inboxes[site_id].put(task)

    def receive(self, timeout_s: float) -> Reply | None:
        try:
            return self._replies.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None

    def close(self, timeout_s: float = 5.0) -> None:
        for site_id, inbox in self._inboxes.items():
            inbox.put(_STOP)
            self._set_connected(site_id, False)
        # A trainer stuck in a thread cannot be killed: wait briefly, then leave it (daemon).
        for thread in self._threads:
            thread.join(timeout=timeout_s)
