"""The cross-site validation matrix as heatmap tables: one per metric, models as rows, sites as
columns, each cell shaded by its value relative to the table's lowest and highest.

The document is ``Admin.Result(job, "cross_site")`` as the caller may see it (a site admin
gets only its own cells, a viewer none): an empty cell shows its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedcare.core.cross_site import CrossSiteMatrix


@dataclass(frozen=True)
class HeatCell:
    """``text`` is the value or the reason it is empty; ``shade`` a step 0..9 of the value
    between the table's lowest and highest (a CSS class, as the page allows no inline style),
    None if empty."""

    text: str
    shade: int | None
    title: str


@dataclass(frozen=True)
class Heatmap:
    """``notes``: why each empty cell is empty, numbered as the cells say (``n/a [1]``)."""

    metric: str
    sites: tuple[str, ...]
    rows: tuple[tuple[str, tuple[HeatCell, ...]], ...]
    notes: tuple[str, ...] = ()


def heatmaps(document: Mapping[str, object]) -> list[Heatmap]:
    """One table per metric of the matrix.

    Raises:
        ValueError: the document is not a cross-site matrix.
    """
    matrix = CrossSiteMatrix.from_dict(document)
    tables = []
    for metric in matrix.metric_names:
        values = [v for m in matrix.models for s in matrix.sites
                  if (v := matrix.value(m, s, metric)) is not None]
        low, high = (min(values), max(values)) if values else (0.0, 0.0)
        rows = []
        notes: list[str] = []
        for model in matrix.models:
            cells = []
            for site in matrix.sites:
                value = matrix.value(model, site, metric)
                cell = matrix.cell(model, site)
                if value is None:
                    reason = cell.error or f"no {metric}"
                    if reason not in notes:
                        notes.append(reason)
                    cells.append(HeatCell(f"n/a [{notes.index(reason) + 1}]", None, reason))
                    continue
                shade = round(9 * (value - low) / (high - low)) if high > low else 5
                cells.append(HeatCell(f"{value:.4g}", shade,
                                      f"{model} on {site}: {metric} {value:.6g} "
                                      f"({cell.num_samples} samples)"))
            rows.append((model, tuple(cells)))
        tables.append(Heatmap(metric, matrix.sites, tuple(rows), tuple(notes)))
    return tables
