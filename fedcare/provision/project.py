"""The project file a study coordinator writes, and the config each startup kit carries.

A project file names the federation, its server, its sites (hospitals) and its admins::

    name: heart-federation
    server: {host: fl.example.org, port: 8443}
    sites:
      - {name: hospital-a, org: Cleveland Clinic}
    admins:
      - {name: alice, org: Coordinating Centre, role: project_admin}
      - {name: bob, org: Cleveland Clinic, role: site_admin, site: hospital-a}
    cert_validity_days: 365

Participant names become certificate common names, which is how the server knows who is on the
other end of a connection, so they are unique across the whole federation and ``server`` is
reserved. A bad file fails with one ConfigError naming the file and the field.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedcare.core.errors import ConfigError
from fedcare.core.policy import CodePolicy, SitePolicy
from fedcare.core.privacy_policy import PrivacyPolicy
from fedcare.core.tracking import TrackingConfig

#: A participant name: also a folder name and a certificate common name.
NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
FEDERATION = r"^[A-Za-z0-9_-]{1,64}$"
SERVER_NAME = "server"
AdminRole = Literal["project_admin", "site_admin", "viewer"]

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSpec(_Model):
    """Where sites and admins reach the server; the host goes into its certificate."""

    host: str
    port: int = Field(ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        labels = host.split(".")
        if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
            raise ValueError(f"{host!r} is neither an IP address nor a DNS name")
        if labels[-1].isdigit():
            raise ValueError(f"{host!r} is not a valid IP address")
        return host


class SiteSpec(_Model):
    """A hospital. ``org`` becomes the O of its certificate (X.509 allows 64 characters)."""

    name: str = Field(pattern=NAME)
    org: str = Field(min_length=1, max_length=64)


class AdminSpec(_Model):
    """A person who submits or watches jobs; a site_admin is tied to one site."""

    name: str = Field(pattern=NAME)
    org: str = Field(min_length=1, max_length=64)
    role: AdminRole
    site: str | None = None


def _cross_field_problems(project: ProjectConfig) -> list[str]:
    """Problems no single field shows, each prefixed with the field it concerns."""
    seen = {SERVER_NAME: "the server"}
    problems = []
    named = [(f"sites.{i}.name", s.name) for i, s in enumerate(project.sites)]
    named += [(f"admins.{i}.name", a.name) for i, a in enumerate(project.admins)]
    for loc, name in named:
        if name in seen:
            problems.append(f"{loc}: {name!r} is already used by {seen[name]}; participant "
                            f"names must be unique ('server' is reserved for the server)")
        else:
            seen[name] = loc
    sites = sorted({s.name for s in project.sites})
    for i, admin in enumerate(project.admins):
        if admin.role == "site_admin" and admin.site not in sites:
            problems.append(f"admins.{i}.site: a site_admin needs 'site' naming one of the "
                            f"sites {sites}, got {admin.site!r}")
        elif admin.role != "site_admin" and admin.site is not None:
            problems.append(f"admins.{i}.site: only a site_admin has a site ({admin.name} is "
                            f"a {admin.role})")
    return problems


class ProjectConfig(_Model):
    """A federation: its server, its sites (hospitals) and the people who administer it."""

    name: str = Field(pattern=FEDERATION)
    server: ServerSpec
    sites: list[SiteSpec] = Field(default_factory=list)
    admins: list[AdminSpec] = Field(default_factory=list)
    cert_validity_days: int = Field(default=365, ge=1, le=3650)

    @model_validator(mode="after")
    def _consistent(self) -> ProjectConfig:
        problems = _cross_field_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class KitConfig(_Model):
    """``config.yaml`` of one startup kit, written at provisioning, read at start-up.

    Attributes:
        federation: Name of the federation (also the OU of every certificate).
        name: This participant's name, equal to its certificate's common name.
        kind: Which process the kit starts: ``server``, ``site`` or ``admin``.
        server_host: Host the server listens on and the others dial.
        server_port: Port of the server.
        role: The admin's role; None for the server and sites.
        site: The site a site_admin administers; None otherwise.
        data_dir: Sites only. The folder of this hospital's data, filled in by the hospital.
            It is read by the site's own process and never sent to the server: where patient
            data lives is the site's business, not the federation's.
        code: Server and sites. Which job code this process runs (:class:`CodePolicy`):
            fedcare's built-in jobs, entry points installed here, signed packages from named
            signers or with listed ids; nothing else. Written by this host's operator.
        policy: Sites only. The site's own filter chains (:class:`SitePolicy`): what every
            task passes before the trainer sees it (``inbound``) and what every result passes
            before it leaves the site (``outbound``), e.g. ``clip_update_norm``. Built afresh
            for each job at the site; the server can neither see nor change it.
        privacy: Sites only. The site's privacy policy (:class:`PrivacyPolicy`): the filters
            and bounds every job must satisfy, the task kinds it may send, the fewest rows a
            statistic or evaluation may cover, and the site's privacy budget (total epsilon
            across all jobs, kept in ``privacy.db`` in the kit). Written by the hospital, in
            this file beside the filter chains it constrains; never sent to the server.
        workspace: Server only. Folder for jobs, checkpoints and results, relative to the kit.
        crl: Server only. Revocation list, relative to the kit; re-read on every connection.
        tracking: Server only. Experiment tracking of every job (:class:`TrackingConfig`):
            TensorBoard event files (a folder, relative to the kit) and an MLflow tracking
            URI. Written by the server's operator, from what the server already sees: the
            round records (aggregates, each site's reported metrics and sample counts).
    """

    federation: str = Field(pattern=FEDERATION)
    name: str = Field(pattern=NAME)
    kind: Literal["server", "site", "admin"]
    server_host: str
    server_port: int = Field(ge=1, le=65535)
    role: AdminRole | None = None
    site: str | None = None
    data_dir: str | None = None
    code: CodePolicy = Field(default_factory=CodePolicy)
    policy: SitePolicy = Field(default_factory=SitePolicy)
    privacy: PrivacyPolicy = Field(default_factory=PrivacyPolicy)
    workspace: str | None = None
    crl: str | None = None
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="before")
    @classmethod
    def _allowed_trainers(cls, data: object) -> object:
        """Read a kit written before ``code``: its ``allowed_trainers`` are entry points, and
        a list that named some allowed nothing else, built-in jobs included."""
        if isinstance(data, dict) and "allowed_trainers" in data:
            data = dict(data)
            listed = data.pop("allowed_trainers") or []
            code = dict(data.get("code") or {})
            code["entry_points"] = [*code.get("entry_points", []), *listed]
            if listed:
                code.setdefault("builtin_jobs", False)
            data["code"] = code
        return data

    @model_validator(mode="after")
    def _consistent(self) -> KitConfig:
        if self.kind == "admin" and self.code != CodePolicy():
            raise ValueError("code: an admin kit runs no job code")
        if (self.kind == "admin") != (self.role is not None):
            raise ValueError("role: an admin kit needs a role, and only an admin kit has one")
        if (self.role == "site_admin") != (self.site is not None):
            raise ValueError("site: a site_admin kit names its site, and only a site_admin's")
        if self.kind != "site" and (self.policy.inbound or self.policy.outbound):
            raise ValueError("policy: only a site kit has a filter policy")
        if self.kind != "site" and not self.privacy.is_empty:
            raise ValueError("privacy: only a site kit has a privacy policy")
        if self.kind != "server" and self.tracking != TrackingConfig():
            raise ValueError("tracking: only the server kit tracks experiments")
        return self

    def to_yaml(self) -> str:
        """The kit's ``config.yaml``: only the keys that mean something for its kind."""
        keys = ["federation", "name", "kind", "server_host", "server_port"]
        keys += {"server": ["workspace", "crl", "code", "tracking"],
                 "site": ["data_dir", "code", "policy", "privacy"],
                 "admin": ["role", "site"] if self.site else ["role"]}[self.kind]
        header = ""
        if self.kind == "server":
            header = ("# code: which job code this server runs, nothing else: fedcare's\n"
                      "#   built-in jobs (builtin_jobs), entry points installed here\n"
                      "#   (entry_points), signed job packages from these project admins\n"
                      "#   (signers) or with these ids (packages; see fedcare job inspect).\n"
                      "# tracking: every job's per-round metrics, besides its history, e.g.\n"
                      "#   tracking: {tensorboard: tensorboard,   (a folder, relative to the kit)\n"
                      "#             mlflow_uri: http://mlflow.example.org:5000}\n")
        if self.kind == "site":
            header = ("# data_dir: this hospital's data folder, read only by this site's process.\n"
                      "# code: which job code this site runs, nothing else: fedcare's\n"
                      "#   built-in jobs (builtin_jobs), entry points installed here\n"
                      "#   (entry_points), signed job packages from these project admins\n"
                      "#   (signers) or with these ids (packages; see fedcare job inspect).\n"
                      "# policy: this site's filters, applied to every job, e.g.\n"
                      "#   policy: {outbound: [{clip_update_norm: {max_norm: 5.0}},\n"
                      "#                       {exclude_variables: {patterns: ['^head\\.']}}]}\n"
                      "# privacy: what every job must satisfy here, and the privacy budget, e.g.\n"
                      "#   privacy: {budget_epsilon: 8.0, max_job_epsilon: 3.0, min_rows: 20,\n"
                      "#             task_kinds: [train, evaluate],\n"
                      "#             require: {svt: {epsilon: {max: 1.0}}}}\n"
                      "#   (fedcare site policy KIT shows it; fedcare site privacy KIT, spends)\n")
        data = self.model_dump()
        return header + yaml.safe_dump({k: data[k] for k in keys}, sort_keys=False)


def format_errors(exc: ValidationError) -> str:
    """One line for all of a ValidationError: ``field.path: message; ...``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "value_error":
            # Our own validators' messages, without pydantic's "Value error, " prefix; the
            # cross-field ones already start with the field they concern.
            message = str(err["ctx"]["error"])
            parts.append(f"{loc}: {message}" if loc else message)
        else:
            parts.append(f"{loc or '(file)'}: {err['msg']}")
    return "; ".join(parts)


M = TypeVar("M", bound=BaseModel)


def read_yaml_model(path: Path, model: type[M], what: str) -> M:
    """Parse and validate a YAML file.

    Args:
        path: The file.
        model: The pydantic model it must satisfy.
        what: How to call the file in errors, e.g. ``"project file"``.

    Returns:
        The validated model.

    Raises:
        ConfigError: One line naming the file and every offending field, for a missing or
            unreadable file, a YAML syntax error or a validation failure.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path}: cannot parse: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{what} {path}: {format_errors(exc)}") from None


def load_project(path: Path) -> ProjectConfig:
    """Read and validate a project file.

    Raises:
        ConfigError: Naming the file and the field, e.g. ``project file p.yaml: admins.1.site:
            a site_admin needs 'site' naming one of the sites [...]``.
    """
    return read_yaml_model(path, ProjectConfig, "project file")
