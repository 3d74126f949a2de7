"""Kaplan-Meier curves and the log-rank test, exact across sites.

A Kaplan-Meier curve needs, at each event time, the number of events and the number still at
risk; both are sums over sites. So the federated curve is the pooled curve exactly. Two passes:

1. each site sends its distinct event times (days) and the groups it reports;
2. at every event time of the federation, each site sends per group its events and its
   number at risk; the server sums them, builds each group's curve (Greenwood's variance,
   log-log 95% band as lifelines does) and the log-rank test across groups.

What leaves a site: its event times, and per reported group the event and at-risk counts at
each event time of the federation. A group with fewer rows at a site than the site's
``min_rows`` is not reported by it at all (neither its rows nor its events, so no difference
of totals reveals it); the overall curve of a grouped analysis is over the reported groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedcare.analytics.gather import gather_all, summed
from fedcare.analytics.table import DataError, SiteTable, group_label
from fedcare.core.errors import AggregationError
from fedcare.core.message import Config, StatsResult
from fedcare.core.weights import Weights
from fedcare.core.workflow import Workflow, WorkflowContext

TASK = "kaplan_meier"
Z_95 = 1.959963984540054


def site_min_rows(config: Config) -> int:
    """The minimum count a site applies: its policy's ``min_rows``, which the site's agent
    writes into every statistics task it runs (0: none)."""
    return int(config.get("min_rows", 0) or 0)


def _rows(table: SiteTable, config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    event = table.column(str(config["event"]))
    time = table.column(str(config["time"]))
    group_name = str(config.get("group", "") or "")
    group = table.column(group_name) if group_name else np.zeros(len(time))
    keep = ~(np.isnan(event) | np.isnan(time) | np.isnan(group))
    bad = np.setdiff1d(np.unique(event[keep]), [0.0, 1.0])
    if bad.size:
        raise DataError(f"site {table.site_id}: column {config['event']!r} must be 0/1, has "
                        f"{bad[:5].tolist()}")
    return event[keep], time[keep], group[keep]


def site_counts(table: SiteTable, config: Config, model: Mapping[str, np.ndarray] | None
                ) -> StatsResult:
    """Pass 1 (no model): distinct event times, reported groups and their row counts, and
    how many groups were suppressed. Pass 2 (``times``, ``groups``): ``d`` and ``n``
    ``[groups, times]``."""
    event, time, group = _rows(table, config)
    codes, counts = np.unique(group, return_counts=True)
    limit = site_min_rows(config)
    reported = codes[counts >= max(limit, 1)]
    keep = np.isin(group, reported)
    if model is None:
        return StatsResult(Weights({
            "event_times": np.unique(time[keep & (event == 1)]), "groups": reported,
            "group_rows": counts[counts >= max(limit, 1)].astype(np.float64),
            "suppressed": np.array([float((counts < limit).sum())])}), int(keep.sum()))
    times = np.asarray(model["times"], np.float64)
    groups = np.asarray(model["groups"], np.float64)
    d = np.zeros((len(groups), len(times)))
    n = np.zeros((len(groups), len(times)))
    for g, code in enumerate(groups):
        mine = keep & (group == code)
        t_sorted = np.sort(time[mine])
        n[g] = len(t_sorted) - np.searchsorted(t_sorted, times, side="left")
        events = np.sort(time[mine & (event == 1)])
        d[g] = (np.searchsorted(events, times, side="right")
                - np.searchsorted(events, times, side="left"))
    return StatsResult(Weights({"d": d, "n": n}), int(keep.sum()))


def km_curve(d: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
    """Survival, Greenwood variance and the log-log 95% band after each time (``d`` events of
    ``n`` at risk); times with nobody at risk keep the last value."""
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(n > 0, 1.0 - d / np.where(n > 0, n, 1.0), 1.0)
        survival = np.cumprod(factor)
        terms = np.where((n > d) & (n > 0), d / (n * (n - d)), 0.0)
        greenwood = np.cumsum(terms)
        log_s = np.log(survival)
        v = np.sqrt(greenwood) / np.abs(log_s)
        low = survival ** np.exp(Z_95 * v)
        high = survival ** np.exp(-Z_95 * v)
    band_ok = (survival > 0) & (survival < 1)
    return {"survival": survival, "variance": survival**2 * greenwood,
            "ci_low": np.where(band_ok, low, survival), "ci_high": np.where(band_ok, high,
                                                                           survival)}


def median_time(times: np.ndarray, survival: np.ndarray) -> float | None:
    """The first time the curve reaches 0.5 or below (None if it never does), as lifelines."""
    below = np.flatnonzero(survival <= 0.5)
    return float(times[below[0]]) if below.size else None


def chi2_sf(x: float, df: int) -> float:
    """P(chi-square with ``df`` degrees of freedom > x), closed forms for integer df."""
    if x <= 0:
        return 1.0
    half = x / 2.0
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return math.exp(-half) * total
    root = math.sqrt(x)
    total, term = math.erfc(root / math.sqrt(2.0)), math.sqrt(2.0 / math.pi) * math.exp(-half)
    for r in range(1, (df + 1) // 2):  # adds x^(r - 1/2) / (1 * 3 * ... * (2r - 1))
        term *= root if r == 1 else x / (2 * r - 1)
        total += term
    return min(1.0, total)


def logrank(d: np.ndarray, n: np.ndarray) -> dict[str, float]:
    """The log-rank test of equal hazards across the groups (rows) of ``d`` and ``n``."""
    groups = d.shape[0]
    if groups < 2:
        raise ValueError("the log-rank test needs two groups or more")
    d_all, n_all = d.sum(axis=0), n.sum(axis=0)
    use = n_all > 0
    d, n, d_all, n_all = d[:, use], n[:, use], d_all[use], n_all[use]
    share = n / n_all
    observed_minus_expected = (d - share * d_all).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(n_all > 1, d_all * (n_all - d_all) / (n_all - 1), 0.0)
    covariance = (np.einsum("j,gj->g", scale, share)[:, None] * np.eye(groups)
                  - np.einsum("j,gj,hj->gh", scale, share, share))
    u = observed_minus_expected[:-1]
    chi2 = float(u @ np.linalg.solve(covariance[:-1, :-1], u))
    return {"chi2": chi2, "df": groups - 1, "p": chi2_sf(chi2, groups - 1)}


class KaplanMeier(Workflow):
    """Kaplan-Meier curves of ``time``/``event`` (by ``group``, a numeric column) and the
    log-rank test across groups; result ``kaplan_meier``."""

    name = "kaplan_meier"
    task_kinds = ("statistics",)

    def __init__(self, event: str, time: str, group: str | None = None) -> None:
        self.event, self.time, self.group = event, time, group

    def run(self, ctx: WorkflowContext, weights: Weights) -> Weights:
        config: Config = {"name": TASK, "event": self.event, "time": self.time,
                          "group": self.group or ""}
        first = gather_all(ctx, 0, config, None, None, "kaplan-meier event times")
        sites = sorted(first)
        times = np.unique(np.concatenate([r.values["event_times"] for r in first.values()]))
        groups = np.unique(np.concatenate([r.values["groups"] for r in first.values()]))
        if groups.size == 0:
            raise AggregationError("kaplan-meier: no site reports any group (all below their "
                                   "min_rows?)", job_id=ctx.job_id)
        second = gather_all(ctx, 1, config, Weights({"times": times, "groups": groups}), sites,
                            "kaplan-meier counts")
        d, n = summed(second, "d"), summed(second, "n")
        rows = np.zeros(len(groups))
        for reply in first.values():
            rows[np.searchsorted(groups, reply.values["groups"])] += reply.values["group_rows"]
        curves = [self._curve(group_label(self.group, code), rows[g], times, d[g], n[g])
                  for g, code in enumerate(groups)]
        if len(groups) > 1:
            curves.insert(0, self._curve("all", rows.sum(), times, d.sum(axis=0),
                                         n.sum(axis=0)))
        result: dict[str, object] = {
            "event": self.event, "time": self.time, "group": self.group, "sites": sites,
            "curves": curves,
            "site_rows": {s: {group_label(self.group, c): float(k) for c, k in
                              zip(r.values["groups"], r.values["group_rows"], strict=True)}
                          for s, r in first.items()},
            "suppressed_groups": {s: int(r.values["suppressed"][0]) for s, r in first.items()},
            "logrank": logrank(d, n) if len(groups) > 1 else None}
        ctx.save_result("kaplan_meier", result)
        return weights

    @staticmethod
    def _curve(label: str, rows: float, times: np.ndarray, d: np.ndarray, n: np.ndarray
               ) -> dict[str, object]:
        has = n > 0
        curve = km_curve(d[has], n[has])
        t = times[has]
        return {"group": label, "rows": float(rows),
                "events": float(d.sum()), "median": median_time(t, curve["survival"]),
                "times": t.tolist(), "at_risk": n[has].tolist(), "events_at": d[has].tolist(),
                **{k: v.tolist() for k, v in curve.items()}}

