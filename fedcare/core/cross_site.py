"""The cross-site validation matrix: models as rows, sites (their held-out data) as columns.

Row ``global`` is the job's final global model; row ``local:<site>`` is that site's local model
(see :class:`fedcare.server.workflows.CrossSiteValidation` for what a local model is). A cell
holds every metric the site's trainer reported for that model on that site's data, or, when it
is empty, the reason (the site refused or failed the task, never sent its model, was not
connected). Site ids cannot contain ``:`` (:func:`fedcare.core.ids.site_id_problem`), so a
site called ``global`` never collides with the global model's row.

The matrix travels and is stored as a JSON document (:meth:`CrossSiteMatrix.to_dict`); this
module reads it back, checks it, and renders it as CSV text. It does no I/O.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: The name the matrix is saved under with a run (``cross_site.json``) and asked for by.
RESULT = "cross_site"
#: The global model's row.
GLOBAL = "global"
_LOCAL = "local:"


def local_model(site_id: str) -> str:
    """The row of ``site_id``'s local model."""
    return f"{_LOCAL}{site_id}"


def owner(model: str) -> str | None:
    """The site whose local model ``model`` is, or None for the global model."""
    return model[len(_LOCAL):] if model.startswith(_LOCAL) else None


@dataclass(frozen=True)
class Cell:
    """One model evaluated on one site's data: its metrics, or ``error`` (why it is empty)."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    num_samples: int = 0
    error: str | None = None

    @property
    def empty(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class CrossSiteMatrix:
    """Every model of ``models`` evaluated at every site of ``sites`` after ``round_num``.

    Every (model, site) pair has a cell; a pair that was never filled reads as an empty cell
    saying so.
    """

    job_id: str
    round_num: int
    models: tuple[str, ...]
    sites: tuple[str, ...]
    cells: Mapping[tuple[str, str], Cell] = field(default_factory=dict)

    def cell(self, model: str, site: str) -> Cell:
        return self.cells.get((model, site)) or Cell(error="not evaluated")

    @property
    def metric_names(self) -> list[str]:
        """Every metric of any cell, in order of first appearance (row by row)."""
        names: dict[str, None] = {}
        for model in self.models:
            for site in self.sites:
                names.update(dict.fromkeys(self.cell(model, site).metrics))
        return list(names)

    def value(self, model: str, site: str, metric: str) -> float | None:
        """The cell's ``metric``, or None when the cell is empty or lacks it."""
        return self.cell(model, site).metrics.get(metric)

    def restricted(self, visible: Callable[[str, str], bool],
                   reason: Callable[[str], str] = lambda error: error) -> CrossSiteMatrix:
        """Only the rows and columns with a visible cell, and only those cells; ``reason``
        rewrites each kept empty cell's reason (to hide names in it)."""
        keep = {(m, s) for m in self.models for s in self.sites if visible(m, s)}
        cells = {}
        for key in keep:
            cell = self.cell(*key)
            cells[key] = (Cell(error=reason(cell.error)) if cell.error is not None else cell)
        return CrossSiteMatrix(
            self.job_id, self.round_num, tuple(m for m in self.models if any(
                (m, s) in keep for s in self.sites)),
            tuple(s for s in self.sites if any((m, s) in keep for m in self.models)), cells)

    def to_dict(self) -> dict[str, object]:
        """The JSON document: ``cells[model][site]`` is ``{num_samples, metrics}`` or
        ``{error}``."""
        cells: dict[str, dict[str, dict[str, object]]] = {}
        for model in self.models:
            row = cells.setdefault(model, {})
            for site in self.sites:
                cell = self.cell(model, site)
                row[site] = ({"error": cell.error} if cell.error is not None else
                             {"num_samples": cell.num_samples, "metrics": dict(cell.metrics)})
        return {"job_id": self.job_id, "round_num": self.round_num,
                "models": list(self.models), "sites": list(self.sites), "cells": cells}

    @classmethod
    def from_dict(cls, data: object) -> CrossSiteMatrix:
        """The matrix of a document written by :meth:`to_dict`.

        Raises:
            ValueError: naming the field that is missing or of the wrong type.
        """
        doc = _mapping(data, "the document")
        models = _names(doc.get("models"), "models")
        sites = _names(doc.get("sites"), "sites")
        round_num = doc.get("round_num")
        if isinstance(round_num, bool) or not isinstance(round_num, int):
            raise ValueError(f"round_num must be an integer, got {round_num!r}")
        job_id = doc.get("job_id")
        if not isinstance(job_id, str):
            raise ValueError(f"job_id must be a string, got {job_id!r}")
        rows = _mapping(doc.get("cells", {}), "cells")
        cells: dict[tuple[str, str], Cell] = {}
        for model in models:
            row = _mapping(rows.get(model, {}), f"cells[{model!r}]")
            for site in sites:
                if site in row:
                    cells[(model, site)] = _cell(row[site], f"cells[{model!r}][{site!r}]")
        return cls(job_id, round_num, models, sites, cells)

    def to_csv(self) -> str:
        """One line per cell: ``model, site, num_samples``, every metric (empty where the
        cell lacks it), ``error`` (empty for a filled cell)."""
        metrics = self.metric_names
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["model", "site", "num_samples", *metrics, "error"])
        for model in self.models:
            for site in self.sites:
                cell = self.cell(model, site)
                values = [repr(float(cell.metrics[m])) if m in cell.metrics else ""
                          for m in metrics]
                writer.writerow([model, site, "" if cell.empty else cell.num_samples, *values,
                                 cell.error or ""])
        return out.getvalue()


def _mapping(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _names(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{what} has duplicates: {value}")
    return tuple(value)


def _cell(value: object, what: str) -> Cell:
    doc = _mapping(value, what)
    error = doc.get("error")
    if error is not None:
        if not isinstance(error, str):
            raise ValueError(f"{what}.error must be a string, got {error!r}")
        return Cell(error=error)
    samples = doc.get("num_samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"{what}.num_samples must be an integer >= 0, got {samples!r}")
    metrics: dict[str, float] = {}
    for name, metric in _mapping(doc.get("metrics", {}), f"{what}.metrics").items():
        if (isinstance(metric, bool) or not isinstance(metric, int | float)
                or not math.isfinite(metric)):
            raise ValueError(f"{what}.metrics[{name!r}] must be a finite number, got {metric!r}")
        metrics[name] = float(metric)
    return Cell(metrics, samples)
