"""The site half of exact federated regression: additive sums at the current coefficients.

Newton-Raphson needs, at each step, the log-likelihood, its gradient and its Hessian. For
logistic regression and for a Cox model stratified by site, each is a sum over sites of the
same quantity on the site's own rows, so the server's sum equals the pooled value exactly. A
Cox model with one baseline hazard for all sites couples the sites through the risk sets; there
each site sends, at every event time of the federation, the sums over its patients still at
risk (WebDISCO, Lu et al. 2015), and the server builds the pooled likelihood from those.

What leaves a site, per Newton step of ``p`` covariates:

- logistic, stratified Cox: ``1 + p + p*p`` numbers (log-likelihood, gradient, Hessian);
- pooled Cox: for each of the federation's ``m`` distinct event times, ``1 + p + p*p`` risk-set
  sums, plus its event counts per time and the sum of its events' covariates; and once, before
  the first step, the site's distinct event times (days). At a late time a risk set can hold one
  patient, whose covariates its sums then reveal: prefer the stratified model, or a site
  ``min_rows`` policy, where that matters. Its size grows as ``m * p * p`` (1,088 patients,
  146 event times and 7 covariates: about 8,500 numbers a site and step); with thousands of event
  times and dozens of covariates, the stratified model is also the one that scales.

Rows with a missing value in any column the model uses are left out (complete cases), at
every site alike, so the pooled reference is the complete-case fit on pooled rows; unless the
task carries a federated :class:`~fedcare.analytics.preprocess.Preprocessing` (mean
imputation, missing indicators, standardisation), which every site applies alike: then only
rows missing the outcome (or time) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcare.analytics.preprocess import Preprocessing, column_moments
from fedcare.analytics.table import DataError, SiteTable, names_of
from fedcare.core.message import Config, StatsResult
from fedcare.core.weights import Weights

#: Task names of the regression passes (``config["name"]``).
SETUP, LOGISTIC, COX = "regression_setup", "logistic_step", "cox_step"
MOMENTS = "regression_moments"


def model_rows(table: SiteTable, config: Config,
               model: Mapping[str, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(x, outcome, time)`` of the rows used: ``x`` the covariates (preprocessed when the
    task carries a preprocessing), ``outcome`` the 0/1 label (logistic) or event indicator
    (Cox), ``time`` the follow-up (Cox) or None."""
    covariates = names_of(config["covariates"], "covariates")
    outcome_name = str(config["outcome"])
    time_name = str(config.get("time", "")) or None
    x = table.matrix(covariates)
    outcome = table.column(outcome_name)
    time = table.column(time_name) if time_name else None
    prep = Preprocessing.from_model(model) if model is not None else None
    keep = ~np.isnan(outcome)
    if prep is None or np.isnan(prep.impute_mean).any():  # no imputation: complete cases
        keep &= ~np.isnan(x).any(axis=1)
    if time is not None:
        keep &= ~np.isnan(time)
    bad = np.setdiff1d(np.unique(outcome[keep]), [0.0, 1.0])
    if bad.size:
        raise DataError(f"site {table.site_id}: column {outcome_name!r} must be 0/1, has "
                        f"{bad[:5].tolist()}")
    if time is not None and (time[keep] < 0).any():
        raise DataError(f"site {table.site_id}: column {time_name!r} has negative times")
    x = x[keep] if prep is None else prep.apply(x[keep])
    return x, outcome[keep], None if time is None else time[keep]


def regression_moments(table: SiteTable, config: Config) -> StatsResult:
    """Per covariate, the sums of a federated preprocessing (present values, their sum and
    sum of squares, missing values) over the rows with an outcome (and time)."""
    covariates = names_of(config["covariates"], "covariates")
    keep = ~np.isnan(table.column(str(config["outcome"])))
    if config.get("time"):
        keep &= ~np.isnan(table.column(str(config["time"])))
    return StatsResult(Weights(column_moments(table.matrix(covariates)[keep])),
                       int(keep.sum()))


def regression_setup(table: SiteTable, config: Config,
                     model: Mapping[str, np.ndarray] | None = None) -> StatsResult:
    """Counts and column sums of the rows used (the server centres Cox covariates on the
    federation's means), and for a pooled Cox model this site's distinct event times."""
    x, outcome, time = model_rows(table, config, model)
    values = {"rows": np.array([len(x)], np.float64), "events": np.array([outcome.sum()]),
              "sum": x.sum(axis=0)}
    if time is not None and not bool(config.get("stratified", False)):
        values["event_times"] = np.unique(time[outcome == 1])
    return StatsResult(Weights(values), len(x))


