"""Differential privacy: the accountant is called as its authors mean (the same numbers as
dp-accounting and Opacus compute themselves), DP-FedAvg's clipping and noise, the site's
Gaussian noise filter, and settings refused before anything runs."""

import itertools
import math

import dp_accounting
import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedcare import ConfigError, TrainResult, Weights
from fedcare.algorithms import DpFedAvg
from fedcare.core.dp import (
    DpSgdSettings,
    GaussianAccountant,
    Sampling,
    dp_epsilon,
    noise_for_epsilon,
    rdp_epsilon,
)
from fedcare.core.message import Task, TaskKind
from fedcare.core.policy import SitePolicy
from fedcare.core.privacy import ReportsPrivacy
from fedcare.site import GaussianNoise, build_filters


def pld_epsilon(noise, count, delta):
    """dp-accounting's own PLD accountant on ``count`` Gaussian uses (fine discretisation):
    an independent check of the exact Gaussian epsilon fedcare reports without sampling."""
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    accountant.compose(dp_accounting.GaussianDpEvent(noise), count)
    return accountant.get_epsilon(delta)


def dp_accounting_epsilon(event, count, delta, relation=None):
    relation = relation or dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, count))
    return accountant.get_epsilon(delta)


# -- the accountant --------------------------------------------------------------------------
@pytest.mark.parametrize(("noise", "rounds"), [(1.0, 1), (1.0, 10), (2.5, 40), (0.7, 3)])
def test_epsilon_is_dp_accountings_and_opacuss_own_number(noise, rounds):
    ours = rdp_epsilon(noise, 1e-5, [Sampling()] * rounds)
    theirs = dp_accounting_epsilon(dp_accounting.GaussianDpEvent(noise), rounds, 1e-5)
    assert ours == pytest.approx(theirs, rel=1e-12)
    opacus = RDPAccountant()
    opacus.history = [(noise, 1.0, rounds)]
    # Opacus's orders differ a little from dp-accounting's: the same bound, nearly
    assert ours == pytest.approx(opacus.get_epsilon(1e-5), rel=0.02)


def test_sampled_epsilon_is_dp_accountings_own_number():
    poisson = rdp_epsilon(1.2, 1e-6, [Sampling(100, 10, poisson=True)] * 50)
    assert poisson == pytest.approx(dp_accounting_epsilon(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.2)), 50, 1e-6),
        rel=1e-12)
    fixed = rdp_epsilon(1.2, 1e-6, [Sampling(10, 3)] * 20)
    # fixed-size sampling: replace-one, where the sum's sensitivity is 2 C
    assert fixed == pytest.approx(dp_accounting_epsilon(
        dp_accounting.SampledWithoutReplacementDpEvent(
            10, 3, dp_accounting.GaussianDpEvent(0.6)), 20, 1e-6,
        dp_accounting.NeighboringRelation.REPLACE_ONE), rel=1e-12)


def test_epsilon_grows_with_every_use_and_without_noise_is_infinite():
    accountant = GaussianAccountant(1.5, 1e-5)
    assert accountant.epsilon() == 0.0
    seen = []
    for _ in range(5):
        accountant.spend()
        seen.append(accountant.epsilon())
    assert all(a < b for a, b in itertools.pairwise(seen))
    assert accountant.epsilon(Sampling()) > seen[-1] == accountant.epsilon()  # extra: not kept
    silent = GaussianAccountant(0.0, 1e-5)
    silent.spend()
    assert silent.epsilon() == math.inf


@pytest.mark.parametrize("target", [0.5, 1.0, 3.0, 8.0])
def test_noise_calibrated_for_a_target_epsilon_spends_it(target):
    uses = [Sampling()] * 20
    noise = noise_for_epsilon(target, 1e-5, uses)
    assert dp_epsilon(noise, 1e-5, uses) == pytest.approx(target, rel=1e-6)
    assert dp_epsilon(noise * 0.99, 1e-5, uses) > target * 1.005  # the smallest such noise
    # the exact Gaussian curve, checked against dp-accounting's PLD accountant, is tighter
    # than RDP's bound: the same target needs less noise
    assert pld_epsilon(noise, 20, 1e-5) == pytest.approx(target, rel=2e-3)
    assert rdp_epsilon(noise, 1e-5, uses) > target * 1.04
    sampled = [Sampling(100, 10, poisson=True)] * 3  # with sampling: RDP alone
    assert dp_epsilon(noise, 1e-5, sampled) == rdp_epsilon(noise, 1e-5, sampled)


