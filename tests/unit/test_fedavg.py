import numpy as np
import pytest

from fedcare import ConfigError, FedAvg, TrainResult, Weights


def result(w, b, n, steps=0):
    return TrainResult(Weights({"w": np.array(w, np.float32), "b": np.array(b, np.float32),
                                "steps": np.array(steps, np.int64)}), n)


def test_fedavg_is_the_sample_weighted_mean():
    global_w = result([0.0, 0.0], [0.0], 1).weights
    agg = FedAvg().aggregator(1, global_w)
    agg.add("a", result([1.0, 2.0], [3.0], 10, steps=4))
    agg.add("b", result([4.0, -2.0], [0.0], 30, steps=8))
    agg.add("c", result([0.0, 0.5], [1.0], 60, steps=1))
    out = agg.finish()
    # by hand: (10*1 + 30*4 + 60*0)/100 = 1.3 ; (20 - 60 + 30)/100 = -0.1 ; (30 + 0 + 60)/100 = 0.9
    np.testing.assert_allclose(out["w"], [1.3, -0.1], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [0.9], rtol=1e-6)
    # integer buffers are averaged and rounded: (40 + 240 + 60)/100 = 3.4 -> 3
    assert out["steps"].dtype == np.int64 and int(out["steps"]) == 3
    assert out["w"].dtype == np.float32
    assert agg.num_results == 3


def test_fedavg_order_does_not_matter():
    g = result([0.0], [0.0], 1).weights
    results = [result([float(i)], [i * 0.5], 7 * i + 1) for i in range(6)]
    a, b = FedAvg().aggregator(1, g), FedAvg().aggregator(1, g)
    for r in results:
        a.add("x", r)
    for r in reversed(results):
        b.add("x", r)
    np.testing.assert_array_equal(a.finish()["w"], b.finish()["w"])


def test_site_sampling_is_seeded_per_round():
    sites = [f"s{i}" for i in range(10)]
    s = FedAvg(fraction=0.3, seed=5)
    first = s.select_sites(1, sites)
    assert len(first) == 3 and first == FedAvg(fraction=0.3, seed=5).select_sites(1, sites)
    rounds = {tuple(s.select_sites(r, sites)) for r in range(1, 20)}
    assert len(rounds) > 5
    assert FedAvg().select_sites(1, sites) == sites


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_invalid_fraction_is_refused(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        FedAvg(fraction=fraction)


def test_non_scalar_config_is_refused():
    with pytest.raises(ConfigError, match="train_config"):
        FedAvg(train_config={"lr": [0.1]})
    with pytest.raises(ConfigError, match="not finite"):
        FedAvg(train_config={"lr": float("nan")})


def test_blockwise_accumulation_gives_the_bits_of_the_plain_sum():
    from fedcare.algorithms.fedavg import _BLOCK, accumulate

    rng = np.random.default_rng(0)
    size = 3 * _BLOCK + 7  # several blocks and a ragged end
    sites = [(rng.standard_normal(size).astype(np.float32), float(rng.integers(1, 1000)))
             for _ in range(4)]
    for values, _ in sites:
        values[:3] = -0.0  # every site sends -0.0 there: a zero-started sum gives +0.0
    plain = np.zeros(size, np.float64)
    for values, n in sites:
        plain += np.multiply(values, n, dtype=np.float64)
    acc = {}
    for values, n in sites:
        accumulate(acc, {"x": values, "s": values[:1].reshape(())}, n)
    assert np.array_equal(acc["x"], plain)
    assert not np.signbit(acc["x"][:3]).any()
    assert isinstance(acc["s"], np.ndarray) and acc["s"].shape == ()
    assert acc["s"] == plain[0]


def test_accumulators_are_reused_across_rounds_without_changing_results():
    strategy = FedAvg()
    like = Weights({"w": np.zeros(4, np.float32), "d": np.zeros(2, np.float64)})
    results = [Weights({"w": np.full(4, v, np.float32), "d": np.full(2, v)}) for v in (1, 2)]
    models, buffers = [], []
    for round_num in (1, 2):
        aggregator = strategy.aggregator(round_num, like)
        for n, weights in zip((1, 3), results, strict=True):
            aggregator.add(f"s{n}", TrainResult(weights, n))
        buffers.append(aggregator._acc["w"])
        models.append(aggregator.finish())
    assert buffers[1] is buffers[0]  # round 2 accumulated into round 1's float64 buffer
    for model in models:
        np.testing.assert_array_equal(model["w"], np.full(4, 1.75, np.float32))
        np.testing.assert_array_equal(model["d"], np.full(2, 1.75))
    # float64 parameters: the accumulator became the model, so it is never reused
    assert not np.may_share_memory(models[0]["d"], models[1]["d"])
