"""The leak audit: the attack's AUC, and one audited run of the heart job with and without DP."""

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.jobs.heart_attack import auc, audit, without_dp


def test_auc_is_the_probability_a_member_scores_higher():
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5  # ties: one half
    rng = np.random.default_rng(0)
    assert auc(rng.normal(size=4000), rng.normal(size=4000)) == pytest.approx(0.5, abs=0.02)
    assert auc(rng.normal(1.0, 1.0, 4000), rng.normal(size=4000)) == pytest.approx(0.76, abs=0.02)


def test_without_dp_keeps_the_training_budget():
    params = {"num_rounds": 3, "local_steps": 50, "algorithm": "dp_fedavg",
              "algorithm_params": {"clip_norm": 1}, "dp": {"max_grad_norm": 1}}
    assert without_dp(params) == {"num_rounds": 3, "local_steps": 50}
    assert without_dp({"algorithm": "fedadam"}) == {"algorithm": "fedadam"}


def test_audit_of_a_short_run_with_and_without_dp_sgd():
    plain = audit({"num_rounds": 2, "split": "flamby"})
    assert plain.epsilon is None and plain.mechanism is None
    private = audit({"num_rounds": 2, "split": "flamby",
                     "dp": {"max_grad_norm": 1.0, "target_epsilon": 2.0}})
    assert private.mechanism == "dp_sgd_epsilon" and 1.9 < private.epsilon <= 2.0
    for result in (plain, private):
        assert 0.5 < result.accuracy <= 1.0
        assert 0.0 <= result.model_auc <= 1.0 and 0.0 <= result.update_auc <= 1.0
        assert sorted(result.per_site) == ["cleveland", "hungary", "switzerland", "va"]


def test_privacy_attack_command_prints_both_runs():
    result = CliRunner().invoke(app, ["privacy", "attack", "--seeds", "1", "--param",
                                      "num_rounds=2", "--param", "algorithm=dp_fedavg",
                                      "--param", "algorithm_params={clip_norm: 0.5, "
                                      "target_epsilon: 4}"])
    assert result.exit_code == 0, result.output
    assert "without DP" in result.output and "dp_fedavg" in result.output
    bad = CliRunner().invoke(app, ["privacy", "attack", "--param",
                                   "dp={max_grad_norm: 1, target_epsilon: 0}"])
    assert bad.exit_code != 0 and "dp.target_epsilon must be > 0" in bad.output
