"""Clinical analytics over sites' own CSV files: the cohort table against pooled numpy, the
site's min_rows suppression, and bad input failing with the site and column named."""

import csv

import numpy as np
import pytest

from fedcare.analytics.cohort import site_summary
from fedcare.analytics.table import DataError, SiteTable
from fedcare.core.errors import AggregationError
from fedcare.core.privacy_policy import PrivacyPolicy
from fedcare.jobs import clinical
from fedcare.sim.simulator import simulate

SITES = ["a", "b", "c"]


def _write(folder, columns):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "t.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values(), strict=True))


@pytest.fixture
def federation(tmp_path):
    """Three sites of 80, 60 and 40 rows; site c has only 4 rows in group 1 and a missing
    age in 3 rows."""
    rng = np.random.default_rng(7)
    data = {}
    for site, n in zip(SITES, (80, 60, 40), strict=True):
        age = rng.normal(60, 10, n).round(1)
        group = (rng.random(n) < 0.5).astype(int)
        if site == "c":
            group = np.zeros(n, int)
            group[:4] = 1
        cells = [str(v) for v in age]
        if site == "c":
            cells[10:13] = ["", "NA", "?"]
        time = rng.integers(1, 400, n)
        event = (rng.random(n) < 0.6).astype(int)
        _write(tmp_path / site, {"age": cells, "group": group, "time": time, "event": event})
        data[site] = {"age": np.array([float(c) if c not in ("", "NA", "?") else np.nan
                                       for c in cells]), "group": group, "time": time,
                      "event": event}
    return {s: tmp_path / s for s in SITES}, data


def test_cohort_table_equals_pooled_and_quantiles_within_a_bin(federation):
    dirs, data = federation
    result = simulate(clinical.cohort_job(dataset="csv:t.csv", columns="age", group="group",
                                          bins=40, sites=SITES), data_dirs=dirs)
    cells = result.results["cohort"]["cells"]
    for code in (0, 1):
        pooled = np.concatenate([d["age"][d["group"] == code] for d in data.values()])
        overall = next(c for c in cells if c["group"] == f"group={code}" and c["site"] == "all")
        present = pooled[~np.isnan(pooled)]
        assert overall["count"] == present.size
        assert overall["missing"] == np.isnan(pooled).sum()
        assert overall["mean"] == pytest.approx(present.mean(), rel=1e-12)
        assert overall["sd"] == pytest.approx(present.std(ddof=1), rel=1e-10)
        for (name, q), got in zip({"q25": 0.25, "median": 0.5, "q75": 0.75}.items(),
                                  overall["quantiles"].values(), strict=True):
            assert abs(got - np.quantile(present, q)) <= overall["quantile_error_bound"], name
        for site, d in data.items():
            own = d["age"][(d["group"] == code) & ~np.isnan(d["age"])]
            cell = next(c for c in cells if c["group"] == f"group={code}" and c["site"] == site)
            assert cell["count"] == own.size
            assert cell["mean"] == pytest.approx(own.mean(), rel=1e-12)


def test_a_group_below_min_rows_never_leaves_the_site(federation):
    dirs, data = federation
    policy = PrivacyPolicy(min_rows=5)
    table = SiteTable.from_csv("c", dirs["c"] / "t.csv")
    reply = site_summary(table, {"name": "cohort", "columns": "age", "group": "group",
                                 "min_rows": 5})
    assert reply.values["groups"].tolist() == [0.0]  # group 1 (4 rows) is not even named
    result = simulate(clinical.cohort_job(dataset="csv:t.csv", columns="age", group="group",
                                          sites=SITES), data_dirs=dirs,
                      site_privacy={"c": policy})
    cells = result.results["cohort"]["cells"]
    overall = next(c for c in cells if c["group"] == "group=1" and c["site"] == "all")
    expected = sum(int((d["group"] == 1).sum()) for s, d in data.items() if s != "c")
    assert overall["count"] == expected  # site c's 4 rows are in no total
    site_c = next(c for c in cells if c["group"] == "group=1" and c["site"] == "c")
    assert site_c["count"] == 0
    km = simulate(clinical.kaplan_meier_job(dataset="csv:t.csv", event="event", time="time",
                                            group="group", sites=SITES), data_dirs=dirs,
                  site_privacy={"c": policy}).results["kaplan_meier"]
    assert km["suppressed_groups"] == {"a": 0, "b": 0, "c": 1}
    assert "group=1" not in km["site_rows"]["c"]


