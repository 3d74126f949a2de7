"""A cohort table, federated: per site and overall, per column and group, with suppression.

Two passes of per-(group, column) sums:

1. present and missing counts, sums and sums of squares: per-site means and sds, and the
   overall means;
2. sums of squared deviations about the overall means (the overall sd, exact, as
   :class:`fedcare.analytics.Variance`) and histograms over a range per column (given, or the
   overall mean +- 4 sd), with an underflow and an overflow bin.

Quantiles (quartiles) come from the summed histograms by linear interpolation within a bin:
each is within one bin width, ``(high - low) / bins``, of the pooled sample quantile, and a
quantile that falls in the underflow or overflow bin is not given.

Suppression happens at the site, before anything leaves it (the site's ``min_rows``): a group
with fewer rows is not reported at all, a column of a group with fewer present values sends
nothing for that cell, and a histogram bin with fewer values is sent as 0 (its count then is
missing from the quantiles), with the next smallest bins too where the bins sent as 0 hold
fewer than ``min_rows`` values in all (else the cell's count minus the bins sent reveals them).
The overall values are the sums of what the sites reported, so
no difference of totals reveals a suppressed cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedcare.analytics.gather import gather_all, summed
from fedcare.analytics.survival import site_min_rows
from fedcare.analytics.table import DataError, SiteTable, group_label, join_names, names_of
from fedcare.core.errors import AggregationError, ConfigError
from fedcare.core.message import Config, StatsResult
from fedcare.core.weights import Weights
from fedcare.core.workflow import Workflow, WorkflowContext

TASK = "cohort"
QUANTILES = (0.25, 0.5, 0.75)
_SUMS = ("count", "missing", "sum", "sum_sq")


def _grouped(table: SiteTable, config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                       int]:
    x = table.matrix(names_of(config["columns"], "columns"))
    group_name = str(config.get("group", "") or "")
    group = table.column(group_name) if group_name else np.zeros(len(x))
    keep = ~np.isnan(group)
    x, group = x[keep], group[keep]
    limit = site_min_rows(config)
    codes, counts = np.unique(group, return_counts=True)
    reported = codes[counts >= max(limit, 1)]
    return x, group, reported, limit


def site_summary(table: SiteTable, config: Config,
                 model: Mapping[str, np.ndarray] | None = None) -> StatsResult:
    """Pass 1 without a model, pass 2 with one (``groups``, ``means``, ``lows``, ``highs``):
    see the module docstring. Arrays are ``[groups, columns]`` (histograms ``[groups, columns,
    bins + 2]``); ``groups`` lists the group codes this site reports."""
    x, group, reported, limit = _grouped(table, config)
    present = ~np.isnan(x)
    second = model is not None
    groups = np.asarray(model["groups"] if model is not None else reported, np.float64)
    cells = np.zeros((len(groups), x.shape[1], 4))
    for g, code in enumerate(groups):
        rows = (group == code) if code in reported else np.zeros(len(x), bool)
        ok = present[rows]
        values = np.where(ok, x[rows], 0.0)
        cells[g] = np.stack([ok.sum(0), (~ok).sum(0), values.sum(0), (values**2).sum(0)],
                            axis=1)
    small = (cells[:, :, 0] < limit) & (cells[:, :, 0] + cells[:, :, 1] > 0)
    cells[small] = 0.0
    out: dict[str, np.ndarray] = {"suppressed": small.astype(np.float64)}
    if not second:
        out.update(groups=groups, **{name: cells[:, :, k] for k, name in enumerate(_SUMS)})
        return StatsResult(Weights(out), len(x))
    assert model is not None
    means = np.asarray(model["means"], np.float64)
    lows, highs = np.asarray(model["lows"]), np.asarray(model["highs"])
    bins = int(config["bins"])
    if (means.shape != (len(groups), x.shape[1]) or lows.shape != (x.shape[1],)
            or highs.shape != (x.shape[1],) or not 1 <= bins <= 10_000):
        raise DataError(f"site {table.site_id}: cohort pass 2 model does not fit "
                        f"{x.shape[1]} columns, or bins {bins} is outside 1..10000")
    hist = np.zeros((len(groups), x.shape[1], bins + 2))
    dev = np.zeros((len(groups), x.shape[1]))
    for g, code in enumerate(groups):
        rows = group == code if code in reported else np.zeros(len(x), bool)
        for c in range(x.shape[1]):
            if small[g, c]:
                continue
            column = x[rows, c]
            column = column[~np.isnan(column)]
            dev[g, c] = ((column - means[g, c]) ** 2).sum() if column.size else 0.0
            edges = np.linspace(lows[c], highs[c], bins + 1)
            inside = np.histogram(column, bins=edges)[0]
            hist[g, c] = [(column < lows[c]).sum(), *inside, (column > highs[c]).sum()]
    sparse = _suppressed_bins(hist, limit)
    out.update(count=cells[:, :, 0], sum=cells[:, :, 2], sum_sq_dev=dev,
               histogram=np.where(sparse, 0.0, hist),
               suppressed_bins=sparse.sum(axis=2).astype(np.float64))
    return StatsResult(Weights(out), len(x))


def _suppressed_bins(hist: np.ndarray, limit: int) -> np.ndarray:
    """The bins not sent: those under ``limit`` values, and then, where those hold fewer than
    ``limit`` in all, the smallest others until they hold at least that (the group's count
    minus the bins sent must not reveal a small bin)."""
    sparse = (hist > 0) & (hist < limit)
    for index in zip(*np.nonzero(sparse.any(axis=-1)), strict=True):
        bins, hidden = hist[index], sparse[index]
        while 0 < bins[hidden].sum() < limit and not hidden[bins > 0].all():
            candidates = np.where(hidden | (bins == 0), np.inf, bins)
            hidden[int(np.argmin(candidates))] = True
    return sparse


def histogram_quantiles(counts: np.ndarray, low: float, high: float,
                        quantiles: tuple[float, ...] = QUANTILES) -> list[float | None]:
    """Quantiles of the values behind ``counts`` (underflow, ``bins`` equal bins over [low,
    high], overflow), each within one bin width of the sample quantile; None in the
    underflow or overflow bin, or without counts."""
    total = counts.sum()
    if total <= 0:
        return [None for _ in quantiles]
    inner = counts[1:-1]
    width = (high - low) / len(inner)
    cumulative = counts[0] + np.concatenate([[0.0], np.cumsum(inner)])
    out: list[float | None] = []
    for q in quantiles:
        target = q * total
        if target < counts[0] or target > cumulative[-1]:
            out.append(None)
            continue
        b = int(min(np.searchsorted(cumulative, target, side="left"), len(inner)))
        b = max(b, 1)
        share = (target - cumulative[b - 1]) / inner[b - 1] if inner[b - 1] > 0 else 0.0
        out.append(float(low + (b - 1 + share) * width))
    return out


class CohortStatistics(Workflow):
    """The cohort table of ``columns`` by ``group``; result ``cohort``.

    Args:
        ranges: Histogram range per column (``[low, high]``); other columns get the overall
            mean +- 4 sd.
    """

    name = "cohort"
    task_kinds = ("statistics",)

    def __init__(self, columns: tuple[str, ...], group: str | None = None, bins: int = 20,
                 ranges: dict[str, list[float]] | None = None) -> None:
        if not columns:
            raise ConfigError("a cohort table needs at least one column")
        if not isinstance(bins, int) or not 1 <= bins <= 1000:
            raise ConfigError(f"bins must be an integer in 1..1000, got {bins!r}")
        self.columns, self.group, self.bins = tuple(columns), group, bins
        self.ranges = dict(ranges or {})
        unknown = sorted(set(self.ranges) - set(self.columns))
        if unknown:
            raise ConfigError(f"ranges for columns not in the table: {unknown}")
        self.config: Config = {"name": TASK, "columns": join_names(self.columns, "columns"),
                               "group": self.group or ""}

    def run(self, ctx: WorkflowContext, weights: Weights) -> Weights:
        first = gather_all(ctx, 0, self.config, None, None, "cohort counts")
        sites = sorted(first)
        groups = np.unique(np.concatenate([r.values["groups"] for r in first.values()]))
        if groups.size == 0:
            raise AggregationError("cohort: no site reports any group (all below their "
                                   "min_rows?)", job_id=ctx.job_id)
        shape = (len(groups), len(self.columns))
        site_sums = {s: {k: np.zeros(shape) for k in (*_SUMS, "suppressed")} for s in first}
        for s, reply in first.items():
            at = np.searchsorted(groups, reply.values["groups"])
            for k in (*_SUMS, "suppressed"):
                site_sums[s][k][at] = reply.values[k]
        total = {k: np.sum([v[k] for v in site_sums.values()], axis=0) for k in _SUMS}
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.where(total["count"] > 0, total["sum"] / total["count"], 0.0)
            rough = np.sqrt(np.maximum(total["sum_sq"] / total["count"] - means**2, 0.0))
        lows, highs = self._ranges(means, rough, total["count"])
        model = Weights({"groups": groups, "means": means, "lows": lows, "highs": highs})
        second = gather_all(ctx, 1, {**self.config, "bins": self.bins}, model, sites,
                            "cohort histograms")
        dev, hist = summed(second, "sum_sq_dev"), summed(second, "histogram")
        suppressed_bins = {s: int(r.values["suppressed_bins"].sum()) for s, r in second.items()}
        with np.errstate(divide="ignore", invalid="ignore"):
            sd = np.sqrt(np.where(total["count"] > 1, dev / (total["count"] - 1), np.nan))
        labels = [group_label(self.group, g) for g in groups]
        cells = []
        for g, label in enumerate(labels):
            for c, column in enumerate(self.columns):
                row: dict[str, object] = {
                    "group": label, "column": column, "site": "all",
                    "count": float(total["count"][g, c]),
                    "missing": float(total["missing"][g, c]),
                    "mean": _num(means[g, c], total["count"][g, c] > 0), "sd": _num(sd[g, c]),
                    "quantiles": dict(zip(("q25", "median", "q75"), histogram_quantiles(
                        hist[g, c], lows[c], highs[c]), strict=True)),
                    "histogram": hist[g, c].tolist(), "low": lows[c], "high": highs[c],
                    "quantile_error_bound": (highs[c] - lows[c]) / self.bins}
                cells.append(row)
                for s in sites:
                    v = site_sums[s]
                    n = v["count"][g, c]
                    mean = v["sum"][g, c] / n if n > 0 else math.nan
                    var = (v["sum_sq"][g, c] - n * mean**2) / (n - 1) if n > 1 else math.nan
                    cells.append({"group": label, "column": column, "site": s, "count": n,
                                  "missing": float(v["missing"][g, c]), "mean": _num(mean),
                                  "sd": _num(math.sqrt(max(var, 0.0)) if n > 1 else math.nan),
                                  "suppressed": bool(v["suppressed"][g, c])})
        ctx.save_result("cohort", {"columns": list(self.columns), "group": self.group,
                                   "groups": labels, "sites": sites, "bins": self.bins,
                                   "cells": cells, "suppressed_bins": suppressed_bins})
        return weights

    def _ranges(self, means: np.ndarray, sd: np.ndarray, count: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        lows, highs = np.zeros(len(self.columns)), np.zeros(len(self.columns))
        with np.errstate(invalid="ignore", divide="ignore"):
            overall_mean = (means * count).sum(0) / np.maximum(count.sum(0), 1)
            overall_sd = np.nanmax(np.where(count > 0, sd, np.nan), axis=0)
        for c, column in enumerate(self.columns):
            if column in self.ranges:
                low, high = (float(v) for v in self.ranges[column])
            else:
                spread = 4.0 * (overall_sd[c] if np.isfinite(overall_sd[c]) else 0.0)
                low, high = overall_mean[c] - spread, overall_mean[c] + spread
            if not low < high:
                low, high = low - 0.5, high + 0.5  # a constant column
            lows[c], highs[c] = low, high
        return lows, highs


def _num(value: float, ok: bool = True) -> float | None:
    return float(value) if ok and math.isfinite(float(value)) else None

