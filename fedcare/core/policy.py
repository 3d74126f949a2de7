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

from typing import Any

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
