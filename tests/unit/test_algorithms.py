"""Update rules of FedProx, the FedOpt family, robust aggregators and Cyclic, by hand."""

import math

import numpy as np
import pytest
import torch

from fedcare import ConfigError, FedAvg, Job, TrainResult, Weights
from fedcare.algorithms import (
    ClippedFedAvg,
    Cyclic,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedProx,
    FedYogi,
    Krum,
    Median,
    TrimmedMean,
)
from fedcare.pytorch import proximal_term


def w(*values, n=1):
    return TrainResult(Weights({"x": np.array(values, np.float32)}), n)


def run(strategy, global_values, results):
    agg = strategy.aggregator(1, w(*global_values).weights)
    for r in results:
        agg.add("s", r)
    return agg.finish()["x"]


def test_fedadam_one_step_by_hand():
    # w = 0, sites' mean = 1 -> delta = 1; m = 0.1; v = 0.99 * tau^2 + 0.01 = 0.01000099
    out = run(FedAdam(server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3), [0.0], [w(1.0)])
    expected = 0.01 * 0.1 / (math.sqrt(0.01000099) + 1e-3)
    assert out[0] == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.0099005, abs=1e-7)


def test_fedyogi_and_fedadagrad_second_moments_by_hand():
    # Yogi: v = tau^2 - (1 - beta2) * 1 * sign(tau^2 - 1) = 1e-6 + 0.01
    yogi = run(FedYogi(server_lr=0.01, tau=1e-3), [0.0], [w(1.0)])
    assert yogi[0] == pytest.approx(0.01 * 0.1 / (math.sqrt(0.010001) + 1e-3), rel=1e-6)
    # Adagrad: v = tau^2 + 1
    ada = run(FedAdagrad(server_lr=0.01, tau=1e-3), [0.0], [w(1.0)])
    assert ada[0] == pytest.approx(0.01 * 0.1 / (math.sqrt(1.000001) + 1e-3), rel=1e-6)


def test_fedavgm_momentum_over_two_rounds():
    s = FedAvgM(server_lr=1.0, beta1=0.9)
    first = run(s, [0.0], [w(1.0)])  # v = 1, w = 1
    assert first[0] == pytest.approx(1.0)
    second = run(s, [1.0], [w(1.5)])  # v = 0.9 + 0.5 = 1.4, w = 2.4
    assert second[0] == pytest.approx(2.4)


def test_fedopt_uses_the_sample_weighted_mean():
    # mean = (1 * 10 + 3 * 30) / 40 = 2.5 ; FedAvgM with beta1=0, lr=1 is exactly that mean
    out = run(FedAvgM(server_lr=1.0, beta1=0.0), [0.0], [w(1.0, n=10), w(3.0, n=30)])
    assert out[0] == pytest.approx(2.5)


def test_fedprox_sends_mu_and_the_term_is_mu_half_squared_distance():
    s = FedProx(mu=0.5, train_config={"lr": 0.1})
    assert s.configure_train(1, "a") == {"lr": 0.1, "proximal_mu": 0.5}
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bias.fill_(1.0)
    anchor = Weights({"weight": np.zeros((1, 1), np.float32), "bias": np.zeros(1, np.float32)})
    term = proximal_term(model, anchor, 0.5)
    assert float(term.detach()) == pytest.approx(0.25 * (4 + 1))
    term.backward()
    assert float(model.weight.grad) == pytest.approx(0.5 * 2.0)  # mu * (w - w_global)