# -- DP-FedAvg at the server ------------------------------------------------------------------
GLOBAL = Weights({"w": np.zeros(3, np.float32), "scaler": np.ones(2, np.float32),
                  "count": np.array(5, np.int64)})


def site_model(w):
    return TrainResult(Weights({"w": np.asarray(w, np.float32), "scaler": np.full(2, 9, np.float32),
                                "count": np.array(9, np.int64)}), 10)


def run_round(strategy, results, round_num=1):
    sites = [f"s{i}" for i in range(len(results))]
    assert strategy.select_sites(round_num, sites) == sites
    aggregator = strategy.aggregator(round_num, GLOBAL)
    for site, result in zip(sites, results, strict=True):
        aggregator.add(site, result)
    return aggregator.finish()


def test_dp_fedavg_clips_each_update_and_averages_with_equal_weights():
    strategy = DpFedAvg(clip_norm=1.0, noise_multiplier=0.0, frozen=["^scaler$"])
    new = run_round(strategy, [site_model([3.0, 4.0, 0.0]), site_model([0.0, 0.0, 0.5])])
    # (3, 4, 0) has norm 5: clipped to (0.6, 0.8, 0); (0, 0, 0.5) is within C; mean over 2
    np.testing.assert_allclose(new["w"], [0.3, 0.4, 0.25], rtol=1e-6)
    np.testing.assert_array_equal(new["scaler"], GLOBAL["scaler"])  # frozen: no site moves it
    assert int(new["count"]) == 5  # not floating: the global value
    assert strategy.round_metrics(1) == {}  # no noise at the server: no epsilon of its own


def test_dp_fedavg_noise_has_std_z_c_on_the_sum_with_a_fixed_seed():
    z, c = 1.3, 0.5
    strategy = DpFedAvg(clip_norm=c, noise_multiplier=z, rng=np.random.default_rng(7))
    big = Weights({"w": np.zeros(200_000, np.float64)})
    strategy.select_sites(1, ["a", "b"])
    aggregator = strategy.aggregator(1, big)
    for site in ("a", "b"):
        aggregator.add(site, TrainResult(Weights({"w": np.zeros(200_000)}), 3))
    new = aggregator.finish()
    expected = np.random.default_rng(7).normal(0.0, z * c, 200_000) / 2
    np.testing.assert_array_equal(new["w"], expected)
    assert np.std(new["w"] * 2) == pytest.approx(z * c, rel=0.01)


def test_dp_fedavg_reports_the_accountants_epsilon_every_round_and_resumes_it():
    strategy = DpFedAvg(clip_norm=1.0, noise_multiplier=1.1, delta=1e-6)
    reported = []
    for round_num in (1, 2, 3):
        run_round(strategy, [site_model([0.1, 0, 0])] * 2, round_num)
        reported.append(strategy.round_metrics(round_num)["dp_fedavg_epsilon"])
    assert reported == pytest.approx([pld_epsilon(1.1, k, 1e-6) for k in (1, 2, 3)], rel=2e-3)
    assert reported == pytest.approx([dp_epsilon(1.1, 1e-6, [Sampling()] * k)
                                      for k in (1, 2, 3)], rel=1e-12)
    assert strategy.round_metrics(3)["dp_fedavg_delta"] == 1e-6
    resumed = DpFedAvg(clip_norm=1.0, noise_multiplier=1.1, delta=1e-6)
    resumed.load_state(strategy.state())
    assert resumed.epsilon() == pytest.approx(reported[-1])


def test_dp_fedavg_with_site_sampling_accounts_for_the_sample():
    strategy = DpFedAvg(clip_norm=1.0, noise_multiplier=1.0, fraction=0.5)
    sites = [f"s{i}" for i in range(8)]
    chosen = strategy.select_sites(1, sites)
    assert len(chosen) == 4
    aggregator = strategy.aggregator(1, GLOBAL)
    aggregator.add(chosen[0], site_model([0.1, 0, 0]))
    aggregator.finish()
    assert strategy.epsilon() == pytest.approx(rdp_epsilon(1.0, 1e-5, [Sampling(8, 4)]))
    # amplified: less than every site every round under the same (replace-one) relation
    assert strategy.epsilon() < dp_accounting_epsilon(
        dp_accounting.GaussianDpEvent(0.5), 1, 1e-5,
        dp_accounting.NeighboringRelation.REPLACE_ONE)


