"""The privacy filters a site may put on what leaves it: selective sharing, the sparse vector
technique, quantisation, noise on statistics. Each checked on numbers worked out by hand."""

import dataclasses
import math
import re

import numpy as np
import pytest
import toyjob

from fedcare import ConfigError, StatsResult, TrainResult, Weights, simulate
from fedcare.algorithms.fedavg import WeightedMeanAggregator
from fedcare.core.int8 import SCALE_PREFIX, dequantise, quantise
from fedcare.core.message import Reply, Task, TaskKind
from fedcare.core.policy import SitePolicy
from fedcare.core.privacy import ReportsPrivacy
from fedcare.core.validation import incompatibilities, spec_incompatibilities
from fedcare.core.weights import TensorSpec
from fedcare.site import (
    HalfPrecision,
    Int8Update,
    PercentileSharing,
    StatisticsNoise,
    SvtPrivacy,
    build_filters,
)
from fedcare.transport.codec import decode, encode

START = Weights({"a": np.full(6, 1.0, np.float32), "b": np.zeros((2, 2), np.float64),
                 "n": np.array(3, np.int64)})


def task(kind=TaskKind.TRAIN):
    return Task("t1", "j1", 1, kind, START)


def trained(a, b, n=4):
    return TrainResult(Weights({"a": np.asarray(a, np.float32), "b": np.asarray(b, np.float64),
                                "n": np.array(n, np.int64)}), 9, {"loss": 0.5})


# update over [a (6), b (4)]: a-part 1.0 off the start of 1.0
UPDATE = trained([1.5, 0.9, 4.0, 1.0, -2.0, 1.2], [[0.3, -0.05], [0.0, 7.0]])
DELTA = np.array([0.5, -0.1, 3.0, 0.0, -3.0, 0.2, 0.3, -0.05, 0.0, 7.0])


def update_of(result):
    return np.concatenate([np.asarray(result.weights["a"], np.float64).ravel() - 1.0,
                           np.asarray(result.weights["b"], np.float64).ravel()])


def test_percentile_sharing_keeps_exactly_the_top_k_by_magnitude_clipped_to_gamma():
    out = PercentileSharing(fraction=0.3, gamma=2.5).outbound(task(), UPDATE)
    # 10 components, 30 %: the 3 largest |update| are 7.0, 3.0 and -3.0, clipped to +-2.5
    expected = np.zeros(10)
    expected[[2, 4, 9]] = [2.5, -2.5, 2.5]
    np.testing.assert_allclose(update_of(out), expected, atol=1e-7)
    assert out.weights["a"].dtype == np.float32 and out.weights["b"].dtype == np.float64
    assert int(out.weights["n"]) == 4 and out.num_samples == 9 and out.metrics == {"loss": 0.5}
    # fraction 0.25 of 10 is 2.5 components: 3 are shared (ceil), never fewer than asked
    assert np.count_nonzero(update_of(PercentileSharing(0.25).outbound(task(), UPDATE))) == 3
    # a whole update, unclipped, is the result itself (up to float32 rounding)
    np.testing.assert_allclose(update_of(PercentileSharing(1.0).outbound(task(), UPDATE)),
                               DELTA, atol=1e-6)


def test_selective_filters_leave_other_results_alone():
    stats = StatsResult(Weights({"sum": np.array([1.0])}), 5)
    for site_filter in (PercentileSharing(0.1), SvtPrivacy(), Int8Update(), HalfPrecision()):
        assert site_filter.outbound(task(TaskKind.STATISTICS), stats) is stats
        # a model sent again for cross-site validation already passed the filters
        assert site_filter.outbound(Task("t", "j", 1, TaskKind.SUBMIT_MODEL), UPDATE) is UPDATE


def test_svt_shares_at_most_the_fraction_within_gamma_and_reports_its_epsilon():
    rng = np.random.default_rng(0)
    svt = SvtPrivacy(fraction=0.1, epsilon=0.5, noise_var=0.2, gamma=1.0, tau=0.01, rng=rng)
    assert isinstance(svt, ReportsPrivacy)
    big = Weights({"a": np.zeros(1000, np.float32)})
    update = TrainResult(Weights({"a": rng.normal(0, 2, 1000).astype(np.float32)}), 10)
    for _ in range(5):
        out = svt.outbound(Task("t", "j", 1, TaskKind.TRAIN, big), update)
        shared = np.asarray(out.weights["a"], np.float64)
        assert np.count_nonzero(shared) <= 100  # 10 % of 1000
        assert np.abs(shared).max() <= 1.0  # clipped to gamma
    spent = svt.privacy_spent()
    # q = 100: eps1 0.5 + eps2 (2 q)^(2/3) 0.5 = 17.0998 + 100 x eps3 0.2 = 20: 37.5998
    assert len(spent) == 5 and svt.privacy_spent() == []  # each use reported once
    assert spent[0].epsilon == pytest.approx(0.5 + 200 ** (2 / 3) * 0.5 + 20, rel=1e-12)
    assert spent[0].epsilon == pytest.approx(37.59980, abs=1e-4) and spent[0].delta == 0
    assert svt.epsilon_of(1000) == pytest.approx(spent[0].epsilon)
    assert "svt (Li et al. 2019)" in spent[0].mechanism


