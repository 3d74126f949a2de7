"""What a site states about itself when it connects: its fedcare version and a policy summary.

Sent by the site with its connection, shown to the admins who may see that site (the admin
API's ``Sites``, the dashboard's federation page). It is the site's own statement, not
something the server verified: the site's policy is enforced at the site, from its own kit.
The summary holds names and counts only (filter names, whether a budget is set, ``min_rows``,
task kinds), never parameters, paths or secrets, and both are bounded and checked on receipt:
a malformed value is refused, naming the site.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from pydantic import ValidationError as _PydanticValidationError

from fedcare.core.message import KIND_PATTERN
from fedcare.core.policy import SitePolicy
from fedcare.core.privacy_policy import PrivacyPolicy

#: The longest version text a site may state.
MAX_VERSION_CHARS = 64
#: The most names in each list of a summary (a site's longer chain is stated in part).
MAX_NAMES = 16
#: The longest policy summary (JSON) a site may state: more than any summary within the
#: schema's bounds needs (4.4 kB), so a site never builds one the server refuses; with the call's
#: other headers still under gRPC's 8 KiB default for metadata.
MAX_POLICY_CHARS = 5120
_FilterName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
_Kind = Annotated[str, Field(pattern=KIND_PATTERN, max_length=64)]


class PolicySummary(BaseModel):
    """What a site states about its policy: names and numbers, no parameters.

    Attributes:
        outbound_filters: The site's own outbound filters, in order (what leaves passes them).
        inbound_filters: The site's own inbound filters, in order.
        required_filters: Filters every job's outbound chain must hold here.
        budget_set: Whether a total privacy budget (epsilon) is set.
        min_rows: No statistics or evaluation over fewer rows (0: no minimum).
        task_kinds: The task kinds a job may send; None: every kind.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    outbound_filters: list[_FilterName] = Field(default_factory=list, max_length=MAX_NAMES)
    inbound_filters: list[_FilterName] = Field(default_factory=list, max_length=MAX_NAMES)
    required_filters: list[_FilterName] = Field(default_factory=list, max_length=MAX_NAMES)
    budget_set: StrictBool = False
    min_rows: StrictInt = Field(default=0, ge=0, lt=2**31)
    task_kinds: list[_Kind] | None = Field(default=None, max_length=MAX_NAMES)

    @classmethod
    def of(cls, policy: SitePolicy | None, privacy: PrivacyPolicy | None) -> PolicySummary:
        """The summary of a site's kit policies (``policy:`` and ``privacy:``); each list
        holds at most its first ``MAX_NAMES`` names."""
        policy = policy or SitePolicy()
        privacy = privacy or PrivacyPolicy()
        return cls(outbound_filters=[f.name for f in policy.outbound][:MAX_NAMES],
                   inbound_filters=[f.name for f in policy.inbound][:MAX_NAMES],
                   required_filters=sorted(privacy.require)[:MAX_NAMES],
                   budget_set=privacy.budget_epsilon is not None, min_rows=privacy.min_rows,
                   task_kinds=(sorted(privacy.task_kinds)[:MAX_NAMES]
                               if privacy.task_kinds is not None else None))

    def to_json(self) -> str:
        return self.model_dump_json()


def version_problem(version: str) -> str | None:
    """Why ``version`` is not an acceptable version text (printable ASCII, 1 to 64), or None."""
    if not 0 < len(version) <= MAX_VERSION_CHARS:
        return f"version of {len(version)} characters (1 to {MAX_VERSION_CHARS} allowed)"
    if not all(" " <= c <= "~" for c in version):
        return "version with characters other than printable ASCII"
    return None


def parse_policy(text: str) -> PolicySummary:
    """A policy summary from its JSON.

    Raises:
        ValueError: too long or malformed; the message says what, in one bounded line.
    """
    if len(text) > MAX_POLICY_CHARS:
        raise ValueError(f"policy summary of {len(text)} characters (at most "
                         f"{MAX_POLICY_CHARS})")
    try:
        return PolicySummary.model_validate_json(text)
    except _PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "summary"
        raise ValueError(f"malformed policy summary: {where}: {first['msg']}"[:300]) from None


def describe_policy(policy: object) -> str | None:
    """A policy summary as the admin API's JSON gives it, in one line for people ("outbound:
    clip_update_norm; inbound: none; requires: svt; budget set; min_rows 20; task kinds:
    evaluate, train"); None if it is not a valid summary."""
    try:
        summary = PolicySummary.model_validate(policy)
    except _PydanticValidationError:
        return None
    parts = [f"{label}: {', '.join(names) or 'none'}" for label, names in (
        ("outbound", summary.outbound_filters), ("inbound", summary.inbound_filters),
        ("requires", summary.required_filters))]
    parts += ["budget set" if summary.budget_set else "no budget", f"min_rows {summary.min_rows}",
              "task kinds: " + (", ".join(summary.task_kinds)
                                if summary.task_kinds is not None else "any")]
    return "; ".join(parts)
