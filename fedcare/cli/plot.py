"""PNGs of a run (matplotlib, headless): learning curves, the cross-site validation heatmap."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fedcare.core.cross_site import CrossSiteMatrix
from fedcare.server.history import History

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("fedcare")

PREFERRED_METRIC = "accuracy"


def eval_metric_names(history: History) -> list[str]:
    """Every evaluation metric the history has, global or per site, in order of appearance."""
    names: dict[str, None] = {}
    for r in history.rounds:
        names.update(dict.fromkeys(r.eval_metrics))
        for ev in r.site_eval.values():
            names.update(dict.fromkeys(ev.metrics))
    return list(names)


def choose_metric(history: History) -> str | None:
    """``accuracy`` if the history has it, else its first evaluation metric; None if none."""
    names = eval_metric_names(history)
    if PREFERRED_METRIC in names:
        return PREFERRED_METRIC
    return names[0] if names else None


def learning_curve_figure(history: History, *, metric: str | None = None,
                          title: str = "") -> Figure | None:
    """The learning-curve figure of ``metric`` (default: :func:`choose_metric`).

    None when the history has no value of that metric (e.g. a job that never evaluates).
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    metric = metric or choose_metric(history)
    if metric is None or metric not in eval_metric_names(history):
        return None
    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.subplots()
    sites = sorted({s for r in history.rounds for s in r.site_eval})
    for site_id in sites:
        points = history.metric(metric, site_id=site_id)
        if points:
            ax.plot(*zip(*points, strict=True), lw=1, alpha=0.7, label=site_id)
    points = history.metric(metric)
    if points:
        ax.plot(*zip(*points, strict=True), lw=2.5, color="black", label="all sites (weighted)")
    ax.set_xlabel("round (0 = initial model)")
    ax.set_ylabel(f"evaluation {metric} (held-out test data)")
    ax.set_title(title or f"federated evaluation: {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def learning_curve(history: History, path: Path, *, metric: str | None = None,
                   title: str = "") -> Path | None:
    """Write the global (sample-weighted) and per-site evaluation ``metric`` against the round.

    ``metric`` defaults to ``accuracy`` if the history has it, else its first evaluation metric.
    Returns ``path``, or None (and writes nothing) when there is no such metric to plot.
    """
    fig = learning_curve_figure(history, metric=metric, title=title)
    if fig is None:
        wanted = f"no evaluation metric {metric!r}" if metric else "no evaluation metric"
        log.warning("%s in the run's history: no learning curve written to %s", wanted, path)
        return None
    fig.savefig(path)
    return path


def cross_site_figure(matrix: CrossSiteMatrix, metric: str, *, title: str = "") -> Figure:
    """The heatmap of ``metric``: models as rows, sites as columns, each cell's value written
    in it; an empty cell (or one without the metric) is grey and reads "n/a"."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    values = np.array([[np.nan if (v := matrix.value(m, s, metric)) is None else v
                        for s in matrix.sites] for m in matrix.models], dtype=float).reshape(
        len(matrix.models), len(matrix.sites))
    fig = Figure(figsize=(1.6 + 1.3 * max(len(matrix.sites), 1),
                          1.4 + 0.55 * max(len(matrix.models), 1)), dpi=120)
    ax = fig.subplots()
    shown = np.ma.masked_invalid(values)
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(shown, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(matrix.sites)), list(matrix.sites), rotation=30, ha="right")
    ax.set_yticks(range(len(matrix.models)), list(matrix.models))
    finite = values[np.isfinite(values)]
    middle = float(finite.mean()) if finite.size else 0.0
    for i in range(len(matrix.models)):
        for j in range(len(matrix.sites)):
            value = values[i, j]
            text = "n/a" if not np.isfinite(value) else f"{value:.3f}"
            colour = "black" if not np.isfinite(value) or value > middle else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xlabel("site (its held-out test data)")
    ax.set_ylabel("model")
    ax.set_title(title or f"cross-site validation: {metric}")
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    return fig
