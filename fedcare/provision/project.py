"""The project file a study coordinator writes, and the config each startup kit carries."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedcare.core.errors import ConfigError

NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSpec(_Model):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)


class SiteSpec(_Model):
    name: str = Field(pattern=NAME)
    org: str = Field(min_length=1, max_length=64)


class AdminSpec(_Model):
    name: str = Field(pattern=NAME)
    org: str = Field(min_length=1, max_length=64)
    role: Literal["project_admin", "site_admin", "viewer"]
    site: str | None = None


class ProjectConfig(_Model):
    """A federation: its server, its sites (hospitals) and the people who administer it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    server: ServerSpec
    sites: list[SiteSpec] = Field(default_factory=list)
    admins: list[AdminSpec] = Field(default_factory=list)
    cert_validity_days: int = Field(default=365, ge=1, le=3650)

    @model_validator(mode="after")
    def _names(self) -> ProjectConfig:
        names = ["server"] + [s.name for s in self.sites] + [a.name for a in self.admins]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"participant names must be unique ('server' is reserved): "
                             f"{duplicates}")
        sites = {s.name for s in self.sites}
        for admin in self.admins:
            if admin.role == "site_admin" and admin.site not in sites:
                raise ValueError(f"admin {admin.name}: site_admin needs 'site' naming one of "
                                 f"the sites {sorted(sites)}, got {admin.site!r}")
            if admin.role != "site_admin" and admin.site is not None:
                raise ValueError(f"admin {admin.name}: only a site_admin has a 'site'")
        return self


class KitConfig(_Model):
    """``config.yaml`` of one startup kit. A site edits ``data_dir`` and ``allowed_trainers``.

    ``allowed_trainers`` lists the job entry points (module:function) this site runs; an empty
    list accepts any job the federation's project admins submit.
    """

    federation: str
    name: str
    kind: Literal["server", "site", "admin"]
    server_host: str
    server_port: int
    role: str | None = None
    site: str | None = None
    data_dir: str | None = None
    allowed_trainers: list[str] = Field(default_factory=list)
    workspace: str | None = None
    crl: str | None = None


def format_errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(x) for x in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors())


def read_yaml_model(path: Path, model: type[_Model], what: str) -> _Model:
    """Parse and validate a YAML file, or one ConfigError naming the file and field."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: cannot parse: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{what} {path}: {format_errors(exc)}") from None


def load_project(path: Path) -> ProjectConfig:
    project = read_yaml_model(path, ProjectConfig, "project file")
    assert isinstance(project, ProjectConfig)
    return project
