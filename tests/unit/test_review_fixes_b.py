"""Review fixes: job runner survives job bugs, stable site indices, checked federated statistics,
bounded site agents."""

import dataclasses
import json
import time

import numpy as np
import pytest
import toyjob
from certs import ThrowawayCA

from fedcare.algorithms.fedavg import FedAvg
from fedcare.core.errors import AggregationError
from fedcare.core.message import (
    JobRef,
    Task,
    TaskKind,
)
from fedcare.core.weights import Weights
from fedcare.server.service import FederationServer, JobTransport
from fedcare.server.statistics import SumAggregator
from fedcare.server.store import JobRow
from fedcare.site.runtime import SiteRuntime
from fedcare.transport.memory import MemoryTransport


# -- 1. the job runner survives a job that raises something other than a FedcareError -----
class _Boom(FedAvg):
    def select_sites(self, round_num, available):
        raise RuntimeError("strategy bug")


def crashing_job():
    return dataclasses.replace(toyjob.make_job(num_rounds=1), strategy=_Boom())


def _wait_done(server, job_ids, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(server.store.job(j).status not in ("queued", "running") for j in job_ids):
            return
        time.sleep(0.1)


def test_runner_fails_a_crashing_job_and_runs_the_next(tmp_path):
    tls, _ = ThrowawayCA().issue("server", "server")
    server = FederationServer(tls, tmp_path / "ws", connect_timeout_s=5, code=toyjob.TOY_CODE)
    server.start()
    grpc_transport, server.transport = server.transport, MemoryTransport(
        {f"site-{i}": SiteRuntime(f"site-{i}", code=toyjob.TOY_CODE).handle for i in range(3)})
    grpc_transport.close()
    try:
        crash = server.submit("test_review_fixes_b:crashing_job", {}, "alice")
        good = server.submit("toyjob:make_job", {"num_rounds": 1}, "alice")
        _wait_done(server, [crash, good])
        row = server.store.job(crash)
        assert row.status == "failed"
        assert row.error == "RuntimeError: strategy bug"
        assert server.store.job(good).status == "finished"
        assert server.store.job(good).round_num == 1
        assert server._runner.is_alive()
    finally:
        server.stop()


# -- 2. a site's index is fixed for the whole job and unique ---------------------------------
class _Fake:
    def __init__(self, ids):
        self.ids, self.sent = list(ids), []

    def site_ids(self):
        return list(self.ids)

    def send(self, site_id, task):
        self.sent.append((site_id, task.job.site_index, task.job.num_sites))


def _row():
    return JobRow("j", "m:f", {}, "running", "x", 0, 0, 1, None)


def test_late_site_gets_a_new_index_and_nobody_changes():
    fake = _Fake(["site-b", "site-c"])
    transport = JobTransport(fake, _row())
    for site in ("site-b", "site-c"):
        transport.send(site, Task("t", "j", 0, TaskKind.STATISTICS))
    fake.ids = ["site-a", "site-b", "site-c"]  # site-a connects late and sorts first
    for site in ("site-a", "site-b", "site-c"):
        transport.send(site, Task("t", "j", 1, TaskKind.TRAIN))
    assert fake.sent == [("site-b", 0, 2), ("site-c", 1, 2),
                         ("site-a", 2, 3), ("site-b", 0, 3), ("site-c", 1, 3)]


def test_declared_sites_are_numbered_in_declared_order():
    fake = _Fake(["z", "y"])  # x has not connected yet
    transport = JobTransport(fake, _row(), ("x", "z", "y"))
    transport.send("y", Task("t", "j", 1, TaskKind.TRAIN))
    transport.send("z", Task("t", "j", 1, TaskKind.TRAIN))
    fake.ids.append("x")
    transport.send("x", Task("t", "j", 1, TaskKind.TRAIN))
    assert fake.sent == [("y", 2, 3), ("z", 1, 3), ("x", 0, 3)]


# -- 3. federated statistics: declared spec, checked result ------------------------------------
def _stats(n, total, shape=(1,)):
    return Weights({"n": np.full(shape, n, np.float64), "sum": np.array([total])})


def test_spec_refuses_a_malformed_first_site_not_the_honest_ones():
    sums = SumAggregator(spec=_stats(0.0, 0.0))
    with pytest.raises(ValueError, match="n: shape"):
        sums.add(_stats(1.0, 1.0, shape=(2,)), 1)
    sums.add(_stats(10.0, 20.0), 10)
    sums.add(_stats(30.0, 40.0), 30)
    assert sums.num_results == 2 and sums.num_samples == 40
    out = sums.finalize(toyjob.MeanTarget(), Weights(toyjob.initial()))
    np.testing.assert_allclose(out["b"], [1.5, 1.5, 1.5])


def test_without_spec_the_first_site_sets_the_shape():
    sums = SumAggregator()
    sums.add(_stats(1.0, 1.0, shape=(2,)), 1)
    with pytest.raises(ValueError, match="n: shape"):
        sums.add(_stats(10.0, 20.0), 10)


def test_negative_count_that_cancels_fails_naming_the_statistic():
    sums = SumAggregator()
    sums.add(_stats(-50.0, 1.0), 1)  # the stats_nan.py attack: the counts sum to zero
    sums.add(_stats(20.0, 10.0), 20)
    sums.add(_stats(30.0, 10.0), 30)
    with pytest.raises(AggregationError, match=r"statistic mean_target.*NaN or infinity.*'b'"):
        sums.finalize(toyjob.MeanTarget(), Weights(toyjob.initial()))


def test_overflowing_sums_and_empty_totals_fail():
    sums = SumAggregator()
    sums.add(_stats(1.0, 1e308), 1)
    sums.add(_stats(1.0, 1e308), 1)
    with pytest.raises(AggregationError,
                       match=r"statistic mean_target: sums overflow in \['sum'\]"):
        sums.finalize(toyjob.MeanTarget(), Weights(toyjob.initial()))
    with pytest.raises(AggregationError, match="total count is 0 from 0 site"):
        SumAggregator().finalize(toyjob.MeanTarget(), Weights(toyjob.initial()))


# -- 4. a site keeps the agents of a bounded number of jobs ----------------------------------
def _toy_task(job_id):
    return Task(f"{job_id}/r1/train/site-0", job_id, 1, TaskKind.TRAIN, Weights(toyjob.initial()),
                job=JobRef("toyjob:make_job", json.dumps({}), 0, 3))


def test_site_frees_agents_of_old_jobs():
    runtime = SiteRuntime("site-0", code=toyjob.TOY_CODE)
    for i in range(5):
        assert runtime.handle(_toy_task(f"j{i}")).error is None
        first = runtime._agents[f"j{i}"]
        assert runtime.handle(_toy_task(f"j{i}")).error is None
        assert runtime._agents[f"j{i}"] is first  # kept for the rest of its job
    assert list(runtime._agents) == ["j4"]


def test_least_recently_used_agent_is_freed_first():
    runtime = SiteRuntime("site-0", max_jobs=2, code=toyjob.TOY_CODE)
    for job_id in ("a", "b", "a", "c"):
        assert runtime.handle(_toy_task(job_id)).error is None
    assert list(runtime._agents) == ["a", "c"]


def test_abort_between_pick_up_and_start_is_not_lost(tmp_path):
    tls, _ = ThrowawayCA().issue("server", "server")
    # runner not started
    server = FederationServer(tls, tmp_path / "ws", connect_timeout_s=5, code=toyjob.TOY_CODE)
    grpc_transport, server.transport = server.transport, MemoryTransport(
        {f"site-{i}": SiteRuntime(f"site-{i}", code=toyjob.TOY_CODE).handle for i in range(3)})
    grpc_transport.close()
    try:
        job_id = server.submit("toyjob:make_job", {"num_rounds": 1}, "alice")
        row = server.store.next_job()  # the runner has just picked the queued job up ...
        assert row.job_id == job_id and row.status == "queued"
        assert server.abort(job_id, "alice") == "aborting"  # ... when an admin aborts it
        server._run_job(row)
        after = server.store.job(job_id)
        assert after.status == "aborted" and after.round_num == 0
        assert not list((tmp_path / "ws" / "jobs" / job_id).rglob("*.npz"))  # nothing ran
    finally:
        server.transport.close()
