"""Ray transport: simulated sites hosted by a pool of Ray actors.

The twin of the in-memory transport for simulations larger than one process should hold, or
spread over a Ray cluster. Each actor of the pool declares one site's resources
(:class:`SiteResources`: CPUs, and a fraction of a GPU so several sites share one) and hosts a
fixed share of the sites, site ``i`` on actor ``i mod pool size``: a site's state (its
trainer, its data, the local model FedBN keeps) stays in its actor from round to round, and
an actor runs its sites' tasks one at a time, in the order they were sent, as a real site
does. The pool has as many actors as the cluster's resources hold (never more than the
sites), so 1,000 sites on 2 cores are 2 worker processes, not 1,000.

A model goes into Ray's object store once per round (``ray.put`` of the task's weights; the
other sites' tasks of the same gather carry the same ObjectRef) and actors on the node read it
in place, read-only. Replies are taken one at a time as they finish (``ray.wait`` on the
oldest outstanding task of each actor, which finishes first), so the controller folds each
result into its aggregate before it takes the next, and no more replies are held than with
the in-memory transport. Inside a simulation Ray moves messages with its own serialization
(pickle with out-of-band buffers); a real federation's wire (gRPC, the codec) never pickles.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from fedcare.core.errors import ConfigError, TransportError
from fedcare.core.message import Reply, Task
from fedcare.core.weights import Weights
from fedcare.transport.base import Transport
from fedcare.transport.resources import SiteResources

Handler = Callable[[Task], Reply]
#: Builds one site's task handler, given its id, inside the actor that hosts the site. Sent
#: to every actor once (so it must survive Ray's serialization); called once per site.
HandlerFactory = Callable[[str], Handler]


class SiteHost:
    """A Ray actor hosting some simulated sites; their handlers are built on first use."""

    def __init__(self, build: HandlerFactory) -> None:
        self._build = build
        self._handlers: dict[str, Handler] = {}

    def handle(self, site_id: str, task: Task, weights: Weights | None) -> Reply:
        if weights is not None:  # the round's model, read in place from the object store
            task = dataclasses.replace(task, weights=weights)
        try:
            handler = self._handlers.get(site_id)
            if handler is None:
                handler = self._handlers[site_id] = self._build(site_id)
            return handler(task)
        except Exception as exc:  # as in memory: a handler must not take the actor down
            return Reply(task.task_id, site_id, error=f"{type(exc).__name__}: {exc}")


@dataclass
class _Pending:
    ref: Any  # ray.ObjectRef[Reply]
    task_id: str
    site_id: str


class RayTransport(Transport):
    """Sites hosted by a pool of Ray actors (see the module docstring).

    Needs a running Ray (``ray.init`` or :func:`ray_session`).

    Raises:
        ConfigError: the cluster has not even one site's resources.
    """

    def __init__(self, site_ids: Sequence[str], build: HandlerFactory,
                 resources: SiteResources | None = None) -> None:
        super().__init__()
        resources = resources or SiteResources()
        # The cluster's resources, not those free now: an actor of a run just closed may still be
        # releasing its own; an actor that does not fit yet waits for them, as Ray schedules.
        total = ray.cluster_resources()  # type: ignore[no-untyped-call]  # ray's own hint
        available = {k: float(v) for k, v in total.items()}
        size = resources.pool_size(available, len(site_ids))
        if size < 1:
            raise ConfigError(
                f"a simulated site needs {resources.num_cpus:g} CPU and "
                f"{resources.num_gpus:g} GPU, the Ray cluster has "
                f"{available.get('CPU', 0.0):g} CPU and {available.get('GPU', 0.0):g} GPU")
        actor = ray.remote(SiteHost).options(num_cpus=resources.num_cpus,
                                             num_gpus=resources.num_gpus)
        try:
            self._hosts: list[Any] = [actor.remote(build) for _ in range(size)]
        except TypeError as exc:  # Ray could not serialize what builds the sites
            raise ConfigError(f"the sites' job cannot be sent to Ray's actors "
                              f"({_first_line(exc)}): load it from a config file or "
                              "module:function, so each actor rebuilds it") from None
        self._host_of = {site_id: i % size for i, site_id in enumerate(site_ids)}
        # Per actor, its tasks not yet received, oldest first: an actor finishes them in order.
        self._pending: list[collections.deque[_Pending]] = [collections.deque()
                                                            for _ in range(size)]
        self._model: tuple[Weights, Any] | None = None  # the last model put, and its ref
        self._lock = threading.Lock()
        self._closed = threading.Event()
        for site_id in site_ids:
            self._set_connected(site_id, True)

    @property
    def pool_size(self) -> int:
        """The number of actors hosting the sites."""
        return len(self._hosts)

    def _put(self, weights: Weights | None) -> Any:
        """The object-store ref of ``weights``: put once, however many sites get them."""
        if weights is None:
            return None
        if self._model is None or self._model[0] is not weights:
            self._model = (weights, ray.put(weights))
        return self._model[1]

    def send(self, site_id: str, task: Task) -> None:
        if site_id not in self.site_ids():
            raise TransportError(f"unknown or disconnected site, task {task.task_id}",
                                 site_id=site_id)
        host = self._host_of[site_id]
        with self._lock:
            weights = self._put(task.weights)
            bare = dataclasses.replace(task, weights=None) if weights is not None else task
            ref = self._hosts[host].handle.remote(site_id, bare, weights)
            self._pending[host].append(_Pending(ref, task.task_id, site_id))

    def receive(self, timeout_s: float) -> Reply | None:
        with self._lock:
            heads = {q[0].ref: q for q in self._pending if q}
            if not heads:
                self._model = None  # nothing outstanding: the round's model may go
        if not heads:
            self._closed.wait(max(timeout_s, 0.0))
            return None
        refs = list(heads)
        ready, _ = ray.wait(refs, num_returns=1, timeout=max(timeout_s, 0.0),
                            fetch_local=True)
        if not ready:
            return None
        with self._lock:
            done = heads[ready[0]].popleft()
        del ready, refs, heads
        return self._reply(done)

    def _reply(self, done: _Pending) -> Reply:
        try:
            reply = ray.get(done.ref)
        except RayActorError as exc:
            self._lost(done.site_id)
            return Reply(done.task_id, done.site_id, connection_lost=True,
                         error=f"its Ray actor died: {_first_line(exc)}")
        except RayError as exc:
            return Reply(done.task_id, done.site_id, error=f"Ray: {_first_line(exc)}")
        if not isinstance(reply, Reply):
            return Reply(done.task_id, done.site_id,
                         error=f"its actor returned {type(reply).__name__}, not a Reply")
        return reply

    def _lost(self, site_id: str) -> None:
        """An actor died: every site it hosted is gone for the rest of the run."""
        host = self._host_of[site_id]
        for other, its_host in self._host_of.items():
            if its_host == host:
                self._set_connected(other, False)

    def close(self) -> None:
        self._closed.set()
        for site_id in list(self._host_of):
            self._set_connected(site_id, False)
        with self._lock:
            self._pending = [collections.deque() for _ in self._hosts]
            self._model = None
        for host in self._hosts:
            ray.kill(host)
        self._hosts = []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                object_store_bytes: int | None = None) -> Iterator[None]:
    """Ray for one simulation: the cluster at ``address``, else a local one started now.

    A Ray already initialised in this process is used as it is and left running; one this
    function started (or connected to) is shut down (disconnected) when the block ends.
    """
    if ray.is_initialized():
        yield
        return
    try:
        if address is not None:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                     object_store_memory=object_store_bytes)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address is not None else "locally"
        raise ConfigError(f"cannot start Ray {where}: {_first_line(exc)}") from None
    try:
        yield
    finally:
        ray.shutdown()
