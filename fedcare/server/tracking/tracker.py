"""The run listener that sends each recorded round to TensorBoard and MLflow.

It hears the same events as the run's history and progress bar, and writes what the server
already holds: the round record (its aggregates and each site's reported metrics and sample
counts). Nothing is asked of the sites for it.

Tracking never stops a federation nor touches its own history: the backends are written from
one background thread, so a slow or unreachable MLflow server delays no round, and a backend
that fails (cannot be opened, a full disk, a lost server) is dropped for the rest of the run
with one warning naming it and why, while the others go on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from fedcare.core.text import one_line
from fedcare.core.tracking import TrackingConfig
from fedcare.server.events import RunListener, RunState
from fedcare.server.history import RoundRecord
from fedcare.server.tracking.scalar import Scalar, round_scalars

log = logging.getLogger(__name__)

_INSTALL = "pip install 'fedcare[tracking]'"


class Backend(Protocol):
    """Where tracked numbers go: one job's runs in one system."""

    name: str

    def write(self, scalars: Sequence[Scalar]) -> None:
        """Write one round's numbers; raise if they cannot be written."""

    def close(self, finished: bool, error: str | None) -> None:
        """The run ended (``finished``, or failed with ``error``)."""


class Tracker(RunListener):
    """Tracks one run (one job) in every backend ``config`` names.

    Args:
        config: The backends; a relative ``tensorboard`` folder is taken from the current
            directory (the server resolves its kit's against the kit first).
        job_id: Names the job's runs: its TensorBoard folder and its MLflow runs.
        project: The federation's name: the ``project`` tag, and the MLflow experiment
            unless ``config.mlflow_experiment`` names one.
        tags: More tags for the MLflow runs (e.g. ``job_name``).
        close_timeout_s: How long the end of a run waits for the backends to finish writing
            before it leaves them to it (a tracking server that does not answer).
    """

    def __init__(self, config: TrackingConfig, job_id: str, *, project: str = "fedcare",
                 tags: Mapping[str, str] | None = None, close_timeout_s: float = 30.0) -> None:
        self.config = config
        self.job_id = job_id
        self.project = project
        self.tags = {"project": project, **(tags or {})}
        self.close_timeout_s = close_timeout_s
        self.backends: list[Backend] = []
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- run events (any thread) -------------------------------------------------------------
    def on_round_saved(self, record: RoundRecord) -> None:
        # Once recorded, not at round end: a job resumed after a server restart runs again
        # only the rounds its store never recorded, so none is tracked twice.
        self._submit(lambda: self._write(record))

    def on_run_end(self, state: RunState, error: str | None) -> None:
        with self._lock:
            thread = self._thread
            if thread is None:  # no round was recorded: nothing was opened
                return
            self._queue.put(lambda: self._close(state == RunState.FINISHED, error))
            self._queue.put(None)
            self._thread = None
        thread.join(self.close_timeout_s)
        if thread.is_alive():
            log.warning("job %s: experiment tracking still writing after %g s; left to "
                        "finish in the background", self.job_id, self.close_timeout_s)

    def _submit(self, work: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._queue.put(self._open)
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                 name=f"tracking-{self.job_id}")
                self._thread.start()
            self._queue.put(work)

    # -- the tracking thread -----------------------------------------------------------------
    def _work(self) -> None:
        while (work := self._queue.get()) is not None:
            work()

    def _open(self) -> None:
        config = self.config
        if config.tensorboard is not None:
            folder = Path(config.tensorboard)
            self._try_open(f"TensorBoard in {folder}", lambda: _tensorboard(folder, self.job_id))
        if config.mlflow_uri is not None:
            uri = config.mlflow_uri
            experiment = config.mlflow_experiment or self.project
            self._try_open(f"MLflow at {uri}", lambda: _mlflow(uri, experiment, self.job_id,
                                                               self.tags))

    def _try_open(self, what: str, opener: Callable[[], Backend]) -> None:
        try:
            self.backends.append(opener())
        except Exception as exc:
            log.warning("job %s: cannot track to %s: %s; the run goes on without it",
                        self.job_id, what, _reason(exc))

    def _write(self, record: RoundRecord) -> None:
        scalars = round_scalars(record)
        for backend in list(self.backends):
            try:
                backend.write(scalars)
            except Exception as exc:
                self.backends.remove(backend)
                log.warning("job %s: %s tracking stopped at round %d: %s; the run goes on and "
                            "its own history (metrics.json) is not affected", self.job_id,
                            backend.name, record.round_num, _reason(exc))
                self._close_quietly(backend, False, None)

    def _close(self, finished: bool, error: str | None) -> None:
        backends, self.backends = self.backends, []
        for backend in backends:
            try:
                backend.close(finished, error)
            except Exception as exc:
                log.warning("job %s: closing %s tracking failed: %s", self.job_id,
                            backend.name, _reason(exc))

    @staticmethod
    def _close_quietly(backend: Backend, finished: bool, error: str | None) -> None:
        try:
            backend.close(finished, error)
        except Exception:
            log.debug("closing %s after its failure failed too", backend.name, exc_info=True)


def _tensorboard(folder: Path, job_id: str) -> Backend:
    try:
        from fedcare.server.tracking.tensorboard import TensorBoardWriter

        return TensorBoardWriter(folder, job_id)
    except ImportError as exc:
        raise RuntimeError(f"TensorBoard is not installed ({_INSTALL}): {exc}") from exc


def _mlflow(uri: str, experiment: str, job_id: str, tags: Mapping[str, str]) -> Backend:
    try:
        from fedcare.server.tracking.mlflow import MlflowWriter

        return MlflowWriter(uri, experiment, job_id, tags)
    except ImportError as exc:
        raise RuntimeError(f"the MLflow client is not installed ({_INSTALL}): {exc}") from exc


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message (MLflow's run to paragraphs), bounded."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return one_line(f"{type(exc).__name__}: {text}", 240)
