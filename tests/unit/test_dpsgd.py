"""DP-SGD through Opacus at a site, and the heart job with each kind of differential privacy in
the simulator: epsilon reported by the accountant, round by round."""

import dp_accounting
import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedcare import ConfigError, load_job, simulate
from fedcare.core.dp import DpSgdSettings
from fedcare.core.policy import SitePolicy
from fedcare.core.privacy import ReportsPrivacy
from fedcare.core.trainer import SiteContext
from fedcare.dpsgd import ALPHAS, DpSgd
from fedcare.jobs.heart_site import HeartModel, _row_losses, make_trainer

HEART = "fedcare.jobs.heart:make_job"
rng = np.random.default_rng(0)
X = rng.normal(size=(60, 13)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.float32)


def dpsgd(settings, batch_size=0, seed=1):
    torch.manual_seed(0)
    model = HeartModel()
    return model, DpSgd(model, X, Y, settings, batch_size=batch_size, loss=_row_losses,
                        generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch_size", [0, 10])
def test_epsilon_is_opacuss_own_number_and_grows_with_steps(batch_size):
    _, dp = dpsgd(DpSgdSettings(max_grad_norm=1.0, noise_multiplier=1.1), batch_size)
    assert dp.sample_rate == (1.0 if batch_size == 0 else 1 / 6)
    seen = []
    for _ in range(3):
        dp.train(4, lr=0.1)
        seen.append(dp.epsilon())
    assert seen[0] < seen[1] < seen[2]
    opacus = RDPAccountant()
    opacus.history = [(1.1, dp.sample_rate, 12)]
    assert seen[-1] == pytest.approx(opacus.get_epsilon(1e-5, alphas=ALPHAS), rel=1e-12)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        dp.sample_rate, dp_accounting.GaussianDpEvent(1.1)), 12))
    assert seen[-1] == pytest.approx(accountant.get_epsilon(1e-5), rel=0.03)  # other orders
    spent = dp.privacy_spent()
    assert [s.delta for s in spent] == [1e-5] * 3
    assert sum(s.epsilon for s in spent) == pytest.approx(seen[-1])
    assert dp.privacy_spent() == []


def test_noise_is_added_and_drawn_from_the_given_generator():
    settings = DpSgdSettings(max_grad_norm=1.0, noise_multiplier=2.0)
    a, dp_a = dpsgd(settings, seed=5)
    b, dp_b = dpsgd(settings, seed=5)
    c, dp_c = dpsgd(settings, seed=6)
    for dp in (dp_a, dp_b, dp_c):
        dp.train(3, lr=0.5)
    torch.testing.assert_close(a.linear.weight, b.linear.weight)
    assert not torch.allclose(a.linear.weight, c.linear.weight)
    # clipped to 1 per row, mean over the batch: without noise a step moves w by at most lr
    quiet, dp_quiet = dpsgd(DpSgdSettings(max_grad_norm=1.0, noise_multiplier=1e-6))
    start = quiet.linear.weight.detach().clone()
    dp_quiet.train(1, lr=0.5)
    assert float((quiet.linear.weight.detach() - start).norm()) <= 0.5 + 1e-4


def test_a_target_epsilon_is_met_and_never_passed():
    settings = DpSgdSettings(max_grad_norm=1.0, target_epsilon=2.0, planned_steps=6)
    _, dp = dpsgd(settings, batch_size=10)
    dp.train(3, lr=0.1)
    dp.train(3, lr=0.1)
    assert 1.9 < dp.epsilon() <= 2.0
    with pytest.raises(RuntimeError, match="over the job's target 2"):
        dp.train(1, lr=0.1)


def test_heart_job_with_dp_sgd_runs_in_the_simulator_and_reports_epsilon():
    job = load_job(HEART, {"num_rounds": 4, "split": "flamby",
                           "dp": {"max_grad_norm": 1.0, "target_epsilon": 3.0}})
    assert job.trainer_params["dp"]["planned_steps"] == 4 * 5
    result = simulate(job)
    epsilons = [r.train_metrics["dp_sgd_epsilon"] for r in result.history.rounds[1:]]
    assert len(epsilons) == 4 and epsilons == sorted(epsilons)
    assert 2.8 < epsilons[-1] <= 3.0  # every site trains full batches: the same epsilon
    accuracy = np.mean([e.metrics["accuracy"] for e in result.history.rounds[-1]
                        .site_eval.values()])
    assert accuracy > 0.6
    assert not result.failures