def test_median_trimmed_mean_and_clipping_by_hand():
    assert run(Median(), [0.0], [w(1.0), w(2.0), w(100.0)])[0] == 2.0
    five = [w(v) for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    assert run(TrimmedMean(trim=0.2), [0.0], five)[0] == pytest.approx(3.0)
    # an update of norm 5 (3, 4) clipped to norm 1 -> (0.6, 0.8); the other (0.3, 0.4) stays
    clipped = run(ClippedFedAvg(max_norm=1.0), [0.0, 0.0], [w(3.0, 4.0), w(0.3, 0.4)])
    np.testing.assert_allclose(clipped, [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2], rtol=1e-6)


@pytest.mark.parametrize("attack", [1e6, -10.0])
def test_robust_aggregators_outvote_a_byzantine_site(attack):
    rng = np.random.default_rng(0)
    honest = [w(*(1.0 + 0.01 * rng.standard_normal(3))) for _ in range(4)]
    byzantine = w(*([attack] * 3))  # a huge or sign-flipped model
    results = [*honest, byzantine]
    plain = run(FedAvg(), [0.0] * 3, results)
    assert np.abs(plain - 1.0).max() > 1.0  # FedAvg is dragged away
    for strategy in (Median(), TrimmedMean(trim=0.2), Krum(num_byzantine=1),
                     Krum(num_byzantine=1, multi=3)):
        out = run(strategy, [0.0] * 3, results)
        assert np.abs(out - 1.0).max() < 0.05, type(strategy).__name__


def test_cyclic_visits_sites_in_turn():
    s = Cyclic()
    sites = ["b", "a", "c"]
    assert [s.select_sites(r, sites) for r in range(1, 6)] == [["a"], ["b"], ["c"], ["a"], ["b"]]


def test_custom_selector():
    s = FedAvg(selector=lambda r, sites: [x for x in sites if x.endswith(str(r % 2))])
    assert s.select_sites(3, ["s0", "s1", "s2", "s3"]) == ["s1"]
    assert s.select_sites(4, ["s0", "s1", "s10"]) == ["s0", "s10"]


@pytest.mark.parametrize("make, message", [
    (lambda: FedProx(mu=-0.1), "mu must be >= 0"),
    (lambda: FedAdam(beta1=1.0), "beta1 must be in [0, 1)"),
    (lambda: FedYogi(beta2=-0.1), "beta2 must be in [0, 1)"),
    (lambda: FedAdagrad(tau=0), "tau must be > 0"),
    (lambda: FedAvgM(server_lr=0), "server_lr must be > 0"),
    (lambda: TrimmedMean(trim=0.5), "trim must be in [0, 0.5)"),
    (lambda: ClippedFedAvg(max_norm=0), "max_norm must be > 0"),
    (lambda: Krum(num_byzantine=-1), "num_byzantine >= 0"),
])
def test_invalid_hyper_parameters_are_refused(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert message in str(info.value)


def test_krum_with_too_few_sites_is_refused_when_the_job_is_built():
    with pytest.raises(ConfigError) as info:
        Job(name="j", initial_weights=dict, trainer=lambda ctx: None,
            strategy=Krum(num_byzantine=2), num_rounds=1, min_sites=3)
    assert "needs every round to have at least 7 sites" in str(info.value)
    assert str(info.value).startswith("job j: ")


def test_scaffold_server_and_site_updates_by_hand():
    from fedcare.algorithms import Scaffold
    from fedcare.pytorch import ScaffoldSite

    s = Scaffold(server_lr=1.0)
    x = Weights({"w": np.array([1.0], np.float32)})
    assert s.select_sites(1, ["a", "b", "c", "d"]) == ["a", "b", "c", "d"]
    payload = s.train_payload(1, x)
    assert list(payload) == ["w", "scaffold.c.w"] and payload["scaffold.c.w"][0] == 0.0
    # site side: f(w) = (w - 3)^2 / 2, gradient w - 3; c = c_i = 0 in round 1; 2 steps, lr 0.5
    model = torch.nn.Linear(1, 1, bias=False)
    site = ScaffoldSite()
    assert site.begin(model, Weights({"weight": np.array([[1.0]], np.float32),
                                      "scaffold.c.weight": np.array([[0.2]], np.float32)}))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        (0.5 * (model.weight - 3.0) ** 2).sum().backward()
        site.correct(model)  # g - c_i + c = (w - 3) + 0.2
        opt.step()
    # y1 = 1 - 0.5 * (-2 + 0.2) = 1.9 ; y2 = 1.9 - 0.5 * (-1.1 + 0.2) = 2.35
    assert float(model.weight) == pytest.approx(2.35)
    dc = site.end(model, steps=2, lr=0.5)["scaffold.dc.weight"]
    # c_i+ = 0 - 0.2 + (1 - 2.35) / (2 * 0.5) = -1.55 ; dc = -1.55
    assert float(dc[0, 0]) == pytest.approx(-1.55)
    # server: two of four sites answer, y = 2 and 4, dc = 1 and 3:
    # x = 1 + (3 - 1) = 3 ; c = 0 + (2 / 4) * 2 = 1
    agg = s.aggregator(1, x)
    for y, d in ((2.0, 1.0), (4.0, 3.0)):
        agg.add("s", TrainResult(Weights({"w": np.array([y], np.float32),
                                          "scaffold.dc.w": np.array([d], np.float32)}), 10))
    assert agg.finish()["w"][0] == pytest.approx(3.0)
    assert s.c["w"][0] == pytest.approx(1.0)
    assert list(s.result_spec(x)) == ["w", "scaffold.dc.w"]
