"""MLflow runs of one job: a parent run for the server, a nested run for each site.

Every run carries the tags ``job_id`` and ``project`` (and the parent's ``job_name``); a site's
run also ``site_id``. The metric keys are those of the TensorBoard writer (``train/loss``,
``eval/accuracy``, ``train/num_samples``) with the round as the step, so MLflow's run
comparison draws the sites and the server's means in one chart, and ``tags.site_id = 'x'``
finds one hospital's runs across jobs. A job resumed after a server restart goes on in its
runs (found by their ``job_id`` tag) instead of starting new ones.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fedcare.server.tracking.scalar import Scalar

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

#: The characters MLflow allows in a metric key; any other becomes ``_``.
_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
#: MLflow accepts at most this many metrics in one ``log_batch`` call.
_BATCH = 1000
#: The tag telling a job's parent run (``server``) from its sites' runs (``site``).
ROLE_TAG = "fedcare.role"
#: How long opening waits for an MLflow server's port to answer (seconds).
CONNECT_TIMEOUT_S = 5.0


class MlflowWriter:
    """The MLflow runs of one job, created as their first numbers arrive."""

    name = "MLflow"

    def __init__(self, uri: str, experiment: str, job_id: str,
                 tags: Mapping[str, str]) -> None:
        from mlflow.tracking import MlflowClient  # only here: an optional dependency

        _check_reachable(uri)
        self.uri = uri
        self._client: MlflowClient = MlflowClient(tracking_uri=uri)
        self._job_id = job_id
        self._tags = {**tags, "job_id": job_id}
        self._experiment_id = self._experiment(experiment)
        self._runs = self._existing_runs()
        for run_id in self._runs.values():  # resumed: running again
            self._client.update_run(run_id, status="RUNNING")
        if None not in self._runs:
            self._runs[None] = self._create(None)

    def _experiment(self, name: str) -> str:
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return self._client.create_experiment(name)
        except Exception:  # another server (or job) created it meanwhile
            found = self._client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _existing_runs(self) -> dict[str | None, str]:
        """The runs of this job from before a server restart: site id (None: server) -> id."""
        quoted = self._job_id.replace("\\", "\\\\").replace("'", "\\'")
        runs: dict[str | None, str] = {}
        for run in self._client.search_runs([self._experiment_id],
                                            filter_string=f"tags.job_id = '{quoted}'"):
            tags = run.data.tags
            if tags.get(ROLE_TAG) == "server":
                runs[None] = run.info.run_id
                if "error" in tags:  # why it stopped before: it goes on now
                    self._client.delete_tag(run.info.run_id, "error")
            elif tags.get(ROLE_TAG) == "site" and tags.get("site_id"):
                runs[tags["site_id"]] = run.info.run_id
        return runs

    def _create(self, site_id: str | None) -> str:
        tags = dict(self._tags)
        if site_id is None:
            tags[ROLE_TAG] = "server"
            name = self._job_id
        else:
            tags.update({ROLE_TAG: "site", "site_id": site_id,
                         "mlflow.parentRunId": self._runs[None]})
            name = f"{self._job_id}/{site_id}"
        return str(self._client.create_run(self._experiment_id, tags=tags,
                                           run_name=name).info.run_id)

    def write(self, scalars: Sequence[Scalar]) -> None:
        from mlflow.entities import Metric

        timestamp_ms = int(time.time() * 1000)
        by_run: dict[str, list[Metric]] = {}
        for scalar in scalars:
            run_id = self._runs.get(scalar.site_id)
            if run_id is None:
                run_id = self._runs[scalar.site_id] = self._create(scalar.site_id)
            by_run.setdefault(run_id, []).append(Metric(
                _NOT_IN_KEY.sub("_", scalar.tag), scalar.value, timestamp_ms, scalar.step))
        for run_id, metrics in by_run.items():
            for start in range(0, len(metrics), _BATCH):
                self._client.log_batch(run_id, metrics=metrics[start:start + _BATCH],
                                       synchronous=True)

    def close(self, finished: bool, error: str | None) -> None:
        status = "FINISHED" if finished else "FAILED"
        if error:
            self._client.set_tag(self._runs[None], "error", error[:500])
        for run_id in self._runs.values():
            self._client.set_terminated(run_id, status)


def _check_reachable(uri: str) -> None:
    """Fail at once, saying why, where MLflow's client would retry for minutes (a server that
    is down) or refuse with a paragraph (a file store MLflow 3 keeps only on request)."""
    parts = urlsplit(uri)
    if parts.scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in (
            "1", "true"):
        raise RuntimeError("MLflow 3 writes a file store only with MLFLOW_ALLOW_FILE_STORE=true "
                           "in the environment; or run an MLflow server and give its http URI")
    if parts.scheme in ("http", "https") and parts.hostname:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise ConnectionError(f"cannot reach {parts.hostname}:{port}: "
                                  f"{exc.strerror or exc}") from None
