"""The server half of exact federated regression: Newton-Raphson on summed site results.

Each Newton step is one federated round: every site sends its additive sums at the current
coefficients (:mod:`fedcare.analytics.regression`), the server adds them, which gives the
pooled log-likelihood, gradient and Hessian exactly, and takes the step ``b += I^-1 g`` (``I``
the observed information, minus the Hessian). A step that lowers the log-likelihood is halved.
The fit converges in a handful of rounds, and its standard errors come from the same ``I``, so
the federated fit equals the pooled one to floating-point rounding. One last round scores the
sites' rows with the fit (:mod:`fedcare.analytics.performance`: accuracy and AUC, or the
C-index, from summed counts).

Every site that answered the set-up must answer every step: a step without one of them would
be a different model's, so the job stops naming the missing site.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedcare.analytics import performance
from fedcare.analytics import regression as site_half
from fedcare.analytics.gather import gather_all, summed
from fedcare.analytics.preprocess import Preprocessing
from fedcare.analytics.table import join_names
from fedcare.core.errors import AggregationError, ConfigError
from fedcare.core.message import Config, StatsResult
from fedcare.core.weights import Weights
from fedcare.core.workflow import Workflow, WorkflowContext

#: Two-sided 95% normal quantile.
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class RegressionSpec:
    """What to fit.

    Attributes:
        model: ``logistic`` (with an intercept) or ``cox`` (Breslow ties).
        outcome: The 0/1 label (logistic) or event indicator, 1 = event observed (Cox).
        covariates: The model's columns, present at every site.
        time: Cox: the follow-up time column.
        stratified: Cox: one baseline hazard per site (only per-site gradient and Hessian
            leave a site) instead of one for the federation.
        impute: Replace a missing covariate by the federation's mean of it (a first round
            of per-column sums); otherwise rows missing a covariate are left out.
        missing_indicators: With ``impute``: add a 0/1 column ``NAME_missing`` for each
            covariate missing somewhere in the federation.
        standardise: Centre and scale the covariates by the federation's mean and standard
            deviation; the coefficients are then per standard deviation.
        max_iter: Newton steps at most.
        tolerance: Converged when the log-likelihood changes by less than this (relative)
            and the Newton step is below 1e-6, or the step alone below 1e-9 (relative to the
            largest coefficient).
    """

    model: str
    outcome: str
    covariates: tuple[str, ...]
    time: str | None = None
    stratified: bool = False
    impute: bool = False
    missing_indicators: bool = False
    standardise: bool = False
    max_iter: int = 50
    tolerance: float = 1e-10

    def __post_init__(self) -> None:
        if self.model not in ("logistic", "cox"):
            raise ConfigError(f"regression model must be 'logistic' or 'cox', got "
                              f"{self.model!r}")
        if self.model == "cox" and not self.time:
            raise ConfigError("a Cox model needs a time column")
        if not self.covariates:
            raise ConfigError("a regression needs at least one covariate")
        if len(set(self.covariates)) != len(self.covariates):
            raise ConfigError(f"covariates repeat: {list(self.covariates)}")
        if self.missing_indicators and not self.impute:
            raise ConfigError("missing_indicators needs impute: a row missing a covariate is "
                              "otherwise left out, and its indicator would always be 0")
        object.__setattr__(self, "covariates", tuple(self.covariates))
        join_names(self.covariates, "covariates")

    @property
    def preprocesses(self) -> bool:
        return self.impute or self.standardise

    def names(self, prep: Preprocessing | None = None) -> list[str]:
        """The coefficients' names, in order (with ``prep``'s indicator columns)."""
        columns = prep.names(self.covariates) if prep is not None else list(self.covariates)
        return (["intercept"] if self.model == "logistic" else []) + columns

    def config(self, name: str) -> Config:
        return {"name": name, "covariates": ",".join(self.covariates), "outcome": self.outcome,
                "time": self.time or "", "stratified": self.stratified}


def information_inverse(hessian: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The inverse of the observed information ``-hessian``.

    Raises:
        AggregationError: it is singular, naming the first covariate that is constant or a
            linear combination of those before it.
    """
    info = -hessian
    scale = np.sqrt(np.abs(np.diag(info)))
    scale[scale == 0] = 1.0
    normed = info / scale[:, None] / scale[None, :]
    for j in range(len(names)):
        block = normed[:j + 1, :j + 1]
        if np.linalg.eigvalsh(block).min() <= 1e-10 * max(1.0, float(np.abs(block).max())):
            raise AggregationError(
                f"the information matrix is singular: covariate {names[j]!r} is constant "
                f"across the federation, or a linear combination of "
                f"{list(names[:j]) or 'nothing'} (drop it, or check its coding at the sites)")
    return np.asarray(np.linalg.inv(info))


