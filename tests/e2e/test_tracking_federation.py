"""Experiment tracking on a real federation (server, four hospitals, admin over mTLS on
127.0.0.1): the server kit's ``tracking:`` section, TensorBoard event files of the heart job."""

import json
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

HEART = "fedcare.jobs.heart:make_job"
HOSPITALS = ["cleveland", "hungary", "switzerland", "va"]


def read_events(folder):
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                  for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def test_the_server_kit_tracks_every_round_of_the_heart_job(tmp_path, monkeypatch):
    from pocfed import ended, submit_toy, toy_federation

    # as the server's operator writes it: a folder relative to the kit
    enable = lambda fed: fed.edit_kit(  # noqa: E731
        "server", lambda config: config.update(tracking={"tensorboard": "tensorboard"}))
    with toy_federation(tmp_path, monkeypatch, HOSPITALS, edit=enable) as fed:
        started = time.monotonic()
        job_id = submit_toy(fed, {"num_rounds": 2, "seed": 0}, entry_point=HEART)
        state = ended(fed, job_id, timeout_s=60)
        job_s = time.monotonic() - started  # about 15 s on two busy cores
        assert state["status"] == "finished", state
        records = json.loads(fed.admin().Metrics(pb.JobRef(job_id=job_id), timeout=10).json)
        root = fed.kits["server"] / "tensorboard" / job_id
    # the server's numbers: its federated evaluation, step = round
    server = read_events(root / "server")
    assert server["eval/accuracy"] == [
        (r["round_num"], pytest.approx(r["eval_metrics"]["accuracy"], rel=1e-6))
        for r in records]
    assert [step for step, _ in server["eval/accuracy"]] == [0, 1, 2]
    assert server["round/sites_trained"] == [(0, 0.0), (1, 4.0), (2, 4.0)]
    # each hospital's own, as the server received them
    assert sorted(p.name for p in (root / "sites").iterdir()) == HOSPITALS
    for site in HOSPITALS:
        events = read_events(root / "sites" / site)
        assert events["eval/accuracy"] == [
            (r["round_num"], pytest.approx(r["site_eval"][site]["metrics"]["accuracy"],
                                           rel=1e-6)) for r in records]
        assert events["train/num_samples"] == [
            (r["round_num"], float(r["site_train"][site]["num_samples"]))
            for r in records if r["round_num"] >= 1]
    assert job_s < 45
