"""Review fixes: strict job config errors, FedAvg sampling vs min_sites, checkpoint pruning past
round 9999, Weights that cannot be made writable, TrimmedMean that says when it trims nothing,
FedAvg's order independence for float32 models."""

import dataclasses
import itertools
import logging

import numpy as np
import pytest
import toyjob

from fedcare import ConfigError, FedAvg, Job, TrainResult, Weights, load_job, simulate
from fedcare.algorithms import Krum, TrimmedMean
from fedcare.core.errors import AggregationError
from fedcare.server.checkpoint import Checkpointer, load_weights
from fedcare.transport.codec import decode, encode

# -- 1. bad job config: one ConfigError naming the field and the file ----------------------


def job_file(tmp_path, text, name="job.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("params, field", [
    ("{num_rounds: 2.5}", "num_rounds"),
    ("{num_rounds: 2.0}", "num_rounds"),
    ("{num_rounds: true}", "num_rounds"),
    ("{num_rounds: 1, min_sites: 1.5}", "min_sites"),
    ("{num_rounds: 1, min_sites: true}", "min_sites"),
])
def test_non_integer_counts_in_a_job_file_are_refused_naming_field_and_file(tmp_path, params,
                                                                            field):
    path = job_file(tmp_path, f"entry_point: toyjob:make_job\nparams: {params}\n")
    with pytest.raises(ConfigError) as info:
        load_job(str(path))
    message = str(info.value)
    assert f"{field} must be an integer" in message
    assert f"job file {path}" in message


@pytest.mark.parametrize("kwargs, expected", [
    ({"num_rounds": 2.5}, "num_rounds must be an integer, got 2.5 (float)"),
    ({"num_rounds": True}, "num_rounds must be an integer, got True (bool)"),
    ({"min_sites": 1.5}, "min_sites must be an integer, got 1.5 (float)"),
    ({"min_sites": True}, "min_sites must be an integer, got True (bool)"),
    ({"min_sites": np.bool_(True)}, "min_sites must be an integer"),
    ({"evaluate_every": 0.5}, "evaluate_every must be an integer"),
    ({"round_timeout_s": "10"}, "round_timeout_s must be a number"),
    ({"min_sites": 0}, "min_sites must be >= 1"),
])
def test_job_counts_must_be_strict_integers(kwargs, expected):
    base = dict(name="j", initial_weights=dict, trainer=lambda ctx: None, strategy=FedAvg(),
                num_rounds=1)
    with pytest.raises(ConfigError) as info:
        Job(**{**base, **kwargs})
    assert expected in str(info.value)
    assert str(info.value).startswith("job j: ")


def test_numpy_integers_are_integers():
    job = Job(name="j", initial_weights=dict, trainer=lambda ctx: None, strategy=FedAvg(),
              num_rounds=np.int64(3), min_sites=np.int32(2))
    assert job.num_rounds == 3 and job.min_sites == 2


def test_entry_point_with_a_syntax_error_is_a_config_error(tmp_path):
    (tmp_path / "brokenmod_review_a.py").write_text("x = 1 +\n")
    path = job_file(tmp_path, "entry_point: brokenmod_review_a:make_job\n")
    with pytest.raises(ConfigError) as info:
        load_job(str(path))
    message = str(info.value)
    assert "cannot import: syntax error in" in message
    assert "brokenmod_review_a.py, line 1" in message
    assert f"job file {path}" in message


def test_a_job_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe entry")
    with pytest.raises(ConfigError) as info:
        load_job(str(path))
    assert str(info.value).startswith(f"job file {path}: not UTF-8 text")
    assert "at byte 0" in str(info.value)


# -- 2. FedAvg sampling cannot meet min_sites ---------------------------------------------


def sites(n):
    return tuple(f"s{i}" for i in range(n))


def make(strategy, min_sites, site_ids):
    return Job(name="j", initial_weights=dict, trainer=lambda ctx: None, strategy=strategy,
               num_rounds=1, min_sites=min_sites, site_ids=site_ids)


def test_fedavg_fraction_below_min_sites_is_refused_when_the_job_is_built():
    with pytest.raises(ConfigError) as info:
        make(FedAvg(fraction=0.5), 3, sites(4))
    message = str(info.value)
    assert message.startswith("job j: ")
    assert "fraction=0.5 asks 2 of the job's 4 sites" in message
    assert "min_sites=3" in message
    assert make(FedAvg(fraction=0.75), 3, sites(4)).min_sites == 3  # 3 of 4: fine
    with pytest.raises(ConfigError, match=r"fraction=0\.5 asks 2 of the job's 4 sites"):
        toyjob.make_job(num_sites=4, fraction=0.5, min_sites=3)
    # Krum (a FedAvg) keeps both checks
    with pytest.raises(ConfigError, match=r"fraction=0\.5 asks 4 of the job's 8 sites"):
        make(Krum(num_byzantine=1, fraction=0.5), 5, sites(8))


