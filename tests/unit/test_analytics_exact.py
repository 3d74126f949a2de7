"""Federated clinical analytics equal the pooled ones: logistic and Cox regression against
statsmodels, Kaplan-Meier and the log-rank test against lifelines, on the shipped heart and
TCGA-BRCA data, each federation simulated in-process."""

import numpy as np
import pytest
import statsmodels.api as sm
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.duration.hazard_regression import PHReg

from fedcare.analytics.survival import chi2_sf
from fedcare.datasets.heart import FEATURE_NAMES, HOSPITALS
from fedcare.datasets.tcga_brca import CENTERS
from fedcare.jobs import clinical
from fedcare.jobs.clinical_data import heart_table, tcga_table
from fedcare.sim.simulator import simulate
from fedcare.tabular import c_index_pairs

TCGA_COVARIATES = ["age_at_index", "ajcc_pathologic_stage_Stage IIA",
                   "ajcc_pathologic_stage_Stage IIB", "ajcc_pathologic_stage_Stage IIIA",
                   "ajcc_pathologic_stage_Stage IIIC", "race_white", "prior_malignancy_yes"]


def _pooled(tables, names):
    return {n: np.concatenate([t.column(n) for t in tables]) for n in names}


def _fit(document):
    rows = document["coefficients"]
    return {k: np.array([r[k] for r in rows]) for k in ("coef", "se", "p", "ci_low", "ci_high")}


def test_logistic_on_heart_equals_pooled_statsmodels():
    covariates = list(FEATURE_NAMES)
    result = simulate(clinical.regression_job(dataset="heart", model="logistic",
                                              outcome="disease", covariates=covariates))
    document = result.results["regression"]
    tables = [heart_table(h) for h in HOSPITALS]
    x = np.column_stack([_pooled(tables, covariates)[n] for n in covariates])
    y = _pooled(tables, ["disease"])["disease"]
    keep = ~np.isnan(x).any(axis=1) & ~np.isnan(y)
    ref = sm.Logit(y[keep], sm.add_constant(x[keep])).fit(disp=0, tol=1e-12, maxiter=100)
    fit = _fit(document)
    np.testing.assert_allclose(fit["coef"], ref.params, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fit["se"], ref.bse, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fit["p"], ref.pvalues, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.c_[fit["ci_low"], fit["ci_high"]], ref.conf_int(), atol=1e-6)
    assert document["loglik"] == pytest.approx(ref.llf, abs=1e-6)
    assert document["num_rows"] == keep.sum() == 740
    assert document["iterations"] <= 10
    # performance of the fit from summed counts: accuracy exact, AUC within its bound
    probability = ref.predict(sm.add_constant(x[keep]))
    performance = document["performance"]
    assert performance["accuracy"] == ((probability >= 0.5) == (y[keep] == 1)).mean()
    pooled_auc = roc_auc_score(y[keep], probability)
    assert abs(performance["auc"] - pooled_auc) <= performance["auc_error_bound"] < 1e-3


@pytest.mark.parametrize("stratified", [False, True])
def test_cox_on_tcga_equals_pooled_statsmodels_breslow(stratified):
    result = simulate(clinical.regression_job(
        dataset="tcga_brca", model="cox", outcome="event", time="time",
        covariates=TCGA_COVARIATES, stratified=stratified))
    document = result.results["regression"]
    tables = [tcga_table(c) for c in CENTERS]
    pooled = _pooled(tables, [*TCGA_COVARIATES, "event", "time"])
    strata = np.concatenate([np.full(t.num_rows, i) for i, t in enumerate(tables)])
    ref = PHReg(pooled["time"], np.column_stack([pooled[n] for n in TCGA_COVARIATES]),
                status=pooled["event"], ties="breslow",
                strata=strata if stratified else None).fit()
    fit = _fit(document)
    np.testing.assert_allclose(fit["coef"], ref.params, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fit["se"], ref.bse, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fit["p"], ref.pvalues, atol=1e-6, rtol=0)
    assert document["loglik"] == pytest.approx(ref.llf, abs=1e-6)
    assert document["num_events"] == 151 and document["iterations"] <= 10
    # the C-index: concordant over comparable pairs, formed within each region, summed
    concordant = comparable = 0.0
    for table in tables:
        risk = table.matrix(TCGA_COVARIATES) @ fit["coef"]
        pairs = c_index_pairs(risk, table.column("event"), table.column("time"))
        concordant, comparable = concordant + pairs[0], comparable + pairs[1]
    assert document["performance"]["c_index"] == pytest.approx(concordant / comparable,
                                                               abs=1e-12)


