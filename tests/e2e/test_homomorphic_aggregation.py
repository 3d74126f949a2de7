"""Homomorphic (CKKS) aggregation over the real mTLS transport: site processes encrypt, the
server adds ciphertexts with the public context, two sites decrypt; FedAvg within 1e-4."""

import json

import numpy as np
import pytest
import toyjob
from test_grpc_federation import run_job, served

from fedcare.core.ckks import CkksKeys

pytest.importorskip("tenseal")

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast


def test_homomorphic_rounds_over_mtls_give_fedavgs_model(tmp_path, monkeypatch):
    added = []
    original = CkksKeys.add

    def spy(self, total, chunks):  # at the server: the public context only
        added.append(self.is_private)
        return original(self, total, chunks)

    monkeypatch.setattr(CkksKeys, "add", spy)
    with served(tmp_path, 3) as (stub, model):
        params = {"num_sites": 3, "num_rounds": 2, "num_values": 20_000, "decryptors": 2}
        _, job_id, state = run_job(stub, "toyjob:make_he_job", json.dumps(params))
        assert state["status"] == "finished", state
        weights = model(job_id)
    assert added == [False] * 6  # 3 sites x 2 rounds of ciphertexts added by the server
    expected = toyjob.secure_initial(20_000)
    for _ in range(2):
        expected = {k: v.astype(np.float32) for k, v in
                    toyjob.secure_fedavg(range(3), expected).items()}
    for name, value in expected.items():
        assert np.abs(np.asarray(weights[name], np.float64) - value).max() < 1e-4, name
