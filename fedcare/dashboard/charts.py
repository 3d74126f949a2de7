"""Learning curves of a job as inline SVG: one chart per metric, a line for the global model and
one per site, from the round records ``Admin.Metrics`` returns (already filtered by role).

Pure functions: the page template draws what :func:`learning_curves` computes, so the browser
needs no chart library, and nothing comes from a CDN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 480, 240
#: Plot area inside the SVG: left, top, right, bottom margins in SVG units.
LEFT, TOP, RIGHT, BOTTOM = 56, 12, 12, 32
GLOBAL = "global"
#: Up to this many rounds, each point of a line is also marked.
MAX_DOTS = 30


@dataclass(frozen=True)
class Series:
    """One line: ``points`` are (round_num, value) in round order; ``path`` is in SVG units,
    ``dots`` too: a marker per point while there are few (a one-round line is a dot)."""

    label: str
    points: tuple[tuple[int, float], ...]
    path: str
    color_index: int
    dots: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Chart:
    """One metric over the rounds, its axes' ticks as (SVG coordinate, label)."""

    title: str
    series: tuple[Series, ...]
    x_ticks: tuple[tuple[float, str], ...]
    y_ticks: tuple[tuple[float, str], ...]
    width: int = WIDTH
    height: int = HEIGHT


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _collect(rounds: Sequence[Mapping[str, object]], aggregate: str, per_site: str
             ) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """metric -> line label -> points, from one aggregate field and its per-site field."""
    found: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for record in rounds:
        round_num = record.get("round_num")
        if not isinstance(round_num, int):
            continue
        metrics = record.get(aggregate)
        for name, value in (metrics.items() if isinstance(metrics, Mapping) else ()):
            if (number := _number(value)) is not None:
                found.setdefault(str(name), {}).setdefault(GLOBAL, []).append((round_num, number))
        sites = record.get(per_site)
        for site, entry in (sites.items() if isinstance(sites, Mapping) else ()):
            site_metrics = entry.get("metrics") if isinstance(entry, Mapping) else None
            for name, value in (site_metrics.items()
                                if isinstance(site_metrics, Mapping) else ()):
                if (number := _number(value)) is not None:
                    lines = found.setdefault(str(name), {})
                    lines.setdefault(str(site), []).append((round_num, number))
    return found


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high == low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def _label(value: float) -> str:
    return f"{value:.3g}"


def chart(title: str, lines: Mapping[str, Sequence[tuple[int, float]]],
          labels: Sequence[str]) -> Chart:
    """A chart of ``lines``; ``labels`` orders the legend and fixes each line's color."""
    points = [p for line in lines.values() for p in line]
    x_low = min(x for x, _ in points)
    x_high = max(x for x, _ in points)
    y_low = min(y for _, y in points)
    y_high = max(y for _, y in points)
    if y_high == y_low:  # a flat line sits in the middle
        y_low, y_high = y_low - 1.0, y_high + 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (plot_w * (x - x_low) / (x_high - x_low) if x_high > x_low else plot_w / 2)

    def sy(y: float) -> float:
        return TOP + plot_h * (1 - (y - y_low) / (y_high - y_low))

    series = []
    for label in labels:
        line = sorted(lines.get(label, ()))
        if not line:
            continue
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                        for i, (x, y) in enumerate(line))
        dots = tuple((sx(x), sy(y)) for x, y in line) if len(line) <= MAX_DOTS else ()
        series.append(Series(label, tuple(line), path, labels.index(label), dots))
    rounds = sorted({x for x, _ in points})
    shown = rounds if len(rounds) <= 10 else rounds[:: math.ceil(len(rounds) / 10)]
    return Chart(title, tuple(series), tuple((sx(r), str(r)) for r in shown),
                 tuple((sy(v), _label(v)) for v in _ticks(y_low, y_high)))


def learning_curves(rounds: Sequence[Mapping[str, object]]) -> list[Chart]:
    """A chart per evaluation metric, then per training metric, each with a global line and
    a line per site the caller may see; metrics in the order they first appear."""
    charts = []
    for kind, aggregate, per_site in (("eval", "eval_metrics", "site_eval"),
                                      ("train", "train_metrics", "site_train")):
        for name, lines in _collect(rounds, aggregate, per_site).items():
            labels = [GLOBAL, *sorted(k for k in lines if k != GLOBAL)]
            charts.append(chart(f"{kind} {name}", lines, labels))
    return charts