def wald_table(beta: np.ndarray, covariance: np.ndarray, names: Sequence[str]
               ) -> list[dict[str, float | str]]:
    """Per coefficient: estimate, standard error, z, two-sided p, 95% CI, exp(estimate)."""
    se = np.sqrt(np.diag(covariance))
    rows: list[dict[str, float | str]] = []
    for name, b, s in zip(names, beta, se, strict=True):
        z = float(b / s)
        rows.append({"covariate": name, "coef": float(b), "se": float(s), "z": z,
                     "p": math.erfc(abs(z) / math.sqrt(2.0)), "ci_low": float(b - Z_95 * s),
                     "ci_high": float(b + Z_95 * s), "exp_coef": math.exp(min(float(b), 700.0))})
    return rows


class NewtonFit(Workflow):
    """Fit ``spec`` exactly across the job's sites; result ``regression`` (a JSON document)
    and the model ``beta``, ``se`` (and ``offset``, the covariate centre of a Cox model)."""

    name = "regression"
    task_kinds = ("statistics",)

    def __init__(self, spec: RegressionSpec) -> None:
        self.spec = spec

    def run(self, ctx: WorkflowContext, weights: Weights) -> Weights:
        spec = self.spec
        prep, sites = self._preprocessing(ctx)
        first = 1 if prep is not None else 0
        carried = prep.to_weights() if prep is not None else {}
        setup = gather_all(ctx, first, spec.config(site_half.SETUP),
                           Weights(dict(carried)) if carried else None, sites,
                           "regression set-up")
        sites = sorted(setup)
        names = spec.names(prep)
        rows = sum(float(r.values["rows"][0]) for r in setup.values())
        events = sum(float(r.values["events"][0]) for r in setup.values())
        if rows == 0:
            raise AggregationError("no complete rows at any site", job_id=ctx.job_id)
        fixed: dict[str, np.ndarray] = {}
        if spec.model == "cox":
            fixed["offset"] = summed(setup, "sum") / rows
            if not spec.stratified:
                fixed["event_times"] = np.unique(np.concatenate(
                    [r.values["event_times"] for r in setup.values()]))
        step_name = site_half.LOGISTIC if spec.model == "logistic" else site_half.COX
        beta = np.zeros(len(names))
        previous: tuple[np.ndarray, float] | None = None
        iterations, halvings = 0, 0
        while True:
            iterations += 1
            if iterations > spec.max_iter:
                raise AggregationError(f"{spec.model} fit did not converge in {spec.max_iter} "
                                       "Newton steps (perfect separation, or a covariate "
                                       "with no events on one side?)", job_id=ctx.job_id)
            replies = gather_all(ctx, first + iterations, spec.config(step_name),
                                 Weights({"beta": beta, **fixed, **carried}), sites,
                                 f"regression step {iterations}")
            loglik, gradient, hessian = self._combine(replies, beta)
            if previous is not None and loglik < previous[1] - 1e-12 * abs(previous[1]):
                if halvings >= 30:
                    raise AggregationError("Newton step halving failed", job_id=ctx.job_id)
                beta, halvings = (beta + previous[0]) / 2.0, halvings + 1
                continue
            halvings = 0
            try:
                covariance = information_inverse(hessian, names)
            except AggregationError as exc:
                raise AggregationError(exc.message, job_id=ctx.job_id) from None
            step = covariance @ gradient
            size = float(np.abs(step).max()) / (1.0 + float(np.abs(beta).max()))
            if size <= 1e-9 or (previous is not None and size <= 1e-6 and abs(
                    loglik - previous[1]) <= spec.tolerance * (1.0 + abs(loglik))):
                beta = beta + step  # one last, tiny Newton step: beta is exact to ~size**2
                break
            previous = (beta, loglik)
            beta = beta + step
        scored = gather_all(ctx, first + iterations + 1, spec.config(performance.TASK),
                            Weights({"beta": beta, **carried, **{
                                k: v for k, v in fixed.items() if k == "offset"}}),
                            sites, "regression performance")
        summary = {"model": spec.model, "outcome": spec.outcome, "time": spec.time,
                   "stratified": spec.stratified, "sites": sites,
                   "rows": {s: float(r.values["rows"][0]) for s, r in setup.items()},
                   "events": {s: float(r.values["events"][0]) for s, r in setup.items()},
                   "num_rows": rows, "num_events": events, "iterations": iterations,
                   "rounds": iterations + 2 + first, "loglik": loglik,
                   "performance": performance.summary(scored, spec.model),
                   "preprocessing": None if prep is None else {
                       "impute": spec.impute, "standardise": spec.standardise,
                       "impute_mean": dict(zip(spec.covariates, prep.impute_mean.tolist(),
                                               strict=True)),
                       "scale": dict(zip(spec.covariates, prep.scale.tolist(), strict=True)),
                       "indicators": [n for n, on in zip(spec.covariates, prep.indicator,
                                                         strict=True) if on]},
                   "coefficients": wald_table(beta, covariance, names)}
        ctx.save_result("regression", summary)
        se = np.sqrt(np.diag(covariance))
        return Weights({**weights, "beta": beta, "se": se, **{k: v for k, v in fixed.items()
                                                             if k == "offset"}})

    def _preprocessing(self, ctx: WorkflowContext
                       ) -> tuple[Preprocessing | None, list[str] | None]:
        """The federated preprocessing the spec asks for (a round of per-column sums), and
        the sites that answered it; (None, None) when it asks for none."""
        spec = self.spec
        if not spec.preprocesses:
            return None, None
        replies = gather_all(ctx, 0, spec.config(site_half.MOMENTS), None, None,
                             "regression preprocessing")
        totals = {k: summed(replies, k) for k in ("present", "sum", "sum_sq", "missing")}
        try:
            prep = Preprocessing.from_totals(totals, standardise=spec.standardise,
                                             indicators=spec.missing_indicators)
        except ValueError as exc:
            raise AggregationError(f"covariates {list(spec.covariates)}: {exc}",
                                   job_id=ctx.job_id) from None
        if not spec.impute:  # standardise only: rows missing a covariate are left out
            prep = Preprocessing(np.full_like(prep.centre, np.nan), prep.centre, prep.scale,
                                 prep.indicator)
        return prep, sorted(replies)

    def _combine(self, replies: Mapping[str, StatsResult], beta: np.ndarray
                 ) -> tuple[float, np.ndarray, np.ndarray]:
        if self.spec.model == "cox" and not self.spec.stratified:
            parts = site_half.cox_from_sums(
                summed(replies, "event_x"), summed(replies, "d"), summed(replies, "s0"),
                summed(replies, "s1"), summed(replies, "s2"), beta)
        else:
            parts = {k: summed(replies, k) for k in ("loglik", "gradient", "hessian")}
        return float(parts["loglik"][0]), parts["gradient"], parts["hessian"]
