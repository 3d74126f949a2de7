"""The federation's numbers in Prometheus' text exposition format (version 0.0.4).

Served by the dashboard at ``/metrics``, not by the server: the server speaks only mTLS gRPC,
and a second listener there would be a second door to secure. The dashboard already reads
everything through the admin API with the admin's certificate, so what it exposes is what
that admin may see (a viewer's scrape has no per-site failures and no per-site ages).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from fedcare.dashboard.client import AdminApi, AdminCallError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Job states the server uses; each is exported (as 0 when no job has it).
STATES = ("queued", "running", "finished", "failed", "aborted")


def _label(value: object) -> str:
    text = str(value)
    return text.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


class Exposition:
    """Metric families, written in order: ``# HELP``, ``# TYPE``, then samples."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Sequence[tuple[Mapping[str, object], float]]) -> None:
        self._lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            shown = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            number = repr(float(value)) if math.isfinite(value) else "NaN"
            self._lines.append(f"{name}{{{shown}}} {number}" if shown else f"{name} {number}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _failures(job: Mapping[str, object]) -> int:
    failed = job.get("failed_sites")
    if not isinstance(failed, Mapping):
        return 0
    return sum(_int(info.get("count")) for info in failed.values() if isinstance(info, Mapping))


def exposition(api: AdminApi) -> str:
    """Scrape the admin API once; ``fedcare_up`` is 0 (and nothing else follows) when the
    server does not answer."""
    out = Exposition()
    try:
        jobs = api.status()
        sites = api.sites()
    except AdminCallError:
        out.family("fedcare_up", "gauge", "Whether the federation server answered.", [({}, 0)])
        return out.text()
    out.family("fedcare_up", "gauge", "Whether the federation server answered.", [({}, 1)])
    connected = sites.get("count", len(sites.get("connected") or []))  # type: ignore[arg-type]
    out.family("fedcare_sites_connected", "gauge", "Sites connected to the server now.",
               [({}, float(_int(connected)))])
    for direction, key in (("received", "received_bytes"), ("sent", "sent_bytes")):
        if isinstance(sites.get(key), int):
            out.family(f"fedcare_{direction}_bytes_total", "counter",
                       f"Bytes the server {direction} on the sites' streams since it started.",
                       [({}, float(_int(sites.get(key))))])
    presence = sites.get("presence")
    ages = [({"site": site}, float(info["last_message_age_s"]))
            for site, info in sorted(presence.items() if isinstance(presence, Mapping) else ())
            if isinstance(info, Mapping) and isinstance(info.get("last_message_age_s"), int | float)
            and not isinstance(info.get("last_message_age_s"), bool)]
    if ages:  # only the sites this admin may see, connected now
        out.family("fedcare_site_last_message_age_seconds", "gauge",
                   "Seconds since the last message on a connected site's stream ended (a site "
                   "waiting for tasks sends none).", ages)
    states = Counter(str(j.get("status")) for j in jobs)
    out.family("fedcare_jobs", "gauge", "Jobs the server knows, by state.",
               [({"status": s}, float(states.get(s, 0)))
                for s in [*STATES, *sorted(set(states) - set(STATES))]])
    out.family("fedcare_rounds_completed_total", "counter",
               "Training rounds completed, over all jobs.",
               [({}, float(sum(_int(j.get("round_num")) for j in jobs)))])
    out.family("fedcare_job_rounds_completed", "gauge", "Rounds a job has completed.",
               [({"job_id": j.get("job_id")}, float(_int(j.get("round_num")))) for j in jobs])
    out.family("fedcare_site_failures_total", "counter",
               "Site failures (train, evaluate, absent...) over all jobs, as this admin sees "
               "them.", [({}, float(sum(_failures(j) for j in jobs)))])
    out.family("fedcare_job_site_failures", "gauge", "Site failures of a job so far.",
               [({"job_id": j.get("job_id")}, float(_failures(j))) for j in jobs])
    return out.text()
