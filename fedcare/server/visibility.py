"""What each admin role may see of a job: its own organisation's sites, or only aggregates.

A ``project_admin`` sees everything. A ``site_admin:<site>`` sees the aggregates (the global
model's metrics, how many sites trained) and the per-site data of its own site only: its
failures, its evaluation and training metrics, whether it trained; every other site's name in
a free-text field (a job's summary or error) reads "another site". A ``viewer`` sees the
aggregates only, every site's name replaced by "a site". The filters work on the JSON documents
the admin API returns, so a round record keeps its shape (``history.record_from_dict`` still
reads it).

A cross-site validation matrix (:mod:`fedcare.core.cross_site`) follows the same rule: a cell
is per-site data of the site whose data it was evaluated on and, for a local model, of the site
that trained it. A site admin sees only the cells that concern no other site: the global model
and its own local model on its own data; a viewer sees no cell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedcare.core.cross_site import CrossSiteMatrix, owner


@dataclass(frozen=True)
class Scope:
    """Which sites' data one caller may see: all, or only ``own`` (None: none)."""

    all_sites: bool
    own: str | None = None

    def sees(self, site_id: object) -> bool:
        return self.all_sites or (self.own is not None and site_id == self.own)

    @property
    def other(self) -> str:
        """What another site's name reads as for this caller."""
        return "another site" if self.own is not None else "a site"


def scope_of(role: str | None) -> Scope:
    """The scope of a certificate role ("project_admin", "site_admin:<site>", "viewer")."""
    role = role or ""
    if role == "project_admin":
        return Scope(all_sites=True)
    if role.startswith("site_admin:") and role.split(":", 1)[1]:
        return Scope(all_sites=False, own=role.split(":", 1)[1])
    return Scope(all_sites=False)


def redact(text: str | None, names: Iterable[str], scope: Scope) -> str | None:
    """``text`` with every name in ``names`` the caller may not see replaced (whole names
    only: "site-1" is not the start of "site-10")."""
    if text is None or scope.all_sites:
        return text
    hidden = sorted({n for n in names if n and not scope.sees(n)}, key=len, reverse=True)
    if not hidden:
        return text
    # a dot ends a name unless a name character follows it ("site-3." ends a sentence)
    pattern = re.compile(r"(?<![\w.-])(?:" + "|".join(map(re.escape, hidden))
                         + r")(?![\w-]|\.[\w-])")
    return pattern.sub(scope.other, text)


def _items(value: object) -> list[object]:
    """A JSON list's items, a JSON object's keys; nothing for anything else."""
    return list(value) if isinstance(value, list | tuple | dict) else []


def _site_of(failure: object) -> object:
    return failure.get("site_id") if isinstance(failure, Mapping) else None


def site_names(job: Mapping[str, object], rounds: Iterable[Mapping[str, object]],
               failures: Iterable[Mapping[str, object]], more: Iterable[str] = ()) -> set[str]:
    """Every site name the server knows in connection with a job (to redact them)."""
    found: list[object] = [*more, *map(_site_of, failures), *_items(job.get("failed_sites"))]
    for record in rounds:
        found += _items(record.get("trained_sites")) + _items(record.get("site_eval"))
        found += _items(record.get("site_train"))
        found += [_site_of(f) for f in _items(record.get("failures"))]
    return {n for n in found if isinstance(n, str)}


def job_view(job: Mapping[str, object], names: Iterable[str], scope: Scope
             ) -> dict[str, object]:
    """A job as ``Status``/``Watch`` show it: other sites' failures out, names redacted."""
    out = dict(job)
    if scope.all_sites:
        return out
    failed = out.get("failed_sites")
    if isinstance(failed, Mapping):
        out["failed_sites"] = {s: info for s, info in failed.items() if scope.sees(s)}
    names = set(names)
    summary = out.get("summary")
    if isinstance(summary, str):  # "finished with 2 of 3 sites; site-2: round 1 train: why"
        out["summary"] = _own_parts(summary, names, scope)
    for key in ("summary", "error"):
        text = out.get(key)
        if isinstance(text, str):
            out[key] = redact(text, names, scope)
    return out


def _own_parts(summary: str, names: set[str], scope: Scope) -> str:
    """A summary without the parts about sites the caller may not see: their failure
    reasons (paths, exception texts) are theirs, not just their names."""
    parts = summary.split("; ")
    kept = [p for p in parts
            if not any(p.startswith(f"{n}: ") and not scope.sees(n) for n in names)]
    hidden = len(parts) - len(kept)
    if hidden:
        kept.append(f"{hidden} other {'site' if hidden == 1 else 'sites'} failed")
    return "; ".join(kept)


def failures_view(failures: Iterable[object], scope: Scope) -> list[object]:
    """The failures of the sites the caller may see."""
    return [f for f in failures if scope.sees(_site_of(f))]


def round_view(record: Mapping[str, object], scope: Scope) -> dict[str, object]:
    """A round record as ``Metrics`` shows it: aggregates, and per-site data of visible sites."""
    out = dict(record)
    if scope.all_sites:
        return out
    out["trained_sites"] = [s for s in _items(record.get("trained_sites")) if scope.sees(s)]
    for key in ("site_eval", "site_train"):  # each site's own numbers
        per_site = record.get(key)
        out[key] = ({s: e for s, e in per_site.items() if scope.sees(s)}
                    if isinstance(per_site, Mapping) else {})
    out["failures"] = failures_view(_items(record.get("failures")), scope)
    return out


def cross_site_view(document: Mapping[str, object], scope: Scope) -> dict[str, object]:
    """A cross-site matrix document with only the cells the caller may see (see above).

    Raises:
        ValueError: the document is not a cross-site matrix.
    """
    matrix = CrossSiteMatrix.from_dict(document)
    if scope.all_sites:
        return matrix.to_dict()
    names = {*matrix.sites, *(o for m in matrix.models if (o := owner(m)) is not None)}

    def visible(model: str, site: str) -> bool:
        trained_by = owner(model)
        return scope.sees(site) and (trained_by is None or scope.sees(trained_by))

    view = matrix.restricted(visible, lambda error: redact(error, names, scope) or "")
    return view.to_dict()
