"""What the job pages show of a job, read from the admin API's documents (already filtered by
the caller's role): its sites, its failures, its times."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedcare.core.site_profile import describe_policy


@dataclass(frozen=True)
class Failure:
    """One site failure: which site, in which round, at which step, and why."""

    site_id: str
    round_num: int | None
    kind: str
    message: str


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple | dict) else []


def failures_of(job: Mapping[str, object], rounds: Sequence[Mapping[str, object]]
                ) -> list[Failure]:
    """Every failure the round records hold, in order; then, for a site the job counts as
    failed but no record mentions (its round never ended), the job's last failure of it."""
    found: list[Failure] = []
    for record in rounds:
        for item in _list(record.get("failures")):
            if isinstance(item, Mapping):
                round_num = item.get("round_num")
                found.append(Failure(str(item.get("site_id")),
                                     round_num if isinstance(round_num, int) else None,
                                     str(item.get("kind") or ""), str(item.get("message") or "")))
    named = {f.site_id for f in found}
    failed = job.get("failed_sites")
    for site, info in sorted(failed.items() if isinstance(failed, Mapping) else ()):
        if site not in named and isinstance(info, Mapping):
            round_num = info.get("round_num")
            found.append(Failure(str(site), round_num if isinstance(round_num, int) else None,
                                 str(info.get("kind") or ""), str(info.get("message") or "")))
    return found


@dataclass(frozen=True)
class SiteRow:
    """A site on the federation page: connected now or not, since when (Unix time, None if
    the server does not know), and how the dashboard knows of it; its organisation, and what
    a connected site stated (version, policy summary as text) and how long ago its last
    message ended (None: not known or not stated)."""

    site_id: str
    connected: bool
    since_s: float | None
    source: str
    org: str | None = None
    version: str | None = None
    policy: str | None = None
    last_message_age_s: float | None = None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def site_rows(sites: Mapping[str, object], jobs: Sequence[Mapping[str, object]]
              ) -> list[SiteRow]:
    """The sites of an ``Admin.Sites`` reply, then those only a job's failures name."""
    rows: dict[str, SiteRow] = {}
    presence = sites.get("presence")
    for site, info in (presence.items() if isinstance(presence, Mapping) else ()):
        if isinstance(info, Mapping):
            rows[str(site)] = SiteRow(str(site), info.get("connected") is True,
                                      _number(info.get("since_s")), "server",
                                      org=_text(info.get("org")),
                                      version=_text(info.get("version")),
                                      policy=describe_policy(info.get("policy")),
                                      last_message_age_s=_number(info.get("last_message_age_s")))
    for site in _list(sites.get("connected")):
        if str(site) not in rows:
            rows[str(site)] = SiteRow(str(site), True, None, "server")
    for job in jobs:
        for site in _list(job.get("failed_sites")):
            if str(site) not in rows:
                rows[str(site)] = SiteRow(str(site), False, None, f"failed in {job.get('job_id')}")
    return sorted(rows.values(), key=lambda r: (not r.connected, r.site_id))


def job_sites(job: Mapping[str, object], rounds: Sequence[Mapping[str, object]]) -> list[str]:
    """The sites the caller may see that took part in the job: trained, evaluated or failed."""
    names: set[str] = set()
    for record in rounds:
        for key in ("trained_sites", "site_eval", "site_train"):
            names.update(str(s) for s in _list(record.get(key)))
    names.update(str(s) for s in _list(job.get("failed_sites")))
    return sorted(names)


def when(seconds: object) -> str:
    """A Unix time as UTC text for a page, or "-"."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def ago(seconds: object) -> str:
    """An age in seconds for people: "12 s ago", "3 min ago", "2.0 h ago"; "-" if unknown."""
    value = _number(seconds)
    if value is None or value < 0:
        return "-"
    if value < 120:
        return f"{value:.0f} s ago"
    if value < 7200:
        return f"{value / 60:.0f} min ago"
    return f"{value / 3600:.1f} h ago"


def size(size_bytes: object) -> str:
    """Bytes for people, in decimal units: "3.5 MB"."""
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int | float):
        return "-"
    value = float(size_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError  # the loop returns at GB


def duration(rounds: Sequence[Mapping[str, object]]) -> float:
    """Seconds the job's rounds took, summed (the admin API gives no start or end time)."""
    total = 0.0
    for record in rounds:
        value = record.get("duration_s")
        if isinstance(value, int | float) and not isinstance(value, bool):
            total += float(value)
    return total
