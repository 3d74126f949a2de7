"""Secure aggregation over the real mTLS transport: masked uploads folded into the modular sum
as they arrive, and a site process killed after it sent its masked update."""

import json

import numpy as np
import pytest
import toyjob
from pocfed import ended, submit_toy, toy_federation
from test_grpc_federation import run_job, served

from fedcare.algorithms.secagg import MaskedSumAggregator
from fedcare.core.secagg.fixedpoint import FixedPoint
from fedcare.transport.codec import decode
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast


def assert_fedavg_within_bound(weights, indices, num_sites, num_values):
    initial = toyjob.secure_initial(num_values)
    expected = toyjob.secure_fedavg(indices, initial)
    bound = FixedPoint(1.0, num_sites).error_bound(len(indices), 1.0)
    for name, value in expected.items():
        got = np.asarray(weights[name], np.float64)
        slack = bound + np.spacing(np.abs(value).astype(np.float32)).astype(np.float64)
        assert (np.abs(got - value) <= slack).all(), name


def test_masked_uploads_are_folded_into_the_modular_sum_as_they_arrive(tmp_path, monkeypatch):
    streamed = []
    original = MaskedSumAggregator.stream

    def spy(self, site_id, num_samples, specs):
        streamed.append(site_id)
        return original(self, site_id, num_samples, specs)

    monkeypatch.setattr(MaskedSumAggregator, "stream", spy)
    with served(tmp_path, 3) as (stub, model):
        params = {"num_sites": 3, "num_rounds": 2, "num_values": 1_000_000}
        _, job_id, state = run_job(stub, "toyjob:make_secure_job", json.dumps(params))
        assert state["status"] == "finished", state
        assert sorted(streamed) == sorted(["site-0", "site-1", "site-2"] * 2)
        weights = model(job_id)
    # two rounds of FedAvg of the three sites' seeded noise: within the fixed-point bound of
    # each round and the float32 rounding of each model (about 5e-7 for values up to 4)
    expected = toyjob.secure_initial(1_000_000)
    for _ in range(2):
        expected = {k: v.astype(np.float32) for k, v in
                    toyjob.secure_fedavg(range(3), expected).items()}
    for name, value in expected.items():
        np.testing.assert_allclose(weights[name], value, rtol=0, atol=2e-6)


def test_a_site_killed_after_sending_its_masked_update_stays_in_the_sum(tmp_path, monkeypatch):
    sites = [f"site-{i}" for i in range(4)]
    with toy_federation(tmp_path, monkeypatch, sites) as fed:
        job_id = submit_toy(fed, {"num_sites": 4, "threshold": 3, "num_values": 20_000,
                                  "modes": {"site-1": "crash_at_unmask"}},
                            entry_point="toyjob:make_secure_job")
        state = ended(fed, job_id)
        assert state["status"] == "finished", state
        assert fed.sites["site-1"].wait(timeout=30) == 3  # the process exited at unmasking
        chunks = fed.admin().Download(pb.JobRef(job_id=job_id), timeout=30)
        weights = decode(b"".join(c.data for c in chunks)).result.weights
        # FedAvg of all four: site-1's masked update is in the sum, its self mask was rebuilt
        # from the shares of the three others (t = 3)
        assert_fedavg_within_bound(weights, range(4), 4, 20_000)
        assert state["failed_sites"]["site-1"]["kind"] == "secagg.unmask"
