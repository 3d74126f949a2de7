"""Round controller behaviour on the toy job: maths, bad input, min_sites, checkpoints."""

import json

import numpy as np
import pytest
import toyjob

from fedcare import AggregationError, Weights, simulate
from fedcare.server import Checkpointer, RunListener, load_weights

# FedAvg of targets 1, 2, 3 with 10, 20, 30 samples.
MEAN_ALL = (10 * 1 + 20 * 2 + 30 * 3) / 60


def test_fedavg_rounds_history_and_checkpoints(tmp_path):
    result = simulate(toyjob.make_job(num_rounds=3), run_dir=tmp_path)
    np.testing.assert_allclose(result.weights["w"], MEAN_ALL, rtol=1e-6)
    assert int(result.weights["count"]) == 3  # one increment per round, averaged
    rounds = result.history.rounds
    assert [r.round_num for r in rounds] == [0, 1, 2, 3]
    assert sorted(rounds[1].trained_sites) == ["site-0", "site-1", "site-2"]
    # train loss 1/target, sample-weighted: (10*1 + 20/2 + 30/3) / 60
    assert rounds[1].train_metrics["loss"] == pytest.approx(30 / 60)
    # federated evaluation is sample-weighted over n/2 = 5, 10, 15 test samples
    expected_mse = sum(n * (MEAN_ALL - t) ** 2 for n, t in [(5, 1), (10, 2), (15, 3)]) / 30
    assert rounds[3].eval_metrics["mse"] == pytest.approx(expected_mse, rel=1e-5)
    assert rounds[0].eval_metrics["mse"] == pytest.approx((5 * 1 + 10 * 4 + 15 * 9) / 30)
    saved = Checkpointer(tmp_path / "checkpoints").load_latest()
    assert saved is not None and saved[0] == 3
    assert saved[1].allclose(result.weights)
    assert len(list((tmp_path / "checkpoints").glob("*.npz"))) == 1
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "eval_mse@site-1" in header
    assert len(json.loads((tmp_path / "metrics.json").read_text())) == 4


def test_federated_statistics_run_before_round_one():
    result = simulate(toyjob.make_job(num_rounds=1, statistics=True))
    # b comes from the statistic (weighted mean target) and then from training
    assert result.history.rounds[0].round_num == 0
    np.testing.assert_allclose(result.weights["b"], MEAN_ALL, rtol=1e-6)


BAD_MODES = {
    "raise": "RuntimeError: disk full",
    "nan": "NaN or infinity in ['w']",
    "inf": "NaN or infinity in ['b']",
    "wrong_name": "missing parameters ['b']; unexpected parameters ['extra']",
    "wrong_shape": "w: shape [3, 2], expected [2, 3]",
    "wrong_dtype": "w: dtype float64, expected float32",
    "zero_samples": "num_samples must be an integer in 1..2**53, got 0",
    "huge_samples": "num_samples must be an integer in 1..2**53, got '~2**1329'",
    "huge_metric": "metrics ['loss'] are not finite",
    "nan_metric": "metrics ['loss'] are not finite",
    "not_a_result": "train() returned dict, expected TrainResult",
}


class Recorder(RunListener):
    def __init__(self):
        self.failures = []

    def on_failure(self, failure):
        self.failures.append(failure)


@pytest.mark.parametrize("mode", sorted(BAD_MODES))
def test_a_bad_site_is_named_and_the_round_goes_on(mode, caplog):
    recorder = Recorder()
    job = toyjob.make_job(num_rounds=2, modes={"site-2": mode}, min_sites=2)
    result = simulate(job, listener=recorder)
    # only sites 0 and 1 count: (10*1 + 20*2) / 30
    np.testing.assert_allclose(result.weights["w"], 50 / 30, rtol=1e-6)
    assert [(f.site_id, f.round_num) for f in recorder.failures] == [("site-2", 1),
                                                                     ("site-2", 2)]
    assert BAD_MODES[mode] in recorder.failures[0].message
    assert result.history.rounds[1].failures[0].site_id == "site-2"
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(m.startswith("job toy round 1: site site-2:") and BAD_MODES[mode] in m
               for m in logged)


def test_too_few_good_sites_stops_the_job_and_keeps_the_last_good_model(tmp_path):
    # sites 1 and 2 start failing in round 2; min_sites=2 cannot be met
    job = toyjob.make_job(num_rounds=4, modes={"site-1": "nan", "site-2": "raise"},
                          min_sites=2, fail_from_round=2)
    with pytest.raises(AggregationError) as info:
        simulate(job, run_dir=tmp_path)
    message = str(info.value)
    assert message.startswith("job toy round 2: train: only 1 valid result(s), min_sites=2")
    assert "site site-1: returned NaN" in message
    assert "site site-2: train raised RuntimeError" in message
    round_num, weights = Checkpointer(tmp_path / "checkpoints").load_latest()
    assert round_num == 1
    np.testing.assert_allclose(weights["w"], MEAN_ALL, rtol=1e-6)
    assert np.isfinite(weights["w"]).all()
    assert [r["round_num"] for r in json.loads((tmp_path / "metrics.json").read_text())] == [0, 1]