def test_a_column_missing_at_one_site_names_site_and_column(federation):
    dirs, data = federation
    _write(dirs["b"], {"age": data["b"]["age"], "time": data["b"]["time"]})
    with pytest.raises(AggregationError, match=r"site b: no column 'event'"):
        simulate(clinical.regression_job(dataset="csv:t.csv", model="logistic",
                                         outcome="event", covariates="age", sites=SITES),
                 data_dirs=dirs)


def test_a_non_numeric_value_names_site_column_and_line(federation):
    dirs, data = federation
    cells = [str(v) for v in data["a"]["age"]]
    cells[4] = "sixty"
    _write(dirs["a"], {"age": cells, "group": data["a"]["group"], "time": data["a"]["time"],
                       "event": data["a"]["event"]})
    with pytest.raises(DataError, match=r"site a: column 'age' line 6 holds 'sixty'"):
        SiteTable.from_csv("a", dirs["a"] / "t.csv")
    with pytest.raises(AggregationError, match=r"site a: column 'age' line 6"):
        simulate(clinical.cohort_job(dataset="csv:t.csv", columns="age", sites=SITES),
                 data_dirs=dirs)


def test_a_singular_hessian_names_the_covariate(federation):
    dirs, data = federation
    for site, d in data.items():
        _write(dirs[site], {"age": d["age"], "double_age": 2 * d["age"],
                            "event": d["event"]})
    with pytest.raises(AggregationError, match=r"covariate 'double_age' is constant across "
                                               r"the federation, or a linear combination"):
        simulate(clinical.regression_job(dataset="csv:t.csv", model="logistic",
                                         outcome="event", covariates="age,double_age",
                                         sites=SITES), data_dirs=dirs)


def test_a_site_below_min_rows_refuses_the_whole_fit(federation):
    dirs, _ = federation
    with pytest.raises(AggregationError, match=r"site c: .*privacy.min_rows: 100"):
        simulate(clinical.regression_job(dataset="csv:t.csv", model="cox", outcome="event",
                                         time="time", covariates="age", sites=SITES),
                 data_dirs=dirs, site_privacy={"c": PrivacyPolicy(min_rows=100)})


class _Echo:
    """A trainer that answers a statistics task with the min_rows it was given."""

    def statistics(self, config):
        from fedcare.core.message import StatsResult
        from fedcare.core.weights import Weights

        return StatsResult(Weights({"min_rows": np.array([float(config.get("min_rows", -1))])}),
                           500)

    def train(self, weights, config):
        raise NotImplementedError

    def evaluate(self, weights, config):
        raise NotImplementedError


@pytest.mark.parametrize(("site", "job", "applied"), [(20, None, 20), (20, 5, 20),
                                                     (20, 50, 50), (0, None, -1), (0, 7, 7)])
def test_the_site_agent_applies_its_min_rows_and_a_job_can_only_raise_it(site, job, applied):
    from fedcare.core.message import Task
    from fedcare.site.agent import SiteAgent
    from fedcare.site.privacy_guard import PrivacyGuard
    from fedcare.site.privacy_ledger import PrivacyLedger

    guard = PrivacyGuard(PrivacyPolicy(min_rows=site), PrivacyLedger(None)) if site else None
    agent = SiteAgent("a", _Echo(), privacy=guard)
    config = {"name": "cohort"} if job is None else {"name": "cohort", "min_rows": job}
    reply = agent.handle(Task("t1", "j", 0, "statistics", config=config))
    assert reply.error is None, reply.error
    assert reply.result.values["min_rows"][0] == applied
