"""Authorization by organisation on a real server process: every admin command run by each
role (project admin, site admin of one hospital, viewer), what it may do and what it sees.

The README's roles table is this test's expectation, row by row.
"""

import json
import os
import time
from pathlib import Path

import grpc
import pytest
from toyjob import ENTRY_POINTS

import fedcare
from fedcare.cli.poc import PocFederation
from fedcare.transport.codec import decode
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

TESTS = Path(__file__).resolve().parents[1]
SITES = ["site-0", "site-1", "site-2"]
ADMINS = [{"name": "sam", "role": "site_admin", "site": "site-1"},
          {"name": "vic", "role": "viewer"}]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A federation of three site processes, and one job finished there: site-1 and site-2
    fail their training (site-0 trains), every site evaluates."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PYTHONPATH", os.pathsep.join(  # toyjob, for the server and the sites
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    fed = PocFederation(tmp_path_factory.mktemp("roles") / "poc", SITES, admins=ADMINS,
                         allowed_jobs=ENTRY_POINTS)
    fed.provision()
    # site-1 states its policy when it connects (its filters' names, its budget, no values)
    fed.edit_kit("site-1", lambda config: config.update(
        policy={"outbound": [{"half_precision": {}}]}, privacy={"budget_epsilon": 100.0}))
    fed.start_server()
    fed.start_sites()
    fed.wait_for_sites(3)
    admin = fed.admin()
    job_id = admin.Submit(pb.SubmitRequest(entry_point="toyjob:make_job", params_json=json.dumps(
        {"num_rounds": 1, "min_sites": 1, "modes": {"site-1": "raise", "site-2": "nan"}})),
        timeout=30).job_id
    for update in admin.Watch(pb.JobRef(job_id=job_id), timeout=120):
        state = json.loads(update.json)
    assert state["status"] == "finished", state
    yield fed, job_id
    fed.stop()
    patch.undo()
    for proc in [fed.server, *fed.sites.values()]:
        assert proc.poll() is not None, f"pid {proc.pid} still running"


def stubs(fed):
    return {"project_admin": fed.admin("admin"), "site_admin": fed.admin("sam"),
            "viewer": fed.admin("vic")}


def refused(call, who, action):
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == f"{who}: role {action}"


def test_submit_and_abort_are_the_project_admins_only(finished):
    fed, job_id = finished
    by = stubs(fed)
    request = pb.SubmitRequest(entry_point="toyjob:make_job", params_json='{"num_rounds": 1}')
    refused(lambda: by["site_admin"].Submit(request, timeout=10), "sam",
            "site_admin may not submit")
    refused(lambda: by["viewer"].Submit(request, timeout=10), "vic", "viewer may not submit")
    for stub, who, role in ((by["site_admin"], "sam", "site_admin"),
                            (by["viewer"], "vic", "viewer")):
        refused(lambda s=stub: s.Abort(pb.JobRef(job_id=job_id), timeout=10), who,
                f"{role} may not abort")
    done = json.loads(by["project_admin"].Abort(pb.JobRef(job_id=job_id), timeout=10).json)
    assert done == {"job_id": job_id, "result": "aborting"}  # a finished job stays finished
    status = json.loads(by["project_admin"].Status(pb.Empty(), timeout=10).json)
    assert [j["status"] for j in status["jobs"]] == ["finished"]


def test_download_is_the_project_admins_and_the_viewers(finished):
    fed, job_id = finished
    by = stubs(fed)
    models = []
    for role in ("project_admin", "viewer"):
        chunks = by[role].Download(pb.JobRef(job_id=job_id), timeout=30)
        models.append(decode(b"".join(c.data for c in chunks)).result.weights)
    assert models[0].allclose(models[1])
    assert float(models[0]["w"][0, 0]) == pytest.approx(1.0)  # site-0's target, alone
    refused(lambda: list(by["site_admin"].Download(pb.JobRef(job_id=job_id), timeout=10)),
            "sam", "site_admin may not download")


def test_status_shows_each_role_its_own_organisation_only(finished):
    fed, job_id = finished
    seen = {role: json.loads(stub.Status(pb.Empty(), timeout=10).json)["jobs"][0]
            for role, stub in stubs(fed).items()}
    assert {job["job_id"] for job in seen.values()} == {job_id}
    assert sorted(seen["project_admin"]["failed_sites"]) == ["site-1", "site-2"]
    assert seen["project_admin"]["summary"].startswith(
        "finished with 1 of 3 sites; site-1: round 1 train: train raised RuntimeError: disk "
        "full while reading images; site-2: round 1 train: returned NaN or infinity in")
    # the site admin of site-1: its own failure, the other site's name redacted
    assert list(seen["site_admin"]["failed_sites"]) == ["site-1"]
    assert seen["site_admin"]["failed_sites"]["site-1"]["kind"] == "train"
    # its own site's reason, and only how many others failed: their reasons are theirs
    assert seen["site_admin"]["summary"] == (
        "finished with 1 of 3 sites; site-1: round 1 train: train raised RuntimeError: disk "
        "full while reading images; 1 other site failed")
    # the viewer: no site's name, no site's failures
    assert seen["viewer"]["failed_sites"] == {}
    assert seen["viewer"]["summary"] == "finished with 1 of 3 sites; 2 other sites failed"
    for role in ("site_admin", "viewer"):
        # the job's parameters are shown as the project admin wrote them (here they name
        # sites); nothing the sites did names another site
        shown = json.dumps({k: v for k, v in seen[role].items() if k != "params"})
        assert "site-2" not in shown and "site-0" not in shown
        assert (seen[role]["status"], seen[role]["round_num"]) == ("finished", 1)


def test_sites_shows_each_role_its_own_organisation_only(finished):
    fed, _ = finished
    seen = {role: json.loads(stub.Sites(pb.Empty(), timeout=10).json)
            for role, stub in stubs(fed).items()}
    seen["project_admin"]["connected"].sort()  # in the order they connected
    presence = {role: reply.pop("presence") for role, reply in seen.items()}
    traffic = {role: (reply.pop("received_bytes"), reply.pop("sent_bytes"))
               for role, reply in seen.items()}
    assert seen == {"project_admin": {"connected": SITES, "count": 3},
                    "site_admin": {"connected": ["site-1"], "count": 3},
                    "viewer": {"connected": [], "count": 3}}
    # since when each is connected: every site to the project admin, its own to a site admin
    assert sorted(presence["project_admin"]) == SITES and presence["viewer"] == {}
    ages = {role: {s: p.pop("last_message_age_s") for s, p in seen_.items()}
            for role, seen_ in presence.items()}  # taken a moment apart
    assert presence["site_admin"] == {"site-1": presence["project_admin"]["site-1"]}
    assert all(p["connected"] and abs(time.time() - p["since_s"]) < 300
               for p in presence["project_admin"].values())
    # what each site process stated when it connected, and its certificate's organisation
    assert all(p["version"] == fedcare.__version__ and p["org"] == f"{s} (POC)"
               for s, p in presence["project_admin"].items())
    assert presence["site_admin"]["site-1"]["policy"] == {
        "outbound_filters": ["half_precision"], "inbound_filters": [], "required_filters": [],
        "budget_set": True, "min_rows": 0, "task_kinds": None}
    assert presence["project_admin"]["site-0"]["policy"]["outbound_filters"] == []
    assert all(0 <= age < 300 for age in ages["project_admin"].values())
    assert list(ages["site_admin"]) == ["site-1"] and ages["viewer"] == {}
    # the bytes of the sites' streams are an aggregate: every role sees them (a job ran)
    assert all(received > 1000 and sent > 1000 for received, sent in traffic.values())


def test_metrics_show_the_aggregates_to_all_and_per_site_data_to_its_own(finished):
    fed, job_id = finished
    seen = {role: json.loads(stub.Metrics(pb.JobRef(job_id=job_id), timeout=10).json)
            for role, stub in stubs(fed).items()}
    full = seen["project_admin"]
    assert [r["round_num"] for r in full] == [0, 1]
    assert full[1]["trained_sites"] == ["site-0"]
    assert sorted(full[1]["site_eval"]) == SITES
    assert list(full[1]["site_train"]) == ["site-0"]  # each trained site's own numbers
    assert sorted(f["site_id"] for f in full[1]["failures"]) == ["site-1", "site-2"]
    # after round 1 every entry of w is 1.0 (site-0 alone): mse (1 - t)^2 per site, t = 1, 2, 3,
    # weighted by 5, 10, 15 evaluation samples
    assert full[1]["eval_metrics"]["mse"] == pytest.approx((0 * 5 + 1 * 10 + 4 * 15) / 30)
    own = seen["site_admin"][1]
    assert own["trained_sites"] == [] and list(own["site_eval"]) == ["site-1"]
    assert own["site_train"] == {}  # site-0's training numbers are site-0's
    assert own["site_eval"]["site-1"] == {"num_samples": 10, "metrics": {"mse": 1.0}}
    assert [f["site_id"] for f in own["failures"]] == ["site-1"]
    viewer = seen["viewer"][1]
    assert (viewer["trained_sites"], viewer["site_eval"], viewer["failures"]) == ([], {}, [])
    assert viewer["site_train"] == {}
    for role in ("site_admin", "viewer"):
        assert [r["eval_metrics"] for r in seen[role]] == [r["eval_metrics"] for r in full]
        assert [r["train_metrics"] for r in seen[role]] == [r["train_metrics"] for r in full]


def test_watch_shows_each_role_the_failures_of_its_own_organisation(finished):
    fed, job_id = finished
    seen = {}
    for role, stub in stubs(fed).items():
        updates = [json.loads(u.json) for u in stub.Watch(pb.JobRef(job_id=job_id), timeout=30)]
        seen[role] = updates
        assert updates[-1]["status"] == "finished"
    failures = {role: sorted(f["site_id"] for u in updates for f in u["new_failures"])
                for role, updates in seen.items()}
    assert failures == {"project_admin": ["site-1", "site-2"], "site_admin": ["site-1"],
                        "viewer": []}
    shown = {role: json.dumps([{k: v for k, v in u.items() if k != "params"} for u in updates])
             for role, updates in seen.items()}
    assert "site-2" not in shown["site_admin"], shown["site_admin"]
    assert "1 other site failed" in shown["site_admin"]
    assert not any(name in shown["viewer"] for name in SITES)


def test_the_admin_command_line_runs_as_each_role(finished):
    """The same as a user sees it: ``fedcare admin KIT sites`` and a refused ``download``."""
    import subprocess
    import sys

    fed, job_id = finished

    def admin(kit, *args):
        out = subprocess.run([sys.executable, "-m", "fedcare.cli", "admin", str(fed.kits[kit]),
                              *args, "--server", fed.address], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "COLUMNS": "200"})
        return out.returncode, out.stdout + out.stderr

    code, out = admin("sam", "sites")  # its own site only, with what the site stated
    assert code == 0 and out.startswith("3 site(s) connected; yours: site-1\n")
    (line,) = out.splitlines()[1:]
    assert line.startswith("  site-1 (site-1 (POC)): connected since ")
    assert line.endswith(f", fedcare {fedcare.__version__}; policy: outbound: half_precision; "
                         "inbound: none; requires: none; budget set; min_rows 0; task kinds: any")
    assert "last message" in line and "site-0" not in out and "site-2" not in out
    code, out = admin("vic", "sites")
    assert (code, out) == (0, "3 site(s) connected; yours: -\n")
    code, out = admin("sam", "download", job_id, "--out", str(fed.workdir))
    assert code == 1 and "sam: role site_admin may not download" in out
    code, out = admin("admin", "download", "../../x", "--out", str(fed.workdir))
    assert code == 1 and "'../../x' is not a job id" in out
