"""A real federation on 127.0.0.1 whose hospitals state privacy policies in their own kits: a
site refuses a job that does not meet them, with the reason in the admin's status, and a site
with a small privacy budget stops once it is spent, its ledger showing every spend, while the
other sites go on."""

import os
import subprocess
import sys

import numpy as np
import pytest
from pocfed import ended, submit_toy, toy_federation

from fedcare.site.privacy_ledger import read_spends
from fedcare.transport.codec import decode
from fedcare.transport.grpc import fedcare_pb2 as pb

pytestmark = pytest.mark.slow  # real processes on 127.0.0.1: run by make test, not test-fast

SITES = ["site-0", "site-1", "site-2"]
SVT = {"svt": {"fraction": 0.2, "epsilon": 0.1, "noise_var": 0.1, "gamma": 5.0, "tau": 0.5}}
# 9 float components: q = 2, eps1 0.1 + eps2 4^(2/3) 0.1 + 2 x eps3 0.1 a round
SVT_EPSILON = 0.1 + 4 ** (2 / 3) * 0.1 + 2 * 0.1


def _policies(fed):
    # site-1's DPO requires the sparse vector technique at epsilon <= 0.5 on every update
    fed.edit_kit("site-1", lambda config: config.update(privacy={
        "require": {"svt": {"epsilon": {"max": 0.5}}}, "task_kinds": ["train", "evaluate"]}))
    # site-2's accepts a total epsilon of 1.2 across all jobs
    fed.edit_kit("site-2", lambda config: config.update(privacy={"budget_epsilon": 1.2}))
    # site-0 sends its updates as int8 levels (the last filter of its chain)
    fed.edit_kit("site-0", lambda config: config.update(
        policy={"outbound": [{"int8_update": {}}]}))


def cli(*args):
    done = subprocess.run([sys.executable, "-m", "fedcare.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "250"})
    return done.returncode, done.stdout + done.stderr


def test_sites_refuse_jobs_their_policy_forbids_and_stop_when_their_budget_is_spent(
        tmp_path, monkeypatch):
    with toy_federation(tmp_path, monkeypatch, SITES, edit=_policies) as fed:
        # a job without the filter site-1 requires: refused there before any data is read
        plain = submit_toy(fed, {"num_rounds": 2, "min_sites": 2})
        state = ended(fed, plain)
        assert state["status"] == "finished", state
        # every task of the job is refused with the same reason; the summary has the last
        assert state["summary"].startswith("finished with 2 of 3 sites; site-1: round 2 "
                                           f"evaluate: site policy refuses job {plain}: this "
                                           "site's privacy policy requires outbound filter svt "
                                           "(epsilon <= 0.5); the job's chain (the site's "
                                           "policy.outbound and the job's outbound_filters) "
                                           "has none"), state
        # prepare, round 0 evaluation, 2 x (train, evaluate): each refused
        assert state["failed_sites"]["site-1"]["count"] == 6, state["failed_sites"]
        assert set(state["failed_sites"]) == {"site-1"}
        # site-0's int8 update (10 samples, target 1: 127 levels of 1/127, rebuilt whole at
        # the server) and site-2's float32 one (30, 3, folded in as it arrived):
        # (10 x 1 + 30 x 3) / 40
        chunks = fed.admin().Download(pb.JobRef(job_id=plain), timeout=30)
        weights = decode(b"".join(c.data for c in chunks)).result.weights
        assert weights["w"].dtype == np.float32
        np.testing.assert_array_equal(weights["w"], np.full((2, 3), 2.5, np.float32))

        # with SVT: site-1 takes part; site-2 (budget 1.2) trains rounds 1 and 2 (1.104
        # spent) and refuses round 3, which would take it to 1.656; the others go on
        private = submit_toy(fed, {"num_rounds": 3, "min_sites": 2, "outbound_filters": [SVT]})
        state = ended(fed, private)
        assert state["status"] == "finished", state
        assert "site-2: round 3 train: train raised PrivacyError" in state["summary"], state
        assert "budget_epsilon 1.2, spent 1.104" in state["summary"]
        assert "site-1" not in state.get("failed_sites", {})

        spends = read_spends(fed.kits["site-2"] / "privacy.db")
        assert [(s.job_id, s.round_num, s.kind) for s in spends] == [
            (private, 1, "train"), (private, 2, "train")]
        assert sum(s.epsilon for s in spends) == pytest.approx(2 * SVT_EPSILON)
        assert [s.round_num for s in read_spends(fed.kits["site-1"] / "privacy.db")] == [1, 2, 3]

        code, output = cli("site", "privacy", fed.kits["site-2"], "--verify")
        assert code == 0, output
        assert output.count("svt (Li et al. 2019)") == 2
        assert f"job {private}: epsilon 1.10397" in output
        assert "total epsilon 1.10397 of budget 1.2 (0.0960316 left)" in output
        assert "OK, 2 rows" in output
        code, output = cli("site", "policy", fed.kits["site-1"])
        assert code == 0, output
        assert "requires filter svt" in output and "epsilon <= 0.5" in output
        assert "train, evaluate" in output


def test_a_site_with_a_bad_privacy_section_does_not_start_and_says_where(tmp_path, monkeypatch):
    with toy_federation(tmp_path, monkeypatch, ["site-0"], start_sites=False) as fed:
        config = fed.kits["site-0"] / "config.yaml"
        for privacy, problem in [
                ({"budget_epsilon": -1}, "privacy.budget_epsilon: Input should be greater than 0"),
                ({"require": {"dp_noise": {"sigma": {"min": 1}}}},
                 "privacy.require: unknown filters ['dp_noise']")]:
            fed.edit_kit("site-0", lambda c, p=privacy: c.update(privacy=p))
            code, output = cli("site", "start", fed.kits["site-0"], "--server", fed.address)
            assert code == 1, output
            line = " ".join(output.split())  # rich may wrap a long line
            assert f"error: kit config {config}: {problem}" in line, output
            code, output = cli("site", "policy", fed.kits["site-0"])
            assert code == 1 and problem in " ".join(output.split()), output
