"""The dashboard app against a fake admin API: sign-in, CSRF, roles, live updates, metrics."""

import json
import re

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")  # Starlette's TestClient

from fakeadmin import DONE, JOB, FakeAdmin
from fastapi.testclient import TestClient

from fedcare.dashboard import AdminCallError, Gate, create_app
from fedcare.dashboard.security import COOKIE

ORIGIN = "http://testserver"
TOKEN = "t0ken-for-tests"


def client_for(api, gate=None):
    return TestClient(create_app(api, gate or Gate(["testserver"], token=TOKEN)))


def signed_in(role="project_admin"):
    api = FakeAdmin(role)
    gate = Gate(["testserver"], token=TOKEN)
    client = client_for(api, gate)
    reply = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/"
    return api, client, gate


def csrf_of(html):
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_every_page_needs_the_token():
    api = FakeAdmin()
    client = client_for(api)
    for path in ["/", "/jobs", f"/jobs/{JOB}", f"/jobs/{JOB}/events", "/metrics"]:
        reply = client.get(path)
        assert reply.status_code == 401, path
        assert "token" in reply.text
    assert client.get("/?token=wrong").status_code == 403
    assert api.calls == []  # nothing reached the server


def test_the_token_becomes_a_strict_httponly_cookie_and_leaves_the_address():
    client = client_for(FakeAdmin())
    reply = client.get(f"/jobs?token={TOKEN}", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/jobs"
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie
    assert client.get("/jobs").status_code == 200


def test_another_host_name_is_refused_even_with_the_token():
    client = client_for(FakeAdmin())
    reply = client.get(f"/?token={TOKEN}", headers={"host": "evil.example:8765"})
    assert reply.status_code == 400


def test_the_federation_and_jobs_pages_show_sites_and_full_job_ids():
    _, client, _ = signed_in()
    page = client.get("/").text
    assert "site-0" in page and "site-1" in page and "connected" in page
    assert "site-2" in page and "failed in job-0123456789" in page  # known from a failure
    assert "site-3" in page and "2023-11-14 22:14:20 UTC" in page  # gone since
    assert page.count("not connected") == 2
    assert "3.5 MB in, 12.0 kB out" in page
    # what site-0 stated, its organisation and its last message; site-1 predates them
    assert "St Mary&#39;s" in page and "0.1.0" in page and "42 s ago" in page
    assert ("outbound: clip_update_norm; inbound: none; requires: svt; budget set; "
            "min_rows 20; task kinds: evaluate, train") in page
    assert "unknown" in page and "not stated" in page
    assert "privacy ledger" in page.lower() and "fedcare site privacy KIT" in page
    jobs = client.get("/jobs").text
    assert JOB in jobs and DONE in jobs and "toyjob:make_job" in jobs
    assert "&#34;num_rounds&#34;: 3" in jobs or '"num_rounds": 3' in jobs


def test_a_job_page_shows_curves_failures_and_the_abort_button_to_a_project_admin():
    _, client, _ = signed_in()
    page = client.get(f"/jobs/{JOB}").text
    assert 'id="abort"' in page and 'name="csrf"' in page
    assert "eval mse" in page and "<svg" in page and "site-1" in page
    assert "disk full" in page and "site-2" in page
    assert 'href="/jobs/job-0123456789/model"' in page


def test_a_finished_job_shows_the_cross_site_heatmap_and_no_abort():
    _, client, _ = signed_in()
    page = client.get(f"/jobs/{DONE}").text
    assert "Cross-site validation" in page and "local:site-0" in page
    assert "site-1 refused the task" in page  # an empty cell says why
    assert re.search(r'class="h\d"', page)
    assert 'id="abort"' not in page


def test_a_viewer_sees_no_abort_button_and_no_submit_form():
    _, client, _ = signed_in("viewer")
    page = client.get(f"/jobs/{JOB}").text
    assert 'id="abort"' not in page
    assert 'id="submit-form"' not in client.get("/jobs").text
    assert 'id="download"' in page  # viewers may download results


def test_a_site_admin_sees_no_download_link():
    _, client, _ = signed_in("site_admin:site-0")
    page = client.get(f"/jobs/{JOB}").text
    assert 'id="abort"' not in page and 'id="download"' not in page
    assert client.get(f"/jobs/{JOB}/model").status_code == 403


def test_a_forged_abort_by_a_viewer_is_refused_before_the_server():
    api, client, gate = signed_in("viewer")
    assert 'name="csrf"' not in client.get(f"/jobs/{JOB}").text  # no form to take it from
    # Even with this session's own CSRF token and the right origin, the role has no abort.
    csrf = gate.session(client.cookies[COOKIE]).csrf_token
    reply = client.post(f"/jobs/{JOB}/abort", data={"csrf": csrf}, headers={"origin": ORIGIN})
    assert reply.status_code == 403 and "may not abort" in reply.text
    assert "Abort" not in api.calls and api.jobs[JOB]["status"] == "running"


def test_an_abort_without_csrf_token_or_from_another_origin_is_refused():
    api, client, _ = signed_in()
    csrf = csrf_of(client.get(f"/jobs/{JOB}").text)
    for data, headers in [({}, {"origin": ORIGIN}),
                          ({"csrf": "wrong"}, {"origin": ORIGIN}),
                          ({"csrf": csrf}, {"origin": "http://evil.example"}),
                          ({"csrf": csrf}, {})]:
        reply = client.post(f"/jobs/{JOB}/abort", data=data, headers=headers)
        assert reply.status_code == 403, (data, headers)
    assert "Abort" not in api.calls
    reply = client.post(f"/jobs/{JOB}/abort", data={"csrf": csrf}, headers={"origin": ORIGIN},
                        follow_redirects=False)
    assert reply.status_code == 303 and api.jobs[JOB]["status"] == "aborted"


def test_a_refused_action_of_the_server_is_shown_not_hidden():
    api, client, _ = signed_in()
    api.role = "project_admin"
    csrf = csrf_of(client.get(f"/jobs/{JOB}").text)
    api.jobs.pop(JOB)
    reply = client.post(f"/jobs/{JOB}/abort", data={"csrf": csrf}, headers={"origin": ORIGIN})
    assert reply.status_code == 404 and f"no job {JOB}" in reply.text


def test_a_bad_job_id_names_nothing_at_the_server():
    api, client, _ = signed_in()
    assert client.get("/jobs/..%2f..%2fetc").status_code in (400, 404)
    reply = client.get("/jobs/job-XYZ")
    assert reply.status_code == 400 and "is not a job id" in reply.text
    assert "Metrics" not in api.calls


def test_the_event_stream_emits_each_round_then_ends():
    api, client, _ = signed_in("viewer")
    with client.stream("GET", f"/jobs/{JOB}/events") as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = "".join(reply.iter_text())
    events = re.findall(r"event: (\w+)\ndata: (.*)\n\n", text)
    updates = [json.loads(data) for kind, data in events if kind == "update"]
    assert [u["round_num"] for u in updates] == [1, 2, 3]
    assert updates[0]["new_failures"][0]["site_id"] == "site-2"
    assert updates[-1]["status"] == "finished"
    assert events[-1][0] == "end"
    assert api.watches[0].cancelled.is_set()  # the gRPC stream is closed with the page's


def test_a_watch_the_server_ends_with_an_error_says_why():
    api, client, _ = signed_in()
    api.watch_error = AdminCallError("Watch", "PERMISSION_DENIED", "admin: certificate revoked")
    with client.stream("GET", f"/jobs/{JOB}/events") as reply:
        text = "".join(reply.iter_text())
    kinds = re.findall(r"event: (\w+)\n", text)
    assert kinds == ["update", "update", "update", "failure"]
    assert "certificate revoked" in text.rsplit("event: failure", 1)[1]


def test_the_charts_fragment_is_a_piece_of_html():
    _, client, _ = signed_in()
    fragment = client.get(f"/jobs/{JOB}/charts").text
    assert fragment.lstrip().startswith("<div class=\"charts\">") and "<html" not in fragment


def test_metrics_are_prometheus_text_with_a_bearer_token_or_the_session():
    api = FakeAdmin()
    client = client_for(api)
    assert client.get("/metrics", headers={"authorization": "Bearer nope"}).status_code == 401
    reply = client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = reply.text.splitlines()
    assert "fedcare_up 1.0" in lines and "fedcare_sites_connected 2.0" in lines
    assert "# TYPE fedcare_rounds_completed_total counter" in lines
    assert "fedcare_rounds_completed_total 3.0" in lines
    assert 'fedcare_jobs{status="running"} 1.0' in lines
    assert "fedcare_site_failures_total 1.0" in lines
    assert "fedcare_received_bytes_total 3500000.0" in lines
    assert "# TYPE fedcare_sent_bytes_total counter" in lines
    assert f'fedcare_job_rounds_completed{{job_id="{JOB}"}} 1.0' in lines
    assert 'fedcare_site_last_message_age_seconds{site="site-0"} 42.0' in lines
    assert "# TYPE fedcare_site_last_message_age_seconds gauge" in lines


def test_a_viewers_metrics_have_no_per_site_ages():
    api = FakeAdmin("viewer")
    api.sites = lambda: {"connected": [], "count": 2, "presence": {}}  # as the server filters
    text = client_for(api).get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
    assert "fedcare_sites_connected 2.0" in text
    assert "fedcare_site_last_message_age_seconds" not in text


def test_pages_forbid_scripts_and_frames_from_elsewhere():
    _, client, _ = signed_in()
    policy = client.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    for asset in ["/static/style.css", "/static/job.js"]:
        assert client.get(asset).status_code == 200


def test_a_project_admin_submits_a_package_through_the_form():
    api, client, _ = signed_in()
    csrf = csrf_of(client.get("/jobs").text)
    reply = client.post("/jobs", data={"csrf": csrf}, headers={"origin": ORIGIN},
                        files={"package": ("job.fcjob", b"signed bytes")}, follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == f"/jobs/{JOB}"
    reply = client.post("/jobs", data={"csrf": csrf}, headers={"origin": ORIGIN})
    assert reply.status_code == 400 and "choose a signed job package" in reply.text
    assert api.calls.count("Submit") == 1


def test_a_site_admin_cannot_submit_even_with_its_session_token():
    api, client, gate = signed_in("site_admin:site-0")
    csrf = gate.session(client.cookies[COOKIE]).csrf_token
    reply = client.post("/jobs", data={"csrf": csrf}, headers={"origin": ORIGIN},
                        files={"package": ("job.fcjob", b"x")})
    assert reply.status_code == 403 and "Submit" not in api.calls


def test_text_from_the_federation_is_escaped_not_run():
    api, client, _ = signed_in()
    site = api.sites()
    site["presence"]["site-0"].update(org="<b>Evil</b> Org", version="<script>v</script>",
                                      policy={"outbound_filters": ["<img src=x>"]})
    api.sites = lambda: site
    page = client.get("/").text
    assert "<b>Evil" not in page and "<script>v" not in page and "<img src=x>" not in page
    assert "&lt;b&gt;Evil&lt;/b&gt; Org" in page and "&lt;script&gt;v&lt;/script&gt;" in page
    assert "not stated" in page  # a summary outside the schema is not shown at all
    api.jobs[JOB]["summary"] = '<script>alert(1)</script>'
    api.jobs[JOB]["params"] = {"x": "</code><img src=x onerror=alert(1)>"}
    for path in ["/jobs", f"/jobs/{JOB}"]:
        page = client.get(path).text
        assert "<script>alert(1)" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