def test_svt_picks_large_components_over_small_ones():
    # half the components are 0, half are 5 (clipped to gamma 1): with a threshold of 0.5 and
    # little noise (large epsilons) the shared components are the large ones
    values = np.zeros(200, np.float32)
    values[::2] = 5.0
    svt = SvtPrivacy(fraction=0.2, epsilon=50.0, noise_var=50.0, gamma=1.0, tau=0.5,
                     rng=np.random.default_rng(1))
    out = svt.outbound(Task("t", "j", 1, TaskKind.TRAIN, Weights({"a": np.zeros(200,
                                                                              np.float32)})),
                       TrainResult(Weights({"a": values}), 1))
    picked = np.flatnonzero(out.weights["a"])
    assert 35 <= picked.size <= 40
    assert np.mean(picked % 2 == 0) > 0.9


@pytest.mark.parametrize(("policy", "message"), [
    ({"svt": {"epsilon": 0}}, "svt: epsilon must be a finite number > 0"),
    ({"svt": {"fraction": 1.5}}, "svt: fraction must be a finite number in (0, 1]"),
    ({"svt": {"noise_var": -1}}, "svt: noise_var"),
    ({"svt": {"rng": "x"}}, "rng is not a setting"),
    ({"percentile_sharing": {"fraction": 0}}, "percentile_sharing: fraction"),
    ({"percentile_sharing": {"fraction": 0.1, "gamma": -2}}, "percentile_sharing: gamma"),
    ({"statistics_noise": {"epsilon": 1}}, "bad parameters"),
    ({"statistics_noise": {"epsilon": 1, "sensitivity": 0}}, "sensitivity"),
])
def test_bad_privacy_filter_settings_are_refused_naming_them(policy, message):
    with pytest.raises(ConfigError, match=r"site policy outbound\.0") as info:
        build_filters(SitePolicy.model_validate({"outbound": [policy]}))
    assert message in str(info.value)


def test_int8_update_is_within_half_a_level_of_the_update_at_a_quarter_of_the_bytes():
    rng = np.random.default_rng(2)
    start = Weights({"w": rng.normal(0, 1, 5000).astype(np.float32),
                     "v": rng.normal(0, 1, 20).astype(np.float64),
                     "n": np.array(3, np.int64)})
    new = {k: v + rng.normal(0, 0.3, v.shape).astype(v.dtype) if k != "n" else v + 1
           for k, v in start.items()}
    full = TrainResult(Weights(new), 3)
    out = Int8Update().outbound(Task("t", "j", 1, TaskKind.TRAIN, start), full)
    assert out.weights["w"].dtype == np.int8 and out.weights["n"] == 4
    # on the wire: 5020 int8 levels and two scales instead of 5000 float32 and 20 float64
    sent, whole = encode(Reply("t", "s", result=out)), encode(Reply("t", "s", result=full))
    assert len(sent) < 0.3 * len(whole)
    rebuilt = dequantise(decode(sent).result.weights, start)
    for name in ("w", "v"):
        delta = np.asarray(new[name], np.float64) - start[name]
        got = np.asarray(rebuilt[name], np.float64) - start[name]
        scale = np.abs(delta).max() / 127
        # at most half a level, plus the float32 rounding of start + update
        slack = 1e-6 if start[name].dtype == np.float32 else 1e-12
        assert np.abs(got - delta).max() <= scale / 2 + slack
        assert len(np.unique(np.rint(got / scale))) <= 255  # 8 bits a component
        assert rebuilt[name].dtype == start[name].dtype
    assert rebuilt["n"] == 4 and incompatibilities(start, rebuilt) == []


@pytest.mark.parametrize(("change", "message"), [
    (lambda w: w.pop("w"), "'w' must be int8 of shape [10]"),
    (lambda w: w.update(w=np.zeros(9, np.int8)), "'w' must be int8 of shape [10]"),
    (lambda w: w.update({SCALE_PREFIX + "w": np.array(np.nan)}), "scale of 'w' must be one"),
    (lambda w: w.update({SCALE_PREFIX + "w": np.array(-1.0)}), "scale of 'w' must be one"),
    (lambda w: w.update({SCALE_PREFIX + "zz": np.array(1.0)}), "'zz' is not a floating-point"),
    (lambda w: w.update(w=np.full(10, -128, np.int8)), "holds -128"),
    (lambda w: w.pop(SCALE_PREFIX + "w"), "sent as int8 without a scale"),
])
def test_a_malformed_int8_update_is_refused_naming_the_tensor(change, message):
    start = Weights({"w": np.zeros(10, np.float32), "b": np.zeros(2, np.float32)})
    sent = dict(quantise({"w": np.ones(10, np.float32), "b": np.ones(2, np.float32)}, start))
    change(sent)
    with pytest.raises(ValueError, match=re.escape(message)):
        dequantise(sent, start)