def test_kaplan_meier_and_logrank_on_tcga_equal_lifelines():
    result = simulate(clinical.kaplan_meier_job(dataset="tcga_brca", event="event",
                                                time="time", group="stage"))
    document = result.results["kaplan_meier"]
    pooled = _pooled([tcga_table(c) for c in CENTERS], ["event", "time", "stage"])
    ref = multivariate_logrank_test(pooled["time"], pooled["stage"], pooled["event"])
    assert document["logrank"]["chi2"] == pytest.approx(ref.test_statistic, rel=1e-9)
    assert document["logrank"]["p"] == pytest.approx(ref.p_value, rel=1e-9)
    assert [c["group"] for c in document["curves"]] == ["all", "stage=0", "stage=1",
                                                       "stage=2", "stage=3"]
    for curve in document["curves"]:
        code = None if curve["group"] == "all" else float(curve["group"].split("=")[1])
        rows = np.ones(len(pooled["time"]), bool) if code is None else pooled["stage"] == code
        km = KaplanMeierFitter().fit(pooled["time"][rows], pooled["event"][rows])
        times = np.array(curve["times"])
        np.testing.assert_allclose(curve["survival"], km.survival_function_at_times(times),
                                   atol=1e-12)
        own = np.array(curve["events_at"]) > 0  # lifelines' band is indexed by its own times
        band = km.confidence_interval_survival_function_.loc[times[own]].to_numpy()
        np.testing.assert_allclose(np.array(curve["ci_low"])[own], band[:, 0], atol=1e-9)
        np.testing.assert_allclose(np.array(curve["ci_high"])[own], band[:, 1], atol=1e-9)
        assert curve["rows"] == rows.sum()
        expected = km.median_survival_time_
        assert curve["median"] == (None if np.isinf(expected) else expected)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7])
def test_chi2_tail_matches_scipy(df):
    for x in (0.3, 2.0, 9.5, 40.0):
        assert chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-10)


def test_federated_imputation_indicators_and_standardisation_equal_pooled():
    """Missing values replaced by the federation's means (not each hospital's), indicator
    columns, columns standardised by the federation's mean and sd: the pooled fit of the
    pooled rows preprocessed the same way."""
    covariates = ["age", "sex", "chol", "fbs", "thalach"]
    result = simulate(clinical.regression_job(
        dataset="heart", model="logistic", outcome="disease", covariates=covariates,
        impute=True, missing_indicators=True, standardise=True))
    document = result.results["regression"]
    tables = [heart_table(h) for h in HOSPITALS]
    x = np.concatenate([t.matrix(covariates) for t in tables])
    y = np.concatenate([t.column("disease") for t in tables])
    x, y = x[~np.isnan(y)], y[~np.isnan(y)]
    missing = np.isnan(x)
    mean, sd = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    design = np.column_stack([(np.where(missing, mean, x) - mean) / sd,
                              missing[:, missing.any(axis=0)]])
    ref = sm.Logit(y, sm.add_constant(design)).fit(disp=0, tol=1e-12)
    fit = _fit(document)
    assert [r["covariate"] for r in document["coefficients"]][-3:] == [
        "chol_missing", "fbs_missing", "thalach_missing"]
    np.testing.assert_allclose(fit["coef"], ref.params, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fit["se"], ref.bse, atol=1e-6, rtol=0)
    assert document["num_rows"] == len(y) == 920