def logistic_step(x: np.ndarray, y: np.ndarray, beta: np.ndarray) -> dict[str, np.ndarray]:
    """Log-likelihood, gradient and Hessian of a logistic model with intercept ``beta[0]``."""
    design = np.column_stack([np.ones(len(x)), x])
    eta = design @ beta
    prob = 1.0 / (1.0 + np.exp(-eta))
    loglik = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    weight = prob * (1.0 - prob)
    return {"loglik": np.array([loglik]), "gradient": design.T @ (y - prob),
            "hessian": -(design.T * weight) @ design}


def cox_stratum_step(x: np.ndarray, event: np.ndarray, time: np.ndarray, beta: np.ndarray
                     ) -> dict[str, np.ndarray]:
    """Breslow log partial likelihood, gradient and Hessian over one stratum's own risk sets."""
    sums = risk_set_sums(x, time, beta, np.unique(time[event == 1]))
    d = np.array([event[(time == t)].sum() for t in sums["times"]])
    return cox_from_sums(x[event == 1].sum(axis=0), d, sums["s0"], sums["s1"], sums["s2"], beta)


def risk_set_sums(x: np.ndarray, time: np.ndarray, beta: np.ndarray, times: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """At each of ``times``, sums over the rows still at risk (time >= t) of ``exp(x b)``,
    ``x exp(x b)`` and ``x x' exp(x b)``."""
    risk = np.exp(x @ beta)
    order = np.argsort(-time, kind="stable")
    t_sorted, x_sorted, r_sorted = time[order], x[order], risk[order]
    # cumulative sums from the latest time down; the risk set of t holds every time >= t
    c0 = np.concatenate([[0.0], np.cumsum(r_sorted)])
    c1 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x_sorted * r_sorted[:, None],
                                                               axis=0)])
    outer = x_sorted[:, :, None] * x_sorted[:, None, :] * r_sorted[:, None, None]
    c2 = np.concatenate([np.zeros((1, x.shape[1], x.shape[1])), np.cumsum(outer, axis=0)])
    at_risk = np.searchsorted(-t_sorted, -np.asarray(times, np.float64), side="right")
    return {"times": np.asarray(times, np.float64), "s0": c0[at_risk], "s1": c1[at_risk],
            "s2": c2[at_risk]}


def cox_from_sums(event_x: np.ndarray, d: np.ndarray, s0: np.ndarray, s1: np.ndarray,
                  s2: np.ndarray, beta: np.ndarray) -> dict[str, np.ndarray]:
    """The Breslow log partial likelihood, gradient and Hessian from risk-set sums at the
    event times (``d`` events at each); pure arithmetic, the server's half of pooled Cox."""
    has = d > 0
    d, s0, s1, s2 = d[has], s0[has], s1[has], s2[has]
    mean = s1 / s0[:, None]
    loglik = float(event_x @ beta - np.sum(d * np.log(s0)))
    gradient = event_x - (d[:, None] * mean).sum(axis=0)
    hessian = -np.einsum("j,jab->ab", d, s2 / s0[:, None, None]
                         - mean[:, :, None] * mean[:, None, :])
    return {"loglik": np.array([loglik]), "gradient": gradient, "hessian": hessian}


def step_sums(table: SiteTable, config: Config, model: Mapping[str, np.ndarray] | None
              ) -> StatsResult:
    """One Newton step's sums at the coefficients the task carries (``beta``, and for Cox the
    centre ``offset`` of the covariates; for pooled Cox the federation's ``event_times``)."""
    if model is None or "beta" not in model:
        raise DataError(f"site {table.site_id}: a regression step needs the coefficients")
    x, outcome, time = model_rows(table, config, model)
    beta = np.asarray(model["beta"], np.float64)
    if config["name"] == LOGISTIC:
        if beta.shape != (x.shape[1] + 1,):
            raise DataError(f"site {table.site_id}: {beta.size} coefficients for "
                            f"{x.shape[1]} model columns and an intercept")
        return StatsResult(Weights(logistic_step(x, outcome, beta)), len(x))
    if time is None:
        raise DataError(f"site {table.site_id}: a Cox step needs a time column")
    x = x - np.asarray(model["offset"], np.float64)
    if beta.shape != (x.shape[1],):
        raise DataError(f"site {table.site_id}: {beta.size} coefficients for {x.shape[1]} "
                        "covariates")
    if bool(config.get("stratified", False)):
        return StatsResult(Weights(cox_stratum_step(x, outcome, time, beta)), len(x))
    times = np.asarray(model["event_times"], np.float64)
    sums = risk_set_sums(x, time, beta, times)
    events_at = np.searchsorted(times, time[outcome == 1])
    d = np.bincount(events_at, minlength=len(times)).astype(np.float64)
    return StatsResult(Weights({"event_x": x[outcome == 1].sum(axis=0), "d": d,
                                "s0": sums["s0"], "s1": sums["s1"], "s2": sums["s2"]}),
                       len(x))
