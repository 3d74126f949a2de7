"""TensorBoard event files of one job, written with TensorBoard's own numpy-only writer.

``FOLDER/JOB_ID/server`` holds the server's numbers, ``FOLDER/JOB_ID/sites/SITE`` each
site's: TensorBoard shows every folder holding event files as a run, and draws one tag
(``eval/accuracy``) of all of them in one chart. ``tensorboard --logdir FOLDER`` shows every
job; the writer needs neither torch nor TensorFlow.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.server.tracking.scalar import Scalar

SERVER_RUN = "server"
SITES_FOLDER = "sites"


def run_folder(root: Path, site_id: str | None) -> Path:
    """The event-file folder of the server's run (``site_id`` None) or of one site's."""
    if site_id is None:
        return root / SERVER_RUN
    if not _one_name(site_id):
        raise ValueError(f"site id {site_id!r} cannot name a folder")
    return root / SITES_FOLDER / site_id


def _one_name(name: str) -> bool:
    return bool(name) and Path(name).name == name and name not in (".", "..")


class TensorBoardWriter:
    """Event files of one job under ``folder/job_id``; one event file per run and process."""

    name = "TensorBoard"

    def __init__(self, folder: Path, job_id: str) -> None:
        if not _one_name(job_id):
            raise ConfigError(f"tracking: job id {job_id!r} cannot name a folder",
                              job_id=job_id)
        from tensorboard.summary import Writer  # only here: an optional dependency

        self._writer_type = Writer
        self.root = Path(folder) / job_id
        self.root.mkdir(parents=True, exist_ok=True)
        self._writers: dict[str | None, Any] = {}

    def write(self, scalars: Sequence[Scalar]) -> None:
        wall_time = time.time()
        touched = []
        for scalar in scalars:
            writer = self._writers.get(scalar.site_id)
            if writer is None:
                folder = run_folder(self.root, scalar.site_id)
                folder.mkdir(parents=True, exist_ok=True)
                writer = self._writers[scalar.site_id] = self._writer_type(str(folder))
            writer.add_scalar(scalar.tag, scalar.value, scalar.step, wall_time=wall_time)
            if writer not in touched:
                touched.append(writer)
        for writer in touched:  # a round is on disk when it is tracked (and a full disk says so)
            writer.flush()

    def close(self, finished: bool, error: str | None) -> None:
        writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            writer.close()
