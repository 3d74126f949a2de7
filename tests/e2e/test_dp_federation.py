"""Differential privacy across real processes on 127.0.0.1 (server, four hospitals, admin over
mTLS): DP-FedAvg at the server, DP-SGD at every site, and Gaussian noise from each hospital's
own kit policy, each reporting its epsilon into the job's metrics."""

import json
import math
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from fedcare.cli.poc import PocFederation
from fedcare.core.dp import Sampling, dp_epsilon
from fedcare.dpsgd import ALPHAS
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

HEART = "fedcare.jobs.heart:make_job"
HOSPITALS = ["cleveland", "hungary", "switzerland", "va"]
NOISE = {"clip_norm": 0.5, "noise_multiplier": 2.0, "num_sites": 4, "frozen": ["^scaler_"]}


@pytest.fixture()
def federation(tmp_path):
    fed = PocFederation(tmp_path / "poc", HOSPITALS)
    fed.provision()
    for name in HOSPITALS:  # each hospital's IT officer puts the noise filter into its kit
        fed.edit_kit(name, lambda c: c.update(policy={"outbound": [{"gaussian_noise": NOISE}]}))
    fed.start_server()
    try:
        fed.start_sites()
        fed.wait_for_sites(4)
        yield fed
    finally:
        fed.stop()
    for proc in [fed.server, *fed.sites.values()]:
        assert proc.poll() is not None, f"pid {proc.pid} still running"


def test_every_mechanism_reports_its_epsilon_in_the_jobs_metrics(federation):
    from pocfed import ended

    fed = federation
    rounds = 3
    params = {"num_rounds": rounds, "split": "flamby", "algorithm": "dp_fedavg",
              "algorithm_params": {"clip_norm": 0.5, "target_epsilon": 8.0},
              "dp": {"max_grad_norm": 1.0, "noise_multiplier": 1.0}}
    job_id = fed.admin().Submit(pb.SubmitRequest(entry_point=HEART,
                                                 params_json=json.dumps(params)),
                                timeout=30).job_id
    state = ended(fed, job_id, timeout_s=180)
    assert state["status"] == "finished", state
    records = json.loads(fed.admin().Metrics(pb.JobRef(job_id=job_id), timeout=10).json)
    trained = [r for r in records if r["round_num"] >= 1]
    assert len(trained) == rounds and all(len(r["trained_sites"]) == 4 for r in trained)
    metrics = [r["train_metrics"] for r in trained]
    # the server's own: dp-accounting's epsilon, within the target after the last round
    server = [m["dp_fedavg_epsilon"] for m in metrics]
    assert server == sorted(server) and 7.9 < server[-1] <= 8.0
    # each site's DP-SGD: Opacus's number for 5 full-batch steps a round
    opacus = RDPAccountant()
    opacus.history = [(1.0, 1.0, 5 * rounds)]
    assert metrics[-1]["dp_sgd_epsilon"] == pytest.approx(
        opacus.get_epsilon(1e-5, alphas=ALPHAS), rel=1e-9)
    # each kit's noise filter: multiplier z / sqrt(n) on its own update, once a round
    assert metrics[-1]["gaussian_noise_epsilon"] == pytest.approx(
        dp_epsilon(2.0 / math.sqrt(4), 1e-5, [Sampling()] * rounds), rel=1e-9)
    # the server ran the job's server half, its accountant included, without torch
    assert "libtorch" not in Path(f"/proc/{fed.server.pid}/maps").read_text()