def test_extreme_but_valid_updates_do_not_overflow_the_average():
    job = toyjob.make_job(num_rounds=1, modes={"site-2": "extreme_values"})
    result = simulate(job)
    # 2**53 samples at 3e38 swamp sites 0 and 1, and the mean stays finite and in range
    np.testing.assert_allclose(result.weights["w"], 3e38, rtol=1e-6)
    assert np.isfinite(result.weights["w"]).all()


class ReleaseAfterRoundOne(Recorder):
    def on_round_end(self, record):
        if record.round_num == 1:
            toyjob.RELEASE.set()  # the hung site now answers, too late for round 1


def test_a_site_that_misses_the_deadline_is_left_out_and_its_late_result_discarded(caplog):
    toyjob.RELEASE.clear()
    recorder = ReleaseAfterRoundOne()
    job = toyjob.make_job(num_rounds=2, modes={"site-0": "hang"}, round_timeout_s=0.5,
                          min_sites=2)
    try:
        result = simulate(job, listener=recorder)
    finally:
        toyjob.RELEASE.set()
    round_one = result.history.rounds[1]
    assert sorted(round_one.trained_sites) == ["site-1", "site-2"]
    assert [f.site_id for f in round_one.failures if "round_timeout_s=0.5" in f.message] == [
        "site-0", "site-0"]  # its training and its evaluation
    late = [r.getMessage() for r in caplog.records if "discarding late" in r.getMessage()]
    assert any("toy/r1/train/site-0" in m for m in late)
    assert np.isfinite(result.weights["w"]).all()


def test_site_sampling_trains_a_fraction(tmp_path):
    result = simulate(toyjob.make_job(num_rounds=3, num_sites=6, fraction=0.5), run_dir=tmp_path)
    assert all(len(r.trained_sites) == 3 for r in result.history.rounds[1:])
    assert len(result.history.rounds[1].site_eval) == 6  # everyone evaluates


def test_checkpoint_never_unpickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_weights(path)


@pytest.mark.parametrize("strategy_name", ["FedAdam", "Scaffold"])
def test_resuming_restores_the_strategy_state(tmp_path, strategy_name):
    """Rounds 1-2, then a fresh controller (a restarted server) resumes 3-4 from the
    checkpoint: same model as 1-4 in one go, optimiser moments / control variates included."""
    import dataclasses

    from fedcare import algorithms
    from fedcare.server.controller import Checkpoint, RoundController
    from fedcare.site import SiteAgent
    from fedcare.transport import MemoryTransport

    def make_job(rounds):
        strategy = getattr(algorithms, strategy_name)(server_lr=0.5)
        return dataclasses.replace(toyjob.make_job(num_rounds=rounds), strategy=strategy)

    def transport(job):
        from fedcare.core.trainer import SiteContext
        return MemoryTransport({s: SiteAgent(s, ScaffoldToy(i) if strategy_name == "Scaffold"
                                             else job.trainer(SiteContext(s, i, 3))).handle
                                for i, s in enumerate(job.site_ids)})

    straight_job = make_job(4)
    straight = RoundController(straight_job, transport(straight_job)).run().weights
    first = make_job(2)
    interrupted = RoundController(first, transport(first), run_dir=tmp_path, keep_checkpoints=2)
    interrupted.run()
    checkpoints = Checkpointer(tmp_path / "checkpoints", keep=2)
    state = checkpoints.load_strategy_state(2)
    assert state, "the strategy state was not checkpointed"
    records = list(interrupted.history.rounds)
    resumed_job = make_job(4)
    resumed = RoundController(resumed_job, transport(resumed_job), resume=Checkpoint(
        2, checkpoints.load(2), records, state)).run().weights
    for name in straight:
        np.testing.assert_allclose(resumed[name], straight[name], rtol=1e-6)
    expected_state = straight_job.strategy.state()
    assert sorted(resumed_job.strategy.state()) == sorted(expected_state)
    for name, value in expected_state.items():
        np.testing.assert_allclose(resumed_job.strategy.state()[name], value, rtol=1e-6)


class ScaffoldToy(toyjob.ToyTrainer):
    """The toy trainer that also answers SCAFFOLD's control variates (zero change)."""

    def __init__(self, index):
        super().__init__(index, "ok")

    def train(self, weights, config):
        model = {k: v for k, v in weights.items() if not k.startswith("scaffold.")}
        result = super().train(model, config)
        deltas = {f"scaffold.dc.{k}": np.full_like(v, 0.1 * self.target)
                  for k, v in model.items() if np.issubdtype(v.dtype, np.floating)}
        return type(result)(Weights({**result.weights, **deltas}), result.num_samples)