def test_the_heart_trainer_reports_its_privacy_spending():
    trainer = make_trainer(SiteContext("va", 3, 4), split="flamby",
                           dp={"max_grad_norm": 1.0, "noise_multiplier": 1.0})
    assert isinstance(trainer, ReportsPrivacy)
    weights = load_job(HEART, {}).initial_weights or trainer.initial_model()
    result = trainer.train(weights, {"local_steps": 2, "lr": 0.1})
    spent = trainer.privacy_spent()
    assert len(spent) == 1 and spent[0].epsilon == result.metrics["dp_sgd_epsilon"]
    assert "dp-sgd" in spent[0].mechanism
    plain = make_trainer(SiteContext("va", 3, 4), split="flamby")
    assert plain.privacy_spent() == []


def test_heart_job_with_dp_fedavg_records_epsilon_and_keeps_the_standardisation():
    params = {"num_rounds": 3, "split": "flamby", "algorithm": "dp_fedavg",
              "algorithm_params": {"clip_norm": 0.5, "target_epsilon": 8.0}}
    result = simulate(load_job(HEART, params))
    rounds = result.history.rounds[1:]
    epsilons = [r.train_metrics["dp_fedavg_epsilon"] for r in rounds]
    assert epsilons == sorted(epsilons) and 7.9 < epsilons[-1] <= 8.0
    plain = simulate(load_job(HEART, {"num_rounds": 1, "split": "flamby"}))
    np.testing.assert_array_equal(result.weights["scaler_std"], plain.weights["scaler_std"])


def test_heart_job_with_noise_added_at_the_sites():
    policy = SitePolicy.model_validate({"outbound": [{"gaussian_noise": {
        "clip_norm": 0.5, "noise_multiplier": 1.0, "num_sites": 4, "frozen": ["^scaler_"]}}]})
    params = {"num_rounds": 3, "split": "flamby", "algorithm": "dp_fedavg",
              "algorithm_params": {"clip_norm": 0.5, "noise_multiplier": 0.0}}
    result = simulate(load_job(HEART, params), site_policy=policy)
    assert not result.failures
    last = result.history.rounds[-1]
    assert "dp_fedavg_epsilon" not in last.train_metrics  # the server adds no noise
    assert last.train_metrics["gaussian_noise_epsilon"] > 0


@pytest.mark.parametrize(("params", "message"), [
    ({"dp": {"max_grad_norm": 1.0, "target_epsilon": -1}}, "dp.target_epsilon must be > 0"),
    ({"dp": {"max_grad_norm": 0, "noise_multiplier": 1}}, "dp.max_grad_norm must be > 0"),
    ({"dp": {"max_grad_norm": 1, "noise_multiplier": 1}, "algorithm": "fedprox"},
     "cannot run with fedprox"),
    ({"algorithm": "dp_fedavg", "algorithm_params": {"clip_norm": 1, "target_epsilon": 0}},
     "target_epsilon must be > 0"),
    ({"algorithm": "dp_fedavg", "algorithm_params": {"clip_norm": 1, "noise_multiplier": 1,
                                                     "delta": 1.5}}, "delta must be in (0, 1)"),
])
def test_heart_job_refuses_bad_privacy_settings_when_loaded(params, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_job(HEART, params)


def test_dp_sgd_spending_is_charged_to_each_sites_ledger_and_a_budget_stops_it(tmp_path):
    """The DP-SGD trainer's reports reach the site's own ledger before each update leaves;
    a site whose budget the next round would pass trains no more."""
    from fedcare.core.privacy_policy import PrivacyPolicy
    from fedcare.site.privacy_ledger import read_spends

    job = load_job(HEART, {"num_rounds": 3, "split": "flamby",
                           "dp": {"max_grad_norm": 1.0, "noise_multiplier": 1.0}})
    plain = PrivacyPolicy()
    tight = PrivacyPolicy(budget_epsilon=1.0)  # below what three rounds cost at va
    result = simulate(job, site_privacy={"cleveland": plain, "hungary": plain,
                                         "switzerland": plain, "va": tight},
                      privacy_dir=tmp_path)
    reported = [r.train_metrics["dp_sgd_epsilon"] for r in result.history.rounds[1:]]
    spends = read_spends(tmp_path / "cleveland" / "privacy.db")
    assert [s.round_num for s in spends] == [1, 2, 3]
    assert all("dp-sgd" in s.mechanism for s in spends)
    # the charges add up to the accountant's epsilon after the last round
    assert sum(s.epsilon for s in spends) == pytest.approx(reported[-1], rel=1e-6)
    va = read_spends(tmp_path / "va" / "privacy.db")
    assert sum(s.epsilon for s in va) <= 1.0 and len(va) < 3
    assert any(f.site_id == "va" and "budget" in f.message for f in result.failures)
