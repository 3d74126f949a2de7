"""What each admin role sees of a job (the admin API's filters, on plain JSON documents)."""

import json

from fedcare.server.history import record_from_dict
from fedcare.server.visibility import (
    job_view,
    redact,
    round_view,
    scope_of,
    site_names,
)

RECORD = {
    "round_num": 1, "trained_sites": ["site-0", "site-1", "site-10"],
    "train_metrics": {"loss": 0.5}, "eval_metrics": {"mse": 0.25},
    "site_eval": {"site-0": {"num_samples": 5, "metrics": {"mse": 1.0}},
                  "site-1": {"num_samples": 10, "metrics": {"mse": 0.0}}},
    "failures": [{"site_id": "site-1", "round_num": 1, "kind": "evaluate", "message": "late",
                  "connection_lost": False}],
    "duration_s": 0.5,
    "site_train": {"site-0": {"num_samples": 50, "metrics": {"loss": 0.7}},
                   "site-1": {"num_samples": 100, "metrics": {"loss": 0.4}}},
}
JOB = {"job_id": "job-0123456789", "status": "finished", "error": None,
       "summary": "finished with 2 of 3 sites; site-1: round 1 train: disk full; recovered "
                  "after failing: site-10 (1 failure)",
       "failed_sites": {"site-1": {"count": 1}, "site-10": {"count": 1}}}


def test_roles_map_to_scopes():
    assert scope_of("project_admin").all_sites
    admin = scope_of("site_admin:site-1")
    assert (admin.all_sites, admin.own) == (False, "site-1")
    for role in ("viewer", "site_admin", "site_admin:", None, "site"):
        assert (scope_of(role).all_sites, scope_of(role).own) == (False, None)


def test_a_project_admin_sees_everything_unchanged():
    scope = scope_of("project_admin")
    assert round_view(RECORD, scope) == RECORD
    assert job_view(JOB, ["site-1"], scope) == JOB


def test_a_site_admin_sees_its_own_site_and_the_aggregates():
    scope = scope_of("site_admin:site-1")
    view = round_view(RECORD, scope)
    assert view["trained_sites"] == ["site-1"]
    assert list(view["site_eval"]) == ["site-1"]
    assert list(view["site_train"]) == ["site-1"]
    assert [f["site_id"] for f in view["failures"]] == ["site-1"]
    assert (view["train_metrics"], view["eval_metrics"]) == ({"loss": 0.5}, {"mse": 0.25})
    record_from_dict(view)  # the shape of a round record is kept
    names = site_names(JOB, [RECORD], [])
    assert names == {"site-0", "site-1", "site-10"}
    job = job_view(JOB, names, scope)
    assert list(job["failed_sites"]) == ["site-1"]
    assert job["summary"] == ("finished with 2 of 3 sites; site-1: round 1 train: disk full; "
                              "recovered after failing: another site (1 failure)")


def test_a_viewer_sees_aggregates_and_no_site_name():
    scope = scope_of("viewer")
    view = round_view(RECORD, scope)
    assert (view["trained_sites"], view["site_eval"], view["failures"]) == ([], {}, [])
    assert view["site_train"] == {}
    assert view["eval_metrics"] == {"mse": 0.25}
    job = job_view(JOB, site_names(JOB, [RECORD], []), scope)
    assert job["failed_sites"] == {}
    # not even what went wrong at a site: its reasons (paths, exceptions) are the site's own
    assert job["summary"] == ("finished with 2 of 3 sites; recovered after failing: a site "
                              "(1 failure); 1 other site failed")


def test_redaction_replaces_whole_names_only():
    scope = scope_of("site_admin:site-1")
    assert redact("site-1 and site-10, site-100 and xsite-10", ["site-10", "site-1"],
                  scope) == "site-1 and another site, site-100 and xsite-10"
    assert redact(None, ["a"], scope) is None
    assert redact("a.b (a) a.", ["a"], scope) == "a.b (another site) another site."


def test_a_site_admin_does_not_read_another_sites_failure_reason():
    job = {**JOB, "summary": "finished with 1 of 3 sites; site-0: round 2 train: FileNotFoundError:"
                             " /data/hospital-b/x.csv; site-1: round 2 train: disk full"}
    view = job_view(job, {"site-0", "site-1", "site-10"}, scope_of("site_admin:site-1"))
    assert view["summary"] == ("finished with 1 of 3 sites; site-1: round 2 train: disk full; "
                               "1 other site failed")
    assert "hospital-b" not in json.dumps(view)
