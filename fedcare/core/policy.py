"""A site's own policy: the filter chains every task and every result of every job pass through.

Written by the hospital in its kit's ``config.yaml`` (or handed to the simulator), never sent by
the server, so the server can neither remove nor weaken it::

    policy:
      inbound: []                          # what arrives, in order (e.g. decryption)
      outbound:                            # what leaves, in order
        - exclude_variables: {patterns: ["^head\\\\."]}
        - clip_update_norm: {max_norm: 5.0}

Each entry names one filter and its parameters; the site builds fresh filters for every job
from this description (:func:`fedcare.site.filters.build_filters`), so no state is shared across
jobs. This module is the schema only: which filters exist is the site layer's business.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

_Param = StrictBool | StrictInt | StrictFloat | StrictStr | list[StrictStr] | list[StrictFloat]


class FilterSpec(BaseModel):
    """One filter of a chain: its registered name and its parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    params: dict[str, _Param] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _one_key_mapping(cls, data: Any) -> Any:
        """Accept the short YAML form ``{clip_update_norm: {max_norm: 5}}``."""
        if isinstance(data, dict) and len(data) == 1 and "name" not in data:
            ((name, params),) = data.items()
            return {"name": name, "params": params if params is not None else {}}
        if isinstance(data, str):
            return {"name": data}
        return data


class SitePolicy(BaseModel):
    """The inbound and outbound filter chains of one site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbound: list[FilterSpec] = Field(default_factory=list)
    outbound: list[FilterSpec] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json()


#: The jobs fedcare ships that a host runs by default: code the site and the server installed
#: with fedcare itself. ``fedcare.jobs.clinical:regression_job`` ships too but is not among them:
#: its Newton steps are sums at coefficients (and, for pooled Cox, event times) the server
#: chooses, which a malicious server can pick to single out one patient; a site opts in by
#: listing it in ``code.entry_points`` (see README, "Clinical analytics").
BUILTIN_JOBS = (
    "fedcare.jobs.clinical:cohort_job",
    "fedcare.jobs.clinical:kaplan_meier_job",
    "fedcare.jobs.heart:make_job",
    "fedcare.jobs.heart_stats:make_job",
    "fedcare.jobs.hippocampus:make_job",
    "fedcare.jobs.tcga:make_job",
    "fedcare.jobs.medmnist:make_job",
)
_ENTRY_POINT = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"


class CodePolicy(BaseModel):
    """Which job code a process (a site, or the server) runs: nothing else, by default.

    Written by the host's operator in its kit's ``config.yaml`` (``code:``)::

        code:
          builtin_jobs: true                  # fedcare's own jobs (BUILTIN_JOBS)
          entry_points: [my_lab.jobs:make_job]   # jobs installed on this machine by its operator
          signers: [alice]                    # signed packages from these project admins
          packages: [3f2a...]                 # or exactly these packages (sha256 ids)

    A job is run if its entry point is built in (and ``builtin_jobs``) or listed; a signed
    package if its signer or its id is listed. Everything else is refused, with the reason.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    builtin_jobs: bool = True
    entry_points: list[Annotated[str, Field(pattern=_ENTRY_POINT)]] = Field(default_factory=list)
    signers: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]] = Field(
        default_factory=list)
    packages: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=list)

    def refuses_entry_point(self, entry_point: str) -> str | None:
        """Why a job named by ``entry_point`` (not a package) may not run here, or None."""
        if entry_point in self.entry_points:
            return None
        if entry_point in BUILTIN_JOBS:
            return None if self.builtin_jobs else (
                f"{entry_point} is built in, but this policy has builtin_jobs: false")
        return (f"entry point {entry_point} is neither a built-in job nor in this policy's "
                "code.entry_points")

    def refuses_package(self, package_id: str, signer: str) -> str | None:
        """Why the signed package ``package_id`` by ``signer`` may not run here, or None."""
        if package_id in self.packages or signer in self.signers:
            return None
        return (f"package {package_id[:12]} signed by {signer} is not allowed: neither its "
                "signer is in this policy's code.signers nor its id in code.packages")
