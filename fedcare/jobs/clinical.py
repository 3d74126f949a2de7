"""Built-in clinical analytics jobs: exact regression, Kaplan-Meier, cohort statistics.

Each job is statistics tasks only (no training): the site half, :class:`ClinicalSite`, reads
the site's table (:mod:`fedcare.jobs.clinical_data`) and answers every task with sums over its
rows; the server half is a workflow of :mod:`fedcare.analytics`. They run in the simulator
(``fedcare stats ...``) and on a real federation, unchanged: the three entry points are built
in (a site's code policy allows them unless it sets ``builtin_jobs: false``)::

    fedcare simulate fedcare.jobs.clinical:regression_job --param dataset=tcga_brca \
        --param model=cox --param outcome=event --param time=time \
        --param 'covariates=[age_at_index, race_white]'
    fedcare admin KIT submit fedcare.jobs.clinical:cohort_job --param dataset=csv:cohort.csv \
        --param 'columns=[age, bmi]' --param group=sex
    fedcare admin KIT stats JOB_ID --out results/
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcare.algorithms.fedavg import FedAvg
from fedcare.analytics import cohort, performance, regression, survival
from fedcare.analytics.newton import NewtonFit, RegressionSpec
from fedcare.analytics.table import DataError, SiteTable
from fedcare.core.errors import ConfigError
from fedcare.core.job import Job
from fedcare.core.message import Config, EvalResult, StatsResult, TrainResult
from fedcare.core.trainer import SiteContext
from fedcare.core.weights import Weights
from fedcare.datasets.heart import HOSPITALS
from fedcare.datasets.tcga_brca import CENTERS
from fedcare.jobs.clinical_data import load_table

#: The sites of the shipped data sets (a CSV data set has the federation's own).
SITES = {"heart": HOSPITALS, "tcga_brca": CENTERS}


class ClinicalSite:
    """One site's table; answers the statistics tasks of the clinical jobs only."""

    def __init__(self, table: SiteTable) -> None:
        self.table = table

    def statistics(self, config: Config, model: Mapping[str, np.ndarray] | None = None
                   ) -> StatsResult:
        name = config.get("name")
        if name == regression.MOMENTS:
            return regression.regression_moments(self.table, config)
        if name == regression.SETUP:
            return regression.regression_setup(self.table, config, model)
        if name in (regression.LOGISTIC, regression.COX):
            return regression.step_sums(self.table, config, model)
        if name == performance.TASK:
            if model is None:
                raise DataError(f"site {self.table.site_id}: scoring needs the coefficients")
            return performance.site_performance(self.table, config, model)
        if name == survival.TASK:
            return survival.site_counts(self.table, config, model)
        if name == cohort.TASK:
            return cohort.site_summary(self.table, config, model)
        raise DataError(f"site {self.table.site_id}: unknown analysis {name!r}")

    def train(self, weights: Weights, config: Config) -> TrainResult:
        raise NotImplementedError("an analytics job does not train")

    def evaluate(self, weights: Weights, config: Config) -> EvalResult:
        raise NotImplementedError("an analytics job does not evaluate")


def make_site(context: SiteContext, dataset: str) -> ClinicalSite:
    """The site half, built at the site from its own data (``module:function`` reference)."""
    return ClinicalSite(load_table(dataset, context.site_id, context.data_dir))


def _names(value: str | list[str] | tuple[str, ...] | None, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{what}: column names, got {value!r}")
    return tuple(names)


def _job(name: str, dataset: str, workflow: NewtonFit | survival.KaplanMeier
         | cohort.CohortStatistics, sites: tuple[str, ...] | list[str] | None) -> Job:
    if not isinstance(dataset, str) or not dataset:
        raise ConfigError(f"{name}: dataset must be heart, tcga_brca or csv:FILE")
    site_ids = tuple(sites) if sites else SITES.get(dataset)
    return Job(name=name, initial_weights=lambda: Weights({}),
               trainer="fedcare.jobs.clinical:make_site", trainer_params={"dataset": dataset},
               strategy=FedAvg(), num_rounds=0, site_ids=site_ids,
               min_sites=len(site_ids) if site_ids else 1, workflows=(workflow,))


def regression_job(*, dataset: str, model: str, outcome: str,
                   covariates: str | list[str], time: str | None = None,
                   stratified: bool = False, impute: bool = False,
                   missing_indicators: bool = False, standardise: bool = False,
                   sites: list[str] | None = None) -> Job:
    """Logistic or Cox regression, fitted exactly across the sites (result ``regression``);
    optionally with federated mean imputation, missing indicators and standardisation."""
    spec = RegressionSpec(model, outcome, _names(covariates, "covariates"), time,
                          bool(stratified), impute=bool(impute),
                          missing_indicators=bool(missing_indicators),
                          standardise=bool(standardise))
    return _job("regression", dataset, NewtonFit(spec), sites)


def kaplan_meier_job(*, dataset: str, event: str, time: str, group: str | None = None,
                     sites: list[str] | None = None) -> Job:
    """Kaplan-Meier curves (by ``group``) and the log-rank test (result ``kaplan_meier``)."""
    return _job("kaplan-meier", dataset, survival.KaplanMeier(event, time, group), sites)


def cohort_job(*, dataset: str, columns: str | list[str], group: str | None = None,
               bins: int = 20, sites: list[str] | None = None,
               ranges: Mapping[str, list[float]] | None = None) -> Job:
    """Per-site and overall counts, missing values, means, sds, histograms and quantiles of
    ``columns`` (by ``group``): result ``cohort``."""
    return _job("cohort", dataset, cohort.CohortStatistics(
        _names(columns, "columns"), group, bins, dict(ranges or {})), sites)


__all__ = ["ClinicalSite", "cohort_job", "kaplan_meier_job", "make_site", "regression_job"]
