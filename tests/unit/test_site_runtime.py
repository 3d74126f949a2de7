"""A real site's runtime: job built from the task's entry point, refused by site policy."""

import json
import shutil

import numpy as np

from fedcare.core.message import JobRef, Task, TaskKind
from fedcare.core.policy import CodePolicy
from fedcare.datasets import heart
from fedcare.jobs.heart_site import initial_weights
from fedcare.site.runtime import SiteRuntime

HEART = "fedcare.jobs.heart:make_job"


def task(entry_point=HEART, kind=TaskKind.EVALUATE, job_id="j1", params=None):
    return Task(f"{job_id}/r1/{kind.value}/va", job_id, 1, kind, initial_weights(0),
                {"local_steps": 2, "lr": 0.1},
                job=JobRef(entry_point, json.dumps({"seed": 0} if params is None else params),
                           3, 4))


def test_site_reads_its_own_data_dir(tmp_path):
    shutil.copy(heart._DATA_DIR / "processed.va.data", tmp_path)
    reply = SiteRuntime("va", data_dir=tmp_path).handle(task())
    assert reply.error is None and reply.result.num_samples == 45
    reply = SiteRuntime("va", data_dir=tmp_path / "empty").handle(task())
    assert "cannot start the job" in reply.error and "not found" in reply.error


def test_by_default_a_site_runs_built_in_jobs_only():
    runtime = SiteRuntime("va")
    assert runtime.handle(task()).error is None
    # The attack of issue 11: a (compromised) server names any importable function.
    refused = runtime.handle(task("os:system", job_id="j2"))
    assert refused.error == ("site policy refuses job j2: entry point os:system is neither a "
                             "built-in job nor in this policy's code.entry_points")
    assert runtime.handle(task("toyjob:make_job", job_id="j3")).error.startswith(
        "site policy refuses job j3")


def test_a_site_runs_what_its_code_policy_lists():
    runtime = SiteRuntime("va", code=CodePolicy(builtin_jobs=False,
                                                entry_points=["toyjob:make_job"]))
    ran = runtime.handle(task("toyjob:make_job", kind=TaskKind.PREPARE, params={}))
    assert ran.error is None
    refused = runtime.handle(task(HEART, job_id="j2"))
    assert "built in, but this policy has builtin_jobs: false" in refused.error


def test_trainer_state_persists_per_job():
    runtime = SiteRuntime("va")
    first = runtime.handle(task(kind=TaskKind.TRAIN))
    second = runtime.handle(task(kind=TaskKind.TRAIN))
    assert first.error is None and second.error is None
    assert len(runtime._agents) == 1
    assert np.allclose(first.result.weights["linear.weight"],
                       second.result.weights["linear.weight"])