def test_dp_fedavg_target_epsilon_calibrates_and_refuses_a_round_past_it():
    from fedcare.core.errors import AggregationError

    strategy = DpFedAvg(clip_norm=1.0, target_epsilon=2.0, num_rounds=3)
    for round_num in (1, 2, 3):
        run_round(strategy, [site_model([0.1, 0, 0])] * 2, round_num)
    assert strategy.epsilon() == pytest.approx(2.0, rel=1e-3)
    assert strategy.epsilon() <= 2.0
    with pytest.raises(AggregationError, match="over the target 2"):
        run_round(strategy, [site_model([0.1, 0, 0])] * 2, 4)
    assert strategy.epsilon() <= 2.0  # the refused round was not released


# -- the site's noise filter ------------------------------------------------------------------
def test_site_noise_has_std_z_c_over_root_n_and_keeps_frozen_values():
    noise = GaussianNoise(clip_norm=2.0, noise_multiplier=1.5, num_sites=4, frozen=["^s$"],
                          rng=np.random.default_rng(3))
    start = Weights({"w": np.zeros(100_000, np.float32), "s": np.ones(2, np.float32)})
    task = Task("t", "j", 1, TaskKind.TRAIN, start)
    trained = TrainResult(Weights({"w": np.full(100_000, 1.0, np.float32),
                                   "s": np.full(2, 5.0, np.float32)}), 7, {"loss": 0.3})
    out = noise.outbound(task, trained)
    clipped = np.full(100_000, 2.0 / math.sqrt(100_000))  # the update clipped to norm C = 2
    expected = clipped + np.random.default_rng(3).normal(0.0, 1.5 * 2.0 / 2, 100_000)
    np.testing.assert_allclose(out.weights["w"], expected.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(out.weights["s"], start["s"])  # the site's own never leave
    assert out.num_samples == 7 and out.metrics["loss"] == 0.3
    assert out.metrics["gaussian_noise_epsilon"] == pytest.approx(
        pld_epsilon(1.5 / 2, 1, 1e-5), rel=2e-3)


def test_site_noise_reports_each_use_adding_up_to_the_accountants_total():
    noise = GaussianNoise(clip_norm=1.0, noise_multiplier=2.0, num_sites=4,
                          secure_aggregation=True, delta=1e-6)
    assert isinstance(noise, ReportsPrivacy)
    start = Weights({"w": np.zeros(3, np.float32)})
    task = Task("t", "j", 1, TaskKind.TRAIN, start)
    for _ in range(3):
        noise.outbound(task, TrainResult(Weights({"w": np.ones(3, np.float32)}), 1))
    spent = noise.privacy_spent()
    assert len(spent) == 3 and noise.privacy_spent() == []
    assert sum(s.epsilon for s in spent) == pytest.approx(
        pld_epsilon(2.0, 3, 1e-6), rel=2e-3)  # secure aggregation: the sum's z
    assert all(s.delta == 1e-6 and "secure aggregation" in s.mechanism for s in spent)
    assert spent[0].epsilon > spent[1].epsilon > spent[2].epsilon > 0  # sublinear composition


def test_site_noise_without_secure_aggregation_reports_its_own_weaker_guarantee():
    alone = GaussianNoise(clip_norm=1.0, noise_multiplier=2.0, num_sites=4)
    summed = GaussianNoise(clip_norm=1.0, noise_multiplier=2.0, num_sites=4,
                           secure_aggregation=True)
    assert alone.std == summed.std == 1.0  # the same noise: z C / sqrt(n)
    assert alone.accountant.noise_multiplier == 1.0 and summed.accountant.noise_multiplier == 2


def test_site_noise_refuses_tensors_it_cannot_noise_and_passes_other_tasks():
    noise = GaussianNoise(clip_norm=1.0, noise_multiplier=1.0, num_sites=2)
    start = Weights({"w": np.zeros(3, np.float32)})
    extra = TrainResult(Weights({"w": np.ones(3, np.float32),
                                 "scaffold.dc.w": np.ones(3, np.float32)}), 1)
    with pytest.raises(ValueError, match="global model lacks"):
        noise.outbound(Task("t", "j", 1, TaskKind.TRAIN, start), extra)
    initial = TrainResult(start, 1)
    assert noise.outbound(Task("t", "j", 0, TaskKind.INITIAL_MODEL), initial) is initial
    assert noise.privacy_spent() == []


def test_site_noise_from_a_policy():
    policy = SitePolicy.model_validate({"outbound": [{"gaussian_noise": {
        "clip_norm": 1.0, "noise_multiplier": 1.0, "num_sites": 4, "delta": 1e-6}}]})
    _, outbound = build_filters(policy)
    assert isinstance(outbound[0], GaussianNoise) and outbound[0].accountant.delta == 1e-6


# -- settings refused, naming the field ------------------------------------------------------
@pytest.mark.parametrize(("params", "message"), [
    ({"clip_norm": 0, "noise_multiplier": 1}, "clip_norm must be > 0"),
    ({"clip_norm": -1.0, "noise_multiplier": 1}, "clip_norm must be > 0"),
    ({"clip_norm": 1, "noise_multiplier": -0.5}, "noise_multiplier must be >= 0"),
    ({"clip_norm": 1, "noise_multiplier": 1, "delta": 1}, "delta must be in (0, 1)"),
    ({"clip_norm": 1, "noise_multiplier": 1, "delta": 0}, "delta must be in (0, 1)"),
    ({"clip_norm": 1, "target_epsilon": 0, "num_rounds": 3}, "target_epsilon must be > 0"),
    ({"clip_norm": 1, "target_epsilon": -2, "num_rounds": 3}, "target_epsilon must be > 0"),
    ({"clip_norm": 1, "target_epsilon": 1}, "num_rounds must be an int >= 1"),
    ({"clip_norm": 1}, "exactly one of noise_multiplier and target_epsilon"),
    ({"clip_norm": float("nan"), "noise_multiplier": 1}, "clip_norm must be a finite number"),
])
def test_dp_fedavg_refuses_bad_settings(params, message):
    with pytest.raises(ConfigError) as info:
        DpFedAvg(**params)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("dp", "message"), [
    ({"max_grad_norm": 0, "noise_multiplier": 1}, "dp.max_grad_norm must be > 0"),
    ({"max_grad_norm": 1, "noise_multiplier": -1}, "dp.noise_multiplier must be >= 0"),
    ({"max_grad_norm": 1, "noise_multiplier": 0}, "dp.noise_multiplier must be > 0"),
    ({"max_grad_norm": 1, "noise_multiplier": 1, "delta": 1.0}, "dp.delta must be in (0, 1)"),
    ({"max_grad_norm": 1, "target_epsilon": 0}, "dp.target_epsilon must be > 0"),
    ({"max_grad_norm": 1, "target_epsilon": 1, "planned_steps": 0}, "dp.planned_steps"),
    ({"noise_multiplier": 1}, "dp.max_grad_norm is required"),
    ({"max_grad_norm": 1, "noise_multiplier": 1, "epsilon": 3}, "unknown settings ['epsilon']"),
])
def test_dp_sgd_settings_refuse_bad_values(dp, message):
    with pytest.raises(ConfigError) as info:
        DpSgdSettings.from_mapping(dp)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("params", "message"), [
    ({"clip_norm": 0, "noise_multiplier": 1, "num_sites": 2}, "clip_norm must be > 0"),
    ({"clip_norm": 1, "noise_multiplier": -1, "num_sites": 2}, "noise_multiplier must be >= 0"),
    ({"clip_norm": 1, "noise_multiplier": 0, "num_sites": 2}, "noise_multiplier must be > 0"),
    ({"clip_norm": 1, "noise_multiplier": 1, "num_sites": 0}, "num_sites must be an int >= 1"),
    ({"clip_norm": 1, "noise_multiplier": 1, "num_sites": 2, "delta": 2},
     "delta must be in (0, 1)"),
])
def test_site_noise_policy_refuses_bad_values(params, message):
    policy = SitePolicy.model_validate({"outbound": [{"gaussian_noise": params}]})
    with pytest.raises(ConfigError, match=r"site policy outbound\.0") as info:
        build_filters(policy)
    assert f"gaussian_noise: {message}" in str(info.value)
