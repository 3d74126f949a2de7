"""Review finding: the submit form's package limit (``MAX_PACKAGE_BYTES``) was not applied to
the uploaded file (Starlette's ``max_part_size`` bounds form fields, not files)."""

import re

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")

from fakeadmin import FakeAdmin
from fastapi.testclient import TestClient

from fedcare.dashboard import Gate, create_app
from fedcare.dashboard import app as dashboard_app

TOKEN = "t0ken-for-tests"


def test_a_package_over_the_forms_limit_is_refused_before_the_server(monkeypatch):
    monkeypatch.setattr(dashboard_app, "MAX_PACKAGE_BYTES", 1000)
    api = FakeAdmin("project_admin")
    client = TestClient(create_app(api, Gate(["testserver"], token=TOKEN)))
    client.get(f"/?token={TOKEN}")
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/jobs").text).group(1)
    reply = client.post("/jobs", data={"csrf": csrf}, headers={"origin": "http://testserver"},
                        files={"package": ("job.fcjob", b"x" * 5000)})
    assert reply.status_code == 413
    assert "Submit" not in api.calls
