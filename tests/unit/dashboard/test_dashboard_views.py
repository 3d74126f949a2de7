"""The dashboard's pure pieces: learning curves, the cross-site heatmap, Prometheus text,
and the sign-in gate."""

import pytest
from fakeadmin import MATRIX, FakeAdmin, rounds

from fedcare.dashboard.charts import HEIGHT, LEFT, TOP, WIDTH, learning_curves
from fedcare.dashboard.client import AdminCallError, may
from fedcare.dashboard.heatmap import heatmaps
from fedcare.dashboard.jobs import failures_of, job_sites
from fedcare.dashboard.prometheus import exposition
from fedcare.dashboard.security import Gate


def test_a_chart_per_metric_with_a_line_per_site_inside_the_plot():
    charts = learning_curves(rounds(4))
    assert [c.title for c in charts] == ["eval mse", "train loss"]
    mse = charts[0]
    assert [s.label for s in mse.series] == ["global", "site-0", "site-1"]
    assert mse.series[0].points == ((0, 2.0), (1, 1.0), (2, 2 / 3), (3, 0.5))
    for series in mse.series:
        for x, y in series.dots:
            assert LEFT <= x <= WIDTH and TOP <= y <= HEIGHT
    highest = max(y for s in mse.series for _, y in s.points)
    assert mse.y_ticks[0][1] == f"{highest:.3g}" or mse.y_ticks[-1][1] == f"{highest:.3g}"


def test_one_round_is_a_dot_and_non_numbers_are_skipped():
    records = [{"round_num": 1, "eval_metrics": {"auc": 0.5, "bad": float("nan"), "flag": True},
                "site_eval": {"site-0": {"num_samples": 1, "metrics": {"auc": "x"}}}}]
    (chart,) = learning_curves(records)
    assert chart.title == "eval auc" and [s.label for s in chart.series] == ["global"]
    assert len(chart.series[0].dots) == 1


def test_the_heatmap_shades_values_and_keeps_the_reason_of_an_empty_cell():
    (table,) = heatmaps(MATRIX)
    assert table.metric == "mse" and table.sites == ("site-0", "site-1")
    rows = dict(table.rows)
    assert rows["local:site-0"][0].shade == 0 and rows["global"][1].shade == 9
    assert rows["local:site-0"][1].shade is None
    assert rows["local:site-0"][1].title == "site-1 refused the task"
    assert rows["local:site-0"][1].text == "n/a [1]"
    assert table.notes == ("site-1 refused the task",)
    with pytest.raises(ValueError):
        heatmaps({"cells": 3})


def test_failures_come_from_the_rounds_then_from_the_job_for_sites_no_round_names():
    job = FakeAdmin().jobs["job-0123456789"]
    found = failures_of({**job, "failed_sites": {
        **job["failed_sites"], "site-9": {"count": 2, "round_num": 3, "kind": "absent",
                                          "message": "never connected"}}}, rounds(3))
    assert [(f.site_id, f.round_num, f.kind) for f in found] == [
        ("site-2", 1, "train"), ("site-9", 3, "absent")]
    assert job_sites(job, rounds(3)) == ["site-0", "site-1", "site-2"]


def test_prometheus_labels_are_escaped_and_an_unreachable_server_is_down():
    api = FakeAdmin()
    api.jobs["job-0123456789"]["job_id"] = 'job-"\\\n'
    text = exposition(api)
    assert 'job_id="job-\\"\\\\\\n"' in text
    api.status = lambda: (_ for _ in ()).throw(AdminCallError("Status", "UNAVAILABLE", "down"))
    assert exposition(api) == ("# HELP fedcare_up Whether the federation server answered.\n"
                               "# TYPE fedcare_up gauge\nfedcare_up 0.0\n")


def test_roles_get_the_server_s_permissions():
    assert may("project_admin", "Abort") and may("project_admin", "Submit")
    assert not may("viewer", "Abort") and may("viewer", "Download")
    assert not may("site_admin:site-0", "Download") and may("site_admin:site-0", "Watch")
    assert not may("", "Status") and not may("root", "Abort")


def test_the_gate_checks_token_hosts_and_origins():
    gate = Gate(["127.0.0.1:8765", "localhost:8765"])
    assert len(gate.token) >= 40 and not gate.token_matches("") and not gate.token_matches(None)
    assert gate.token_matches(gate.token) and gate.bearer_matches(f"Bearer {gate.token}")
    assert not gate.bearer_matches(gate.token) and not gate.bearer_matches("Bearer x")
    assert gate.host_allowed("LOCALHOST:8765") and not gate.host_allowed("127.0.0.1:9999")
    assert gate.origin_allowed("http://127.0.0.1:8765", None)
    assert gate.origin_allowed(None, "http://localhost:8765/jobs/x")
    for origin, referer in [(None, None), ("null", None), ("http://evil.example", None),
                            ("https://127.0.0.1:8765", None),
                            ("http://evil.example", "http://127.0.0.1:8765/")]:
        assert not gate.origin_allowed(origin, referer), (origin, referer)
    session = gate.open_session()
    assert gate.session(session.session_id) == session and gate.session("x") is None
    assert Gate(["h"]).token != gate.token