def test_fedavg_fraction_below_min_sites_fails_at_selection_when_sites_are_unknown():
    strategy = FedAvg(fraction=0.5)
    make(strategy, 3, None)  # the number of sites is not known yet: accepted
    with pytest.raises(AggregationError) as info:
        strategy.select_sites(2, list(sites(4)))
    message = str(info.value)
    assert message.startswith("round 2: ")
    assert "fraction=0.5 asks 2 of the 4 connected sites" in message
    assert "min_sites=3" in message
    assert len(strategy.select_sites(2, list(sites(6)))) == 3
    # fewer connected sites than min_sites: the controller's "too few sites" says so
    assert len(strategy.select_sites(2, list(sites(2)))) == 1


def test_fedavg_fraction_below_min_sites_stops_a_simulated_run_with_a_clear_error():
    job = dataclasses.replace(toyjob.make_job(num_rounds=1, num_sites=4, fraction=0.5),
                              site_ids=None, min_sites=3)
    with pytest.raises(AggregationError, match=r"fraction=0\.5 asks 2 of the 4 connected sites"):
        simulate(job, num_sites=4)


def test_fedavg_fraction_with_no_sites_selects_none():
    assert FedAvg(fraction=0.5).select_sites(1, []) == []


# -- 3. checkpoint pruning past round 9999 --------------------------------------------------


