"""The simulator's Ray backend on a tiny local Ray (2 CPUs), one for the whole module.

Ray takes 5-10 s to start, so the cluster is shared; each simulation starts and kills its own
actors. Skipped, saying so, when the ray extra is not installed.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fedcare[ray]'")

import regressionjob  # noqa: E402  (tests/, on the path)
import toyjob  # noqa: E402
from raysites import EchoSites  # noqa: E402  (this folder, on the path)

from fedcare import load_job, simulate  # noqa: E402
from fedcare.core.errors import ConfigError  # noqa: E402
from fedcare.core.message import Task, TaskKind  # noqa: E402
from fedcare.core.policy import SitePolicy  # noqa: E402
from fedcare.core.weights import Weights  # noqa: E402
from fedcare.transport.ray import RayTransport  # noqa: E402
from fedcare.transport.resources import SiteResources  # noqa: E402

pytestmark = pytest.mark.slow
WAIT_S = 60.0  # an upper bound for a reply that is expected; never reached when all is well


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A 2-CPU Ray whose workers can import the tests' jobs and handlers, as this process."""
    here = Path(__file__).parent
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(here), str(here.parents[1]), *filter(None, [saved])])
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20,
                 logging_level="WARNING")
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    yield
    ray.shutdown()


def bits(weights: Weights) -> dict[str, bytes]:
    return {name: array.tobytes() for name, array in weights.items()}


def test_ray_gives_the_thread_backends_model_bit_for_bit():
    threads = simulate(regressionjob.make_job(num_rounds=3, fraction=0.75), num_sites=4)
    on_ray = simulate(regressionjob.make_job(num_rounds=3, fraction=0.75), num_sites=4,
                      backend="ray")
    assert bits(on_ray.weights) == bits(threads.weights)
    assert bits(on_ray.weights) != bits(regressionjob.initial())  # it did train
    assert [r.trained_sites for r in on_ray.history.rounds] == [
        r.trained_sites for r in threads.history.rounds]
    assert len(on_ray.history.rounds[1].trained_sites) == 3  # fraction 0.75 of 4 sites
    # each site's evaluation is the same to the bit; the weighted mean over sites is summed
    # in arrival order (in float64), so only to its last bits
    assert on_ray.history.rounds[-1].site_eval == threads.history.rounds[-1].site_eval
    assert on_ray.history.rounds[-1].eval_metrics == pytest.approx(
        threads.history.rounds[-1].eval_metrics, rel=1e-12)
    assert on_ray.summary == "finished with 4 of 4 sites"


def test_a_job_with_an_entry_point_is_rebuilt_in_the_actors():
    params = {"num_rounds": 2, "seed": 3}
    threads = simulate(load_job("regressionjob:make_job", params), num_sites=3)
    # half a CPU per site: 3 sites fit the 2 CPUs, so each site gets an actor of its own
    on_ray = simulate(load_job("regressionjob:make_job", params), num_sites=3, backend="ray",
                      site_resources=SiteResources(num_cpus=0.5))
    assert bits(on_ray.weights) == bits(threads.weights)


def _task(task_id: str, weights: Weights | None = None) -> Task:
    return Task(task_id, "job", 1, TaskKind.EVALUATE, weights=weights)


def _replies(transport: RayTransport, count: int) -> dict[str, object]:
    replies = {}
    deadline = time.monotonic() + WAIT_S
    while len(replies) < count and time.monotonic() < deadline:
        reply = transport.receive(1.0)
        if reply is not None:
            replies[reply.site_id] = reply
    assert len(replies) == count, f"only {sorted(replies)} replied"
    return replies


def test_the_model_goes_into_the_object_store_once_and_is_read_in_place(monkeypatch):
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value: puts.append(value) or real_put(value))
    model = Weights({"w": np.arange(300_000, dtype=np.float32)})  # 1.2 MB: in shared memory
    sites = ["a", "b", "c", "d", "e"]
    transport = RayTransport(sites, EchoSites())
    try:
        assert transport.pool_size == 2  # 1 CPU per site, 2 CPUs: two actors host five sites
        for site in sites:
            transport.send(site, _task(f"t-{site}", model))
        replies = _replies(transport, len(sites))
    finally:
        transport.close()
    assert len(puts) == 1
    expected = float(np.sum(model["w"], dtype=np.float64))
    for reply in replies.values():
        assert reply.result.metrics["sum"] == expected
        assert reply.result.metrics["writable"] == 0.0
    assert len({r.result.metrics["pid"] for r in replies.values()}) == 2


def test_a_failing_site_replies_with_its_error_and_a_dead_actor_loses_its_sites():
    sites = ["a", "b", "c"]  # a and c share actor 0, b is alone on actor 1
    transport = RayTransport(sites, EchoSites(crash=("b",), die=("a",)))
    try:
        for site in sites:
            transport.send(site, _task(f"t-{site}"))
        replies = _replies(transport, 3)
        assert replies["b"].error == "ValueError: b cannot train"
        assert not replies["b"].connection_lost
        assert replies["a"].connection_lost and "actor died" in replies["a"].error
        assert replies["c"].connection_lost  # its task was queued on the dead actor
        assert transport.site_ids() == ["b"]
    finally:
        transport.close()
    assert transport.site_ids() == []


def test_a_job_ray_cannot_serialize_is_refused_with_the_way_out():
    job = regressionjob.make_job()
    lock = threading.Lock()  # a job holding a lock cannot be pickled

    def trainer(ctx):
        with lock:
            return regressionjob.RegressionTrainer(ctx, 1, 0.1)

    job = dataclasses.replace(job, trainer=trainer)
    with pytest.raises(ConfigError, match=r"cannot be sent to Ray's actors.*module:function"):
        simulate(job, num_sites=2, backend="ray")


def test_each_sites_policy_applies_on_ray():
    clip = SitePolicy.model_validate({"outbound": [{"clip_update_norm": {"max_norm": 0.5}}]})
    # site-1's policy clips its update (norm 6 -> 0.5): its entries arrive as 2 / 12
    expected = (10 * 1 + 20 * (2 / 12) + 30 * 3) / 60
    result = simulate(toyjob.make_job(num_rounds=1), backend="ray",
                      site_policy={"site-1": clip})
    np.testing.assert_allclose(result.weights["w"], expected, rtol=1e-6)


def test_secure_aggregation_signs_and_checks_keys_on_ray_as_in_threads():
    # the sites' throwaway identities travel to the actors as PEM and sign their key adverts
    threads = simulate(toyjob.make_secure_job(num_rounds=2))
    on_ray = simulate(toyjob.make_secure_job(num_rounds=2), backend="ray")
    assert on_ray.summary == threads.summary == "finished with 4 of 4 sites"
    assert bits(on_ray.weights) == bits(threads.weights)
