"""Loading a Job from a small config file that names its Python entry point.

A job file is YAML, TOML or JSON::

    entry_point: my_job:make_job      # module:function returning a fedcare Job
    params: {num_rounds: 10}          # keyword arguments for that function

The config file's folder is put on the import path, so ``my_job.py`` may sit beside it. Bad files
fail with one ConfigError naming the file and the field, never a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedcare.core.errors import ConfigError
from fedcare.core.job import ENTRY_POINT_PATTERN, Job, JobSource, TrainerFactory
from fedcare.core.trainer import SiteContext, Trainer


class JobFile(BaseModel):
    """Schema of a job config file."""

    model_config = ConfigDict(extra="forbid")

    entry_point: str = Field(pattern=ENTRY_POINT_PATTERN, description="module:function")
    params: dict[str, Any] = Field(default_factory=dict)


def _read(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"job file {path}: not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"job file {path}: cannot read: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"job file {path}: cannot parse: {exc}") from None
    raise ConfigError(f"job file {path}: unsupported extension {suffix!r} (.yaml, .toml, .json)")


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(file)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def read_job_file(path: Path) -> JobFile:
    """Parse and validate a job file."""
    if not path.is_file():
        raise ConfigError(f"job file {path} does not exist")
    raw = _read(path)
    try:
        return JobFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"job file {path}: {_format_validation(exc)}") from None


def _resolve(reference: str, what: str) -> object:
    """The object a ``module:function`` reference names (imported), or a ConfigError."""
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {reference}: cannot import: {exc}") from None
    except SyntaxError as exc:  # raised by the import of a module with a typo
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else module_name
        raise ConfigError(f"{what} {reference}: cannot import: syntax error in "
                          f"{where}: {exc.msg}") from None
    found = getattr(module, attr, None)
    if found is None:
        raise ConfigError(f"{what} {reference}: {module_name} has no {attr!r}")
    return found


def site_trainer(job: Job) -> TrainerFactory:
    """The job's site half: its trainer factory, imported here if the job references it.

    Only sites and the simulator call this; the server never does.
    """
    if not isinstance(job.trainer, str):
        return job.trainer
    factory = _resolve(job.trainer, "trainer")
    if not callable(factory):
        raise ConfigError(f"trainer {job.trainer} is not callable", job_id=job.name)
    params = dict(job.trainer_params)

    def build(context: SiteContext) -> Trainer:
        return factory(context, **params)  # type: ignore[no-any-return]

    return build


def build_job(source: JobSource) -> Job:
    """Import the entry point and call it with the params; the job remembers its source."""
    if source.search_path and source.search_path not in sys.path:
        sys.path.insert(0, source.search_path)
    factory: Any = _resolve(source.entry_point, "entry point")
    if isinstance(factory, Job):
        if source.params:
            raise ConfigError(f"entry point {source.entry_point} is a Job, it takes no params")
        job = factory
    else:
        try:
            job = factory(**source.params)
        except TypeError as exc:
            raise ConfigError(f"entry point {source.entry_point}: bad params: {exc}") from None
    if not isinstance(job, Job):
        raise ConfigError(
            f"entry point {source.entry_point} returned {type(job).__name__}, not a fedcare Job"
        )
    return dataclasses.replace(job, source=source)


_PACKAGE_FOLDERS: set[str] = set()
#: One package job built at a time: building changes the import path and the module table.
_PACKAGE_LOCK = threading.Lock()


def _use_package_folder(folder: str) -> None:
    """Make ``folder`` the only package folder on the import path: modules imported from any
    other package's folder are forgotten, so two packages may both have a ``job.py``."""
    others = _PACKAGE_FOLDERS - {folder}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if any(file.startswith(other + os.sep) for other in others):
            del sys.modules[name]
    for other in others:
        while other in sys.path:
            sys.path.remove(other)
    _PACKAGE_FOLDERS.intersection_update({folder})
    _PACKAGE_FOLDERS.add(folder)
    importlib.invalidate_caches()


def build_package_job(folder: Path, entry_point: str, params: dict[str, Any]) -> Job:
    """Build the job of a verified package extracted to ``folder`` (its own copy).

    Only call this for a package the process's code policy allows: it imports and runs the
    package's code. One package's modules at a time: those of the previous one are forgotten.
    """
    path = str(Path(folder).resolve())
    with _PACKAGE_LOCK:
        _use_package_folder(path)
        return build_job(JobSource(entry_point, dict(params), path))


def load_job(target: str, params: dict[str, Any] | None = None) -> Job:
    """Load a job from a config file path or a ``module:function`` reference.

    ``params`` override (and extend) those in the file.
    """
    path = Path(target)
    if path.suffix.lower() in (".yaml", ".yml", ".toml", ".json") or path.is_file():
        spec = read_job_file(path)
        merged = {**spec.params, **(params or {})}
        source = JobSource(spec.entry_point, merged, str(path.resolve().parent))
        try:
            return build_job(source)
        except ConfigError as exc:  # name the file, e.g. for a bad value in its params
            raise ConfigError(f"job file {path}: {exc.message}", job_id=exc.job_id) from None
    else:
        try:
            spec = JobFile(entry_point=target, params=params or {})
        except ValidationError:
            raise ConfigError(
                f"job {target!r} is neither a .yaml/.toml/.json file nor module:function"
            ) from None
        source = JobSource(spec.entry_point, dict(spec.params), str(Path.cwd()))
    return build_job(source)