def test_checkpoint_pruning_keeps_the_newest_rounds_past_9999(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    for r in (9998, 9999, 10000, 10001):
        ckpt.save(r, Weights({"x": np.array([float(r)])}), {"m": np.array([r])})
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == [
        "global-round10000.npz", "global-round10001.npz",
        "strategy-round10000.npz", "strategy-round10001.npz"]
    round_num, weights = ckpt.load_latest()
    assert round_num == 10001 and weights["x"][0] == 10001.0
    assert ckpt.load_strategy_state(10000)["m"][0] == 10000


# -- 4. Weights cannot be made writable again -----------------------------------------------


def test_weights_arrays_cannot_be_made_writable_again():
    source = np.arange(6, dtype=np.float32).reshape(2, 3)
    w = Weights({"a": source})
    view = w["a"]
    with pytest.raises(ValueError):
        view.flags.writeable = True
    with pytest.raises(ValueError):
        w["a"].flags.writeable = True
    source[0, 0] = 7  # the caller's array is not shared
    assert w["a"][0, 0] == 0 and source[0, 0] == 7
    np.testing.assert_array_equal(w["a"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_weights_cannot_be_made_writable_for_non_contiguous_and_0d_arrays():
    w = Weights({"t": np.arange(6.0).reshape(2, 3).T, "s": np.array(3, np.int64)})
    np.testing.assert_array_equal(w["t"], np.arange(6.0).reshape(2, 3).T)
    assert w["s"].shape == () and int(w["s"]) == 3
    for name in w:
        with pytest.raises(ValueError):
            w[name].flags.writeable = True


def test_weights_take_read_only_arrays_without_a_copy():
    owned = np.arange(4.0)
    owned.flags.writeable = False
    w = Weights({"a": owned})
    assert np.shares_memory(w["a"], owned)
    with pytest.raises(ValueError):
        w["a"].flags.writeable = True
    again = Weights(dict(w))  # re-wrapping Weights (strategies do) copies nothing
    assert np.shares_memory(again["a"], owned)
    data = np.arange(3, dtype=np.int32).tobytes()
    over_bytes = np.frombuffer(data, np.int32)
    assert np.shares_memory(Weights({"b": over_bytes})["b"], over_bytes)
    # a read-only view of something writable is copied
    writable = np.arange(3.0)
    ro = writable.view()
    ro.flags.writeable = False
    assert not np.shares_memory(Weights({"c": ro})["c"], writable)
    mutable = bytearray(np.arange(3.0).tobytes())
    over_mutable = np.frombuffer(memoryview(mutable).toreadonly(), np.float64)
    assert not np.shares_memory(Weights({"d": over_mutable})["d"], over_mutable)


def test_decoded_messages_are_not_copied():
    from fedcare.core.message import Reply

    reply = Reply("t", "s", result=TrainResult(Weights({"w": np.arange(5, dtype=np.float32)}),
                                               3))
    data = encode(reply)
    got = decode(data).result.weights["w"]
    assert np.shares_memory(got, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(got, np.arange(5, dtype=np.float32))
    with pytest.raises(ValueError):
        got.flags.writeable = True


def test_aggregated_and_loaded_models_are_read_only_without_a_copy(tmp_path):
    g = Weights({"w": np.zeros(3, np.float64), "n": np.zeros((), np.int64)})
    agg = FedAvg().aggregator(1, g)
    agg.add("a", TrainResult(Weights({"w": np.ones(3), "n": np.array(4)}), 2))
    out = agg.finish()
    np.testing.assert_array_equal(out["w"], np.ones(3))
    assert int(out["n"]) == 4
    for name in out:
        with pytest.raises(ValueError):
            out[name].flags.writeable = True
    Checkpointer(tmp_path).save(1, out)
    loaded = load_weights(tmp_path / "global-round0001.npz")
    np.testing.assert_array_equal(loaded["w"], np.ones(3))
    with pytest.raises(ValueError):
        loaded["w"].flags.writeable = True


# -- 5. TrimmedMean that trims nothing --------------------------------------------------------


def one(value):
    return TrainResult(Weights({"x": np.array([value], np.float32)}), 1)


def test_trimmed_mean_that_would_trim_nothing_is_refused_for_the_declared_sites():
    with pytest.raises(ConfigError) as info:
        make(TrimmedMean(trim=0.1), 1, sites(9))
    message = str(info.value)
    assert message.startswith("job j: ")
    assert "trim=0.1 would trim nothing with the job's 9 sites" in message
    assert "needs at least 10 results per round" in message
    assert make(TrimmedMean(trim=0.1), 1, sites(10)).site_ids == sites(10)
    assert make(TrimmedMean(trim=0.25), 2, sites(4)).min_sites == 2  # the heart benchmark
    assert make(TrimmedMean(trim=0.0), 1, sites(3)).min_sites == 1  # a plain mean, on purpose


def test_trimmed_mean_warns_once_when_a_round_trims_nothing(caplog):
    strategy = TrimmedMean(trim=0.1)
    make(strategy, 1, None)  # any number of sites: accepted
    g = one(0.0).weights
    results = [one(1.0), one(2.0), one(100.0)]
    with caplog.at_level(logging.WARNING, logger="fedcare.algorithms.robust"):
        for _ in range(2):
            agg = strategy.aggregator(1, g)
            for r in results:
                agg.add("s", r)
            assert agg.finish()["x"][0] == pytest.approx(103.0 / 3)  # the maths is unchanged
    warnings = [r.getMessage() for r in caplog.records if "trims nothing" in r.getMessage()]
    assert warnings == ["TrimmedMean trim=0.1 trims nothing with 3 results (floor(0.1 x 3) = 0): "
                        "this round is a plain mean; it needs at least 10 results per round"]


def test_trimmed_mean_does_not_warn_when_it_trims(caplog):
    strategy = TrimmedMean(trim=0.2)
    agg = strategy.aggregator(1, one(0.0).weights)
    for v in (1.0, 2.0, 3.0, 4.0, 1000.0):
        agg.add("s", one(v))
    with caplog.at_level(logging.WARNING, logger="fedcare.algorithms.robust"):
        assert agg.finish()["x"][0] == pytest.approx(3.0)
    assert not [r for r in caplog.records if "trims nothing" in r.getMessage()]


# -- 6. FedAvg order independence for float32 models -------------------------------------------


def test_fedavg_float32_model_is_bit_identical_in_every_arrival_order():
    rng = np.random.default_rng(7)
    results = [TrainResult(Weights({"w": rng.standard_normal(1000).astype(np.float32)}), n)
               for n in (17, 250, 3, 999, 64)]
    g = Weights({"w": np.zeros(1000, np.float32)})
    outputs = set()
    for order in itertools.permutations(results):
        agg = FedAvg().aggregator(1, g)
        for r in order:
            agg.add("s", r)
        out = agg.finish()["w"]
        assert out.dtype == np.float32
        outputs.add(out.tobytes())
    assert len(outputs) == 1  # 120 orders, one model
    expected = sum(r.num_samples * r.weights["w"].astype(np.float64) for r in results) / 1333
    np.testing.assert_allclose(np.frombuffer(outputs.pop(), np.float32), expected, rtol=1e-6)
