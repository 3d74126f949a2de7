"""Experiment tracking: what a run's history holds, read back from TensorBoard and MLflow."""

import dataclasses
import logging
import socket
import threading
import time

import pytest
import toyjob
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from fedcare import TrackingConfig, load_job, simulate
from fedcare.core.errors import ConfigError
from fedcare.datasets.heart import HOSPITALS
from fedcare.provision.project import KitConfig, format_errors
from fedcare.server.events import RunState
from fedcare.server.history import RoundRecord, SiteFailure, SiteMetrics, record_from_dict
from fedcare.server.tracking import Tracker, round_scalars
from fedcare.server.tracking.tensorboard import TensorBoardWriter

HEART = "fedcare.jobs.heart:make_job"


def read_events(folder):
    """tag -> [(step, value)] of the event files in one run folder."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                  for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def approx(pairs):
    return [(step, pytest.approx(value, rel=1e-6, abs=1e-7)) for step, value in pairs]


def tracking_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("fedcare.server.tracking") and r.levelno == logging.WARNING]


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once it is closed


def test_heart_run_in_tensorboard_equals_its_history(tmp_path):
    started = time.monotonic()
    result = simulate(load_job(HEART, {"num_rounds": 3, "seed": 0}), run_dir=tmp_path / "run",
                      tracking=TrackingConfig(tensorboard=str(tmp_path / "tb")))
    history = result.history
    root = tmp_path / "tb" / "run"  # the run folder's name names the run
    server = read_events(root / "server")
    assert server["eval/accuracy"] == approx(history.metric("accuracy"))
    assert [s for s, _ in server["eval/accuracy"]] == [0, 1, 2, 3]
    assert server["train/loss"] == approx(
        [(r.round_num, r.train_metrics["loss"]) for r in history.rounds if r.train_metrics])
    assert server["round/duration_s"] == approx([(r.round_num, r.duration_s)
                                                 for r in history.rounds])
    assert server["round/sites_trained"] == [(0, 0.0), (1, 4.0), (2, 4.0), (3, 4.0)]
    assert sorted(p.name for p in (root / "sites").iterdir()) == sorted(HOSPITALS)
    for site in HOSPITALS:
        events = read_events(root / "sites" / site)
        assert events["eval/accuracy"] == approx(history.metric("accuracy", site_id=site))
        assert events["eval/num_samples"] == [
            (r.round_num, float(r.site_eval[site].num_samples)) for r in history.rounds]
        trained = [r for r in history.rounds if site in r.site_train]
        assert [r.round_num for r in trained] == [1, 2, 3]
        assert events["train/loss"] == approx(
            [(r.round_num, r.site_train[site].metrics["loss"]) for r in trained])
        assert events["train/num_samples"] == [
            (r.round_num, float(r.site_train[site].num_samples)) for r in trained]
    # the sites' training results add up to what the server aggregated
    last = history.rounds[-1]
    assert sum(s.num_samples for s in last.site_train.values()) == pytest.approx(
        server["train/num_samples"][-1][1])
    assert time.monotonic() - started < 30


def test_mlflow_runs_carry_job_and_site_tags_and_every_round(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path / 'mlruns'}"
    result = simulate(toyjob.make_job(num_rounds=2), run_dir=tmp_path / "toy-run",
                      tracking=TrackingConfig(mlflow_uri=uri, mlflow_experiment="toys"))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("toys")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags["fedcare.role"] == "server")
    assert parent.data.tags["job_id"] == "toy-run"
    assert parent.data.tags["job_name"] == "toy"
    assert parent.data.tags["project"] == "fedcare"
    assert parent.info.status == "FINISHED"
    eval_mse = client.get_metric_history(parent.info.run_id, "eval/mse")
    assert [(m.step, m.value) for m in eval_mse] == approx(result.history.metric("mse"))
    sites = {r.data.tags["site_id"]: r for r in runs if r.data.tags["fedcare.role"] == "site"}
    assert sorted(sites) == ["site-0", "site-1", "site-2"]
    for site, run in sites.items():
        assert run.data.tags["job_id"] == "toy-run"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        loss = client.get_metric_history(run.info.run_id, "train/loss")
        assert [(m.step, m.value) for m in loss] == approx(
            [(r.round_num, r.site_train[site].metrics["loss"]) for r in result.history.rounds
             if site in r.site_train])
        mse = client.get_metric_history(run.info.run_id, "eval/mse")
        assert [(m.step, m.value) for m in mse] == approx(
            result.history.metric("mse", site_id=site))


def test_a_resumed_job_goes_on_in_its_mlflow_runs(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = TrackingConfig(mlflow_uri=f"file://{tmp_path / 'mlruns'}")

    def record(round_num):
        return RoundRecord(round_num, ["a"], {"loss": 1.0 / (round_num + 1)}, {}, {},
                           site_train={"a": SiteMetrics(10, {"loss": float(round_num)})})

    first = Tracker(config, "job-7", project="heart-federation")
    first.on_round_saved(record(1))
    first.on_run_end(RunState.FAILED, "aborted on request")  # the server stopped
    again = Tracker(config, "job-7", project="heart-federation")  # and resumed the job
    again.on_round_saved(record(2))
    again.on_run_end(RunState.FINISHED, None)
    client = MlflowClient(tracking_uri=config.mlflow_uri)
    experiment = client.get_experiment_by_name("heart-federation")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["fedcare.role"] for r in runs) == ["server", "site"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all("error" not in r.data.tags for r in runs)
    site = next(r for r in runs if r.data.tags["fedcare.role"] == "site")
    assert [(m.step, m.value) for m in client.get_metric_history(
        site.info.run_id, "train/loss")] == [(1, 1.0), (2, 2.0)]


def test_runs_without_a_folder_get_runs_of_their_own(tmp_path):
    tracking = TrackingConfig(tensorboard=str(tmp_path))
    for _ in range(2):
        simulate(toyjob.make_job(num_rounds=1), tracking=tracking)
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert len(runs) == 2 and all(r.startswith("toy-") for r in runs), runs


def test_backends_that_cannot_open_warn_once_each_and_the_run_completes(tmp_path, caplog):
    (tmp_path / "a-file").write_text("not a folder")
    port = closed_port()
    tracking = TrackingConfig(tensorboard=str(tmp_path / "a-file"),
                              mlflow_uri=f"http://127.0.0.1:{port}")
    plain = simulate(toyjob.make_job(num_rounds=2))
    result = simulate(toyjob.make_job(num_rounds=2), run_dir=tmp_path / "run",
                      tracking=tracking)
    assert [r.eval_metrics for r in result.history.rounds] == [  # arrival order: last bits
        pytest.approx(r.eval_metrics, rel=1e-12) for r in plain.history.rounds]
    assert (tmp_path / "run" / "metrics.json").is_file()
    warnings = tracking_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert f"job run: cannot track to TensorBoard in {tmp_path / 'a-file'}" in warnings[0]
    assert f"cannot track to MLflow at http://127.0.0.1:{port}: ConnectionError: cannot " \
           f"reach 127.0.0.1:{port}" in warnings[1]
    assert all(w.endswith("the run goes on without it") for w in warnings)


def test_a_backend_failing_mid_run_is_dropped_with_one_warning(tmp_path, monkeypatch, caplog):
    write = TensorBoardWriter.write

    def full_disk_from_round_2(self, scalars):
        if scalars[0].step >= 2:
            raise OSError(28, "No space left on device")
        write(self, scalars)

    monkeypatch.setattr(TensorBoardWriter, "write", full_disk_from_round_2)
    result = simulate(toyjob.make_job(num_rounds=4), run_dir=tmp_path / "run",
                      tracking=TrackingConfig(tensorboard=str(tmp_path / "tb")))
    assert [r.round_num for r in result.history.rounds] == [0, 1, 2, 3, 4]
    warnings = tracking_warnings(caplog)
    assert warnings == ["job run: TensorBoard tracking stopped at round 2: OSError: [Errno 28] "
                        "No space left on device; the run goes on and its own history "
                        "(metrics.json) is not affected"]
    events = read_events(tmp_path / "tb" / "run" / "server")
    assert [s for s, _ in events["eval/mse"]] == [0, 1]


def test_a_slow_backend_delays_no_round_and_the_end_waits_a_bounded_time(tmp_path, monkeypatch,
                                                                         caplog):
    release = threading.Event()
    monkeypatch.setattr(TensorBoardWriter, "write", lambda self, scalars: release.wait(10))
    tracker = Tracker(TrackingConfig(tensorboard=str(tmp_path)), "job-1", close_timeout_s=0.3)
    record = RoundRecord(1, ["a"], {"loss": 1.0}, {}, {})
    started = time.monotonic()
    for _ in range(5):
        tracker.on_round_saved(record)
    assert time.monotonic() - started < 0.2
    tracker.on_run_end(RunState.FINISHED, None)
    waited = time.monotonic() - started
    release.set()
    assert 0.3 <= waited < 2
    assert tracking_warnings(caplog) == [
        "job job-1: experiment tracking still writing after 0.3 s; left to finish in the "
        "background"]


def test_round_scalars_name_the_server_and_each_site():
    record = RoundRecord(
        3, ["a", "b"], {"loss": 0.5, "dp_epsilon": 1.5}, {"accuracy": 0.8},
        {"a": SiteMetrics(10, {"accuracy": 0.7}), "b": SiteMetrics(30, {"accuracy": 0.9})},
        [SiteFailure("c", 3, "train", "timeout")], 2.5,
        {"a": SiteMetrics(40, {"loss": 0.6}), "b": SiteMetrics(60, {"loss": 0.4})})
    got = {(s.site_id, s.tag): s.value for s in round_scalars(record)}
    assert {s.step for s in round_scalars(record)} == {3}
    assert got == {
        (None, "train/loss"): 0.5, (None, "train/dp_epsilon"): 1.5,
        (None, "eval/accuracy"): 0.8, (None, "train/num_samples"): 100.0,
        (None, "eval/num_samples"): 40.0, (None, "round/duration_s"): 2.5,
        (None, "round/sites_trained"): 2.0, (None, "round/failures"): 1.0,
        ("a", "train/loss"): 0.6, ("a", "train/num_samples"): 40.0,
        ("a", "eval/accuracy"): 0.7, ("a", "eval/num_samples"): 10.0,
        ("b", "train/loss"): 0.4, ("b", "train/num_samples"): 60.0,
        ("b", "eval/accuracy"): 0.9, ("b", "eval/num_samples"): 30.0,
    }


def test_records_keep_site_training_results_and_read_older_ones():
    record = RoundRecord(1, ["a"], {"loss": 1.0}, {}, {}, site_train={"a": SiteMetrics(5, {})})
    assert record_from_dict(dataclasses.asdict(record)) == record
    older = dataclasses.asdict(record)
    del older["site_train"]  # a store written before site_train was kept
    assert record_from_dict(older).site_train == {}


@pytest.mark.parametrize(("section", "error"), [
    ({"mlflow_uri": "ftp://mlflow"}, "tracking.mlflow_uri: 'ftp://mlflow' is not a tracking "
                                     "URI the MLflow client can write to"),
    ({"mlflow_uri": "http://:5000"}, "tracking.mlflow_uri: 'http://:5000' names no host"),
    ({"tensorboard": ""}, "tracking.tensorboard: String should have at least 1 character"),
    ({"tensorbord": "tb"}, "tracking.tensorbord: Extra inputs are not permitted"),
])
def test_a_bad_tracking_section_fails_naming_the_field(section, error):
    with pytest.raises(Exception) as info:
        KitConfig.model_validate({"federation": "f", "name": "server", "kind": "server",
                                  "server_host": "h", "server_port": 1, "tracking": section})
    assert format_errors(info.value).startswith(error)


def test_only_the_server_kit_tracks():
    with pytest.raises(Exception) as info:
        KitConfig.model_validate({"federation": "f", "name": "h1", "kind": "site",
                                  "server_host": "h", "server_port": 1,
                                  "tracking": {"tensorboard": "tb"}})
    assert format_errors(info.value) == "tracking: only the server kit tracks experiments"


def test_cli_tracking_options_fail_naming_the_option():
    from fedcare.cli.main import _tracking

    with pytest.raises(ConfigError, match=r"^--mlflow-uri: 'nope' is not a tracking URI"):
        _tracking(None, "nope", None)
    assert _tracking(None, None, None) is None
