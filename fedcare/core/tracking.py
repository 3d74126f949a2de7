"""Where a run's per-round metrics are tracked besides its own history: the settings.

Written by the server's operator in the server kit's ``config.yaml`` (or given to the
simulator)::

    tracking:
      tensorboard: tensorboard          # event files, one folder per job (relative: to the kit)
      mlflow_uri: http://mlflow.example.org:5000
      mlflow_experiment: heart-federation   # default: the federation's name

Both are optional and independent. This module is the schema only; the writers are in
:mod:`fedcare.server.tracking`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: URI schemes the MLflow client (mlflow-skinny) can write runs to.
MLFLOW_SCHEMES = ("http", "https", "file", "databricks")


class TrackingConfig(BaseModel):
    """Experiment tracking of a server's (or a simulation's) runs.

    Attributes:
        tensorboard: Folder for TensorBoard event files: each job gets ``FOLDER/JOB_ID``
            (see :mod:`fedcare.server.tracking`). In a kit, relative to the kit folder.
        mlflow_uri: An MLflow tracking server (``http(s)://HOST:PORT``), a local file store
            (``file:///FOLDER``; MLflow 3 writes one only with ``MLFLOW_ALLOW_FILE_STORE=true``)
            or ``databricks``.
        mlflow_experiment: The MLflow experiment the runs go to; by default the federation's
            name (``fedcare`` in the simulator).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensorboard: str | None = Field(default=None, min_length=1)
    mlflow_uri: str | None = Field(default=None, min_length=1)
    mlflow_experiment: str | None = Field(default=None, min_length=1, max_length=500)

    @field_validator("mlflow_uri")
    @classmethod
    def _mlflow_uri(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        scheme = urlsplit(uri).scheme if "://" in uri else uri
        if scheme not in MLFLOW_SCHEMES or any(c.isspace() for c in uri):
            raise ValueError(f"{uri!r} is not a tracking URI the MLflow client can write to: "
                             "use http(s)://HOST:PORT, file:///FOLDER or databricks")
        if scheme in ("http", "https") and not urlsplit(uri).hostname:
            raise ValueError(f"{uri!r} names no host")
        return uri

    @property
    def enabled(self) -> bool:
        """Whether any backend is configured."""
        return self.tensorboard is not None or self.mlflow_uri is not None