def _replying(train):
    from fedcare.core.message import EvalResult, Reply, TaskKind

    def handler_for(site):
        def handle(task):
            if task.kind is TaskKind.TRAIN:
                return train(site, task)
            return Reply(task.task_id, site, result=EvalResult(10, {}))
        return handle
    return handler_for


def test_a_site_that_drops_and_is_back_before_the_round_fails_gets_the_round_rerun():
    import threading

    from fedcare.core.message import Reply, TrainResult
    from fedcare.server.controller import RoundController
    from fedcare.transport.memory import MemoryTransport

    dropped = []
    back = threading.Event()  # site-0 is connected again

    def reconnect(site):
        transport._set_connected(site, True)
        back.set()

    def train(site, task):
        if site == "site-0" and not dropped:
            dropped.append(site)
            transport._set_connected(site, False)  # the link goes down ...
            threading.Thread(target=reconnect, args=(site,)).start()  # ... briefly
            return Reply(task.task_id, site, error="site disconnected: connection lost",
                         connection_lost=True)  # as the server's transport reports it
        if task.round_num == 1 and not back.is_set():
            assert back.wait(10)  # the others are still training when the site is back
        return Reply(task.task_id, site, result=TrainResult(Weights(dict(task.weights)), 10))

    transport = MemoryTransport({f"site-{i}": _replying(train)(f"site-{i}") for i in range(3)})
    try:
        result = RoundController(toyjob.make_job(num_rounds=1, min_sites=3), transport).run()
    finally:
        transport.close()
    assert dropped == ["site-0"]
    assert result.history.rounds[1].trained_sites == ["site-0", "site-1", "site-2"]


def test_a_float64_update_that_would_overflow_the_sum_fails_only_its_site():
    import dataclasses

    from fedcare.core.message import Reply, TrainResult
    from fedcare.server.controller import RoundController
    from fedcare.transport.memory import MemoryTransport

    def train(site, task):
        big = site == "site-2"  # finite values and a legal count, but the product overflows
        values = np.full(3, 1e300 if big else 1.0)
        return Reply(task.task_id, site, result=TrainResult(Weights({"w": values}),
                                                            2**53 if big else 10))

    job = dataclasses.replace(toyjob.make_job(num_rounds=1, min_sites=2),
                              initial_weights=lambda: Weights({"w": np.zeros(3)}))
    transport = MemoryTransport({f"site-{i}": _replying(train)(f"site-{i}") for i in range(3)})
    try:
        result = RoundController(job, transport).run()
    finally:
        transport.close()
    record = result.history.rounds[1]
    assert record.trained_sites == ["site-0", "site-1"]
    assert "would overflow the weighted sum" in record.failures[0].message
    np.testing.assert_array_equal(result.weights["w"], np.ones(3))


def test_checkpoint_files_are_npz_that_numpy_reads_back_exactly(tmp_path):
    import numpy as np

    from fedcare.server.checkpoint import Checkpointer

    rng = np.random.default_rng(3)
    arrays = {
        "conv.weight": rng.standard_normal((4, 3, 5, 5)).astype(np.float32),
        "scalar": np.array(2.5, np.float64),
        "flags": np.array([True, False, True]),
        "steps": np.arange(7, dtype=np.int64),
        "half": rng.standard_normal(9).astype(np.float16),
        "transposed": rng.standard_normal((3, 4)).astype(np.float32).T,  # not C-contiguous
        "empty": np.zeros((0, 3), np.float32),
    }
    from fedcare.core.weights import Weights

    path = Checkpointer(tmp_path).save(1, Weights(arrays))
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(arrays)
        for name, array in arrays.items():
            assert data[name].dtype == array.dtype and data[name].shape == array.shape
            np.testing.assert_array_equal(data[name], array)


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")
def test_a_strategy_state_of_any_plain_dtype_survives_a_checkpoint(tmp_path):
    import numpy as np

    from fedcare.core.weights import Weights
    from fedcare.server.checkpoint import Checkpointer

    state = {
        "when": np.array(["2026-12-03", "2026-12-04"], dtype="datetime64[D]"),
        "record": np.zeros(2, [("\u0436", "<f4")]),  # a field name beyond latin-1
        "momentum": np.arange(6, dtype=np.float64).reshape(2, 3),
    }
    checkpoints = Checkpointer(tmp_path)
    checkpoints.save(2, Weights({"w": np.ones(3, np.float32)}), state)
    back = checkpoints.load_strategy_state(2)
    for name, array in state.items():
        assert back[name].dtype == array.dtype
        np.testing.assert_array_equal(back[name], array)