def test_int8_updates_average_like_fedavg_in_the_simulator_within_half_a_level():
    job = toyjob.make_secure_job(num_sites=3)  # the secure toy's sites, here with plain FedAvg
    plain = dataclasses.replace(job, workflows=None)
    policy = SitePolicy.model_validate({"outbound": [{"int8_update": {}}]})
    got = simulate(plain, site_policy=policy)
    exact = toyjob.secure_fedavg(range(3), toyjob.secure_initial())
    for name, value in exact.items():
        update = value - toyjob.secure_initial()[name]
        # each site's level is within half of its scale (max |update| / 127, about 0.4 / 127)
        assert np.abs(np.asarray(got.weights[name], np.float64) - value).max() <= (
            np.abs(update).max() * 4 / 127 / 2)
        assert np.abs(np.asarray(got.weights[name], np.float64) - value).max() > 0


def test_half_precision_travels_as_float16_and_fedavg_widens_it_again():
    start = Weights({"w": np.zeros(4, np.float32), "n": np.array(3, np.int64)})
    site_a = TrainResult(Weights({"w": np.array([1.0, 2.0, 3.0, 1e-4], np.float32),
                                  "n": np.array(4, np.int64)}), 10)
    half = HalfPrecision().outbound(Task("t", "j", 1, TaskKind.TRAIN, start), site_a)
    assert half.weights["w"].dtype == np.float16 and half.weights["n"].dtype == np.int64
    # the codec carries float16, at half the bytes
    sent = encode(Reply("t", "s", result=half))
    assert decode(sent).result.weights["w"].dtype == np.float16
    assert len(sent) < len(encode(Reply("t", "s", result=site_a)))
    # the server takes float16 for a float32 parameter, and nothing else narrower
    assert incompatibilities(start, half.weights) == []
    assert spec_incompatibilities(start, [TensorSpec("w", "<f2", (4,)),
                                          TensorSpec("n", "<i8", ())]) == []
    assert incompatibilities(start, {"w": np.zeros(4, np.int32), "n": np.array(3)}) == [
        "w: dtype int32, expected float32"]
    # FedAvg of a float16 site (10 samples) and a float32 site (30 samples): float32 out
    site_b = TrainResult(Weights({"w": np.full(4, 2.0, np.float32),
                                  "n": np.array(4, np.int64)}), 30)
    aggregator = WeightedMeanAggregator(start)
    aggregator.add("a", half)
    aggregator.add("b", site_b)
    mean = aggregator.finish()
    assert mean["w"].dtype == np.float32
    w16 = np.array([1.0, 2.0, 3.0, 1e-4], np.float16).astype(np.float64)
    np.testing.assert_allclose(mean["w"], (10 * w16 + 30 * 2.0) / 40, rtol=1e-7)


def test_half_precision_refuses_values_float16_cannot_hold():
    start = Weights({"w": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="beyond float16's range"):
        HalfPrecision().outbound(Task("t", "j", 1, TaskKind.TRAIN, start),
                                 TrainResult(Weights({"w": np.array([1.0, 1e5], np.float32)}), 1))


def test_statistics_noise_is_laplace_at_sensitivity_over_epsilon_and_reported():
    noise = StatisticsNoise(epsilon=0.5, sensitivity=2.0, rng=np.random.default_rng(3))
    stats = StatsResult(Weights({"sum": np.full(20000, 100.0), "k": np.array([7], np.int64)}),
                        50)
    out = noise.outbound(task(TaskKind.STATISTICS), stats)
    added = out.values["sum"] - 100.0
    # Laplace with scale b = 2 / 0.5 = 4: mean |x| = b, variance 2 b^2 = 32
    assert np.mean(np.abs(added)) == pytest.approx(4.0, rel=0.03)
    assert np.var(added) == pytest.approx(32.0, rel=0.06)
    assert int(out.values["k"][0]) == 7 and out.num_samples == 50  # integers untouched
    (spent,) = noise.privacy_spent()
    assert spent.epsilon == 0.5 and spent.delta == 0.0
    assert noise.outbound(task(), UPDATE) is UPDATE and noise.privacy_spent() == []
    assert math.isfinite(float(out.values["sum"].sum()))
