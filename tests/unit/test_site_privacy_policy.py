"""A site's privacy policy and ledger: jobs refused before their data is read, tasks refused
by kind, rows or budget, every epsilon charged (durably) before the result leaves; the same
in a real site's runtime and the simulator's threads and processes."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import toyjob

from fedcare import ConfigError, StatsResult, TrainResult, load_job, simulate
from fedcare.core.errors import PrivacyError
from fedcare.core.message import JobRef, Task, TaskKind
from fedcare.core.policy import FilterSpec, SitePolicy
from fedcare.core.privacy import PrivacySpend
from fedcare.core.privacy_policy import PrivacyPolicy
from fedcare.provision.project import KitConfig, read_yaml_model
from fedcare.site import PrivacyGuard, PrivacyLedger, SiteAgent, build_filters
from fedcare.site.privacy_ledger import read_spends, verify_spends
from fedcare.site.runtime import SiteRuntime

TOY_JOB = Path(__file__).resolve().parents[1] / "toy_job.yaml"
SVT = {"svt": {"fraction": 0.2, "epsilon": 0.1, "noise_var": 0.1, "gamma": 5.0, "tau": 0.5}}
# the toy model has 9 float components: q = ceil(0.2 * 9) = 2 shared, and one release
# spends eps1 0.1 + eps2 (2 q)^(2/3) 0.1 + q x eps3 0.1 = 0.551984
SVT_EPSILON = 0.1 + 4 ** (2 / 3) * 0.1 + 2 * 0.1


def policy(**rules):
    return PrivacyPolicy.model_validate(rules)


def spend(epsilon):
    return PrivacySpend(epsilon, 0.0, "test mechanism")


def test_a_bad_privacy_section_is_one_line_naming_the_file_and_field(tmp_path):
    path = tmp_path / "config.yaml"
    base = ("federation: f\nname: site-1\nkind: site\nserver_host: localhost\n"
            "server_port: 8000\n")
    for section, field in [("privacy: {budget_epsilon: 0}", "privacy.budget_epsilon"),
                           ("privacy: {budget_epsilon: .inf}", "budget_epsilon must be finite"),
                           ("privacy: {min_rows: -1}", "privacy.min_rows"),
                           ("privacy: {require: {svt: {epsilon: {}}}}", "a bound needs min"),
                           ("privacy: {task_kinds: ['Train!']}", "privacy.task_kinds.0"),
                           ("privacy: {budget: 3}", "privacy.budget: Extra inputs")]:
        path.write_text(base + section + "\n")
        with pytest.raises(ConfigError) as info:
            read_yaml_model(path, KitConfig, "kit config")
        assert str(path) in str(info.value) and field in str(info.value)
        assert "\n" not in str(info.value)
    path.write_text(base + "privacy: {require: {add_noise: {sigma: {max: 1}}}}\n")
    config = read_yaml_model(path, KitConfig, "kit config")
    with pytest.raises(ConfigError, match=r"privacy.require: unknown filters \['add_noise'\]"):
        PrivacyGuard(config.privacy, PrivacyLedger(None))
    admin = base.replace("kind: site", "kind: admin\nrole: project_admin")
    path.write_text(admin + "privacy: {min_rows: 3}\n")
    with pytest.raises(ConfigError, match="only a site kit has a privacy policy"):
        read_yaml_model(path, KitConfig, "kit config")


def job(**changes):
    params = {"num_rounds": 3, **changes}
    return toyjob.make_job(**params)


def refusal(rules, site_outbound=(), **job_changes):
    made = job(**job_changes)
    site = SitePolicy(outbound=list(site_outbound)) if site_outbound else None
    _, outbound = build_filters(site, made.outbound_filters)
    return PrivacyGuard(policy(**rules), PrivacyLedger(None)).refuses_job(made, outbound)


def test_a_job_is_checked_against_the_policy_before_it_starts():
    assert refusal({}) is None
    # the toy job trains and evaluates; statistics is asked only with statistics=True
    assert refusal({"task_kinds": ["train", "evaluate"]}) is None
    assert refusal({"task_kinds": ["train", "evaluate"]}, statistics=True) == (
        "the job sends task kinds ['statistics'], which this site's privacy policy does not "
        "allow (privacy.task_kinds: ['evaluate', 'train'])")
    assert refusal({"task_kinds": ["train"]}, evaluate_every=0) is None
    # a required filter: missing, out of bounds, or present (the job's or the site's own)
    require = {"require": {"svt": {"epsilon": {"max": 0.5}, "fraction": {"max": 0.2}}}}
    assert refusal(require) == (
        "this site's privacy policy requires outbound filter svt (epsilon <= 0.5, fraction "
        "<= 0.2); the job's chain (the site's policy.outbound and the job's outbound_filters) "
        "has none")
    loose = {"svt": {**SVT["svt"], "epsilon": 3.0, "fraction": 0.5}}
    assert refusal(require, outbound_filters=[loose]) == (
        "this site's privacy policy requires outbound filter svt with epsilon <= 0.5, fraction "
        "<= 0.2; the job's has epsilon 3 > 0.5; fraction 0.5 > 0.2")
    assert refusal(require, outbound_filters=[SVT]) is None
    assert refusal(require, site_outbound=[SVT]) is None
    clip = {"require": {"clip_update_norm": {"max_norm": {"max": 5}}}}
    assert refusal(clip, outbound_filters=[{"clip_update_norm": {"max_norm": 10.0}}]) == (
        "this site's privacy policy requires outbound filter clip_update_norm with max_norm "
        "<= 5; the job's has max_norm 10 > 5")
    share = {"require": {"percentile_sharing": {"gamma": {"max": 1}}}}
    assert "gamma inf > 1" in refusal(share, outbound_filters=[
        {"percentile_sharing": {"fraction": 0.1}}])
    # at least 3 rounds x (0.1 + 2^(2/3) 0.1 + 0.1) = 1.0762 for one component
    assert refusal({"max_job_epsilon": 1.0}, outbound_filters=[SVT]) == (
        "the job would spend at least epsilon 1.076 here (3 rounds of its filters), over this "
        "site's max_job_epsilon 1")
    assert refusal({"max_job_epsilon": 1.1}, outbound_filters=[SVT]) is None


class CountingTrainer(toyjob.ToyTrainer):
    """A toy trainer that reports what it spent, as a DP-SGD trainer does."""

    def __init__(self, index, epsilon):
        super().__init__(index, "ok")
        self.epsilon, self._spent = epsilon, []

    def train(self, weights, config):
        self._spent.append(spend(self.epsilon))
        return super().train(weights, config)

    def privacy_spent(self):
        spent, self._spent = self._spent, []
        return spent


def train(round_num, job_id="j1"):
    return Task(f"{job_id}/r{round_num}/train/s", job_id, round_num, TaskKind.TRAIN,
                toyjob.initial())


def test_every_spend_is_committed_before_the_reply_and_the_budget_refuses_the_rest(tmp_path):
    path = tmp_path / "privacy.db"
    guard = PrivacyGuard(policy(budget_epsilon=1.0), PrivacyLedger(path))
    _, outbound = build_filters(None, [FilterSpec(name="int8_update")])
    agent = SiteAgent("s", CountingTrainer(1, 0.4), outbound, privacy=guard)
    first = agent.handle(train(1))
    assert first.error is None
    # the reply has not left yet, and the charge is on disk already, read by another reader
    (row,) = read_spends(path)
    assert (row.job_id, row.round_num, row.kind, row.epsilon) == ("j1", 1, "train", 0.4)
    assert agent.handle(train(2)).error is None
    third = agent.handle(train(3))
    assert third.result is None  # nothing leaves
    assert third.error == (
        "train raised PrivacyError: job j1 round 3: refused: it would spend epsilon 0.4, and "
        "this site has 0.2 of its privacy budget (budget_epsilon 1, spent 0.8) left")
    assert [r.epsilon for r in read_spends(path)] == [0.4, 0.4]
    # a new site process on the same kit knows what was spent
    again = PrivacyGuard(policy(budget_epsilon=0.8), PrivacyLedger(path))
    assert again.ledger.total_epsilon == pytest.approx(0.8)
    refused = SiteAgent("s", CountingTrainer(1, 0.0), privacy=again).handle(train(4, "j2"))
    assert refused.error.endswith("this site's privacy budget is spent (epsilon 0.8 of "
                                  "budget_epsilon 0.8): it takes no more work")
    assert again.refuses_job(job(), []) == ("this site's privacy budget is spent (epsilon 0.8 "
                                             "of budget_epsilon 0.8): it takes no more work")
    assert verify_spends(read_spends(path)) == []


def test_a_job_cap_refuses_a_charge_over_it_without_recording_it():
    ledger = PrivacyLedger(None)
    ledger.charge("a", 1, "t1", "train", [spend(0.6)], job_cap=1.0)
    with pytest.raises(PrivacyError, match=r"taking this job to 1\.2, over this site's "
                                           r"max_job_epsilon 1"):
        ledger.charge("a", 2, "t2", "train", [spend(0.6)], job_cap=1.0)
    ledger.charge("b", 1, "t3", "train", [spend(0.6)], job_cap=1.0)  # another job's own cap
    assert ledger.job_epsilon("a") == 0.6 and ledger.total_epsilon == pytest.approx(1.2)


def test_a_charge_survives_a_site_killed_right_after_it(tmp_path):
    path = tmp_path / "privacy.db"
    script = textwrap.dedent(f"""
        import os
        from fedcare.core.privacy import PrivacySpend
        from fedcare.site.privacy_ledger import PrivacyLedger
        ledger = PrivacyLedger(__import__("pathlib").Path({str(path)!r}))
        ledger.charge("j", 1, "t", "train", [PrivacySpend(0.25, 1e-5, "m")])
        os._exit(9)  # no close, no flush: killed as the update would be sent
    """)
    done = subprocess.run([sys.executable, "-c", script], env=os.environ, timeout=60)
    assert done.returncode == 9
    (row,) = read_spends(path)
    assert (row.epsilon, row.delta, row.mechanism) == (0.25, 1e-5, "m")


def test_a_changed_ledger_row_is_found(tmp_path):
    import sqlite3
    path = tmp_path / "privacy.db"
    ledger = PrivacyLedger(path)
    for i in range(3):
        ledger.charge("j", i, f"t{i}", "train", [spend(0.5)])
    ledger.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE spends SET epsilon = 0.01 WHERE seq = 2")
    assert verify_spends(read_spends(path)) == [
        "entry 2 edited: its content no longer matches its hash"]


def test_statistics_and_evaluation_over_too_few_rows_do_not_leave():
    guard = PrivacyGuard(policy(min_rows=20), PrivacyLedger(None))
    agent = SiteAgent("s", toyjob.ToyTrainer(0, "ok"), privacy=guard)  # 10 rows
    stats = agent.handle(Task("t1", "j", 0, TaskKind.STATISTICS, config={"name": "x"}))
    assert stats.result is None and stats.error == (
        "statistics raised PrivacyError: the statistics result, over 10 rows, does not leave "
        "this site (privacy.min_rows: 20)")
    evaluated = agent.handle(Task("t2", "j", 1, TaskKind.EVALUATE, toyjob.initial()))
    assert "the evaluate result, over 5 rows, does not leave" in evaluated.error
    big = SiteAgent("s", toyjob.ToyTrainer(1, "ok"), privacy=guard)  # 20 rows
    assert isinstance(big.handle(Task("t3", "j", 0, TaskKind.STATISTICS)).result, StatsResult)
    assert isinstance(big.handle(Task("t4", "j", 1, TaskKind.TRAIN, toyjob.initial())
                                 ).result, TrainResult)  # an update is not a row count
    kinds = PrivacyGuard(policy(task_kinds=["train"]), PrivacyLedger(None))
    refused = SiteAgent("s", toyjob.ToyTrainer(1, "ok"), privacy=kinds).handle(
        Task("t5", "j", 1, TaskKind.EVALUATE, toyjob.initial()))
    assert refused.error == ("evaluate raised PrivacyError: task kind 'evaluate' is not allowed "
                             "by this site's privacy policy (privacy.task_kinds: ['train'])")


def test_a_real_sites_runtime_refuses_a_job_before_building_its_trainer(tmp_path):
    runtime = SiteRuntime("site-1", code=toyjob.TOY_CODE, privacy=policy(
        require={"svt": {"epsilon": {"max": 0.5}}}), privacy_ledger=tmp_path / "p.db")

    def first_task(job_id, params):
        return Task(f"{job_id}/prepare", job_id, 0, TaskKind.PREPARE,
                    job=JobRef("toyjob:make_job", json.dumps(params), 1, 3))

    refused = runtime.handle(first_task("j1", {"num_rounds": 2}))
    assert refused.error == (
        "site policy refuses job j1: this site's privacy policy requires outbound filter svt "
        "(epsilon <= 0.5); the job's chain (the site's policy.outbound and the job's "
        "outbound_filters) has none")
    assert runtime._agents == {}  # no trainer was built: no data was read
    ran = runtime.handle(first_task("j2", {"num_rounds": 2, "outbound_filters": [SVT]}))
    assert ran.error is None
    ref = JobRef("toyjob:make_job", json.dumps({"num_rounds": 2, "outbound_filters": [SVT]}),
                 1, 3)
    reply = runtime.handle(dataclasses.replace(train(1, "j2"), job=ref))
    assert reply.error is None
    (row,) = read_spends(tmp_path / "p.db")
    assert row.job_id == "j2" and row.epsilon == pytest.approx(SVT_EPSILON)


@pytest.mark.parametrize("processes", [False, True])
def test_the_simulator_keeps_each_sites_ledger_and_stops_a_spent_site(tmp_path, processes):
    # site-1 may spend 1.2: two rounds of SVT (1.104), not three; the others go on
    params = {"num_rounds": 3, "min_sites": 2, "outbound_filters": [SVT]}
    job = load_job(str(TOY_JOB), params) if processes else toyjob.make_job(**params)
    result = simulate(job, processes=processes, privacy_dir=tmp_path,
                      site_privacy={"site-1": policy(budget_epsilon=1.2)})
    spends = read_spends(tmp_path / "site-1" / "privacy.db")
    assert [(s.round_num, s.kind) for s in spends] == [(1, "train"), (2, "train")]
    assert sum(s.epsilon for s in spends) == pytest.approx(2 * SVT_EPSILON)
    others = read_spends(tmp_path / "site-0" / "privacy.db")
    assert [s.round_num for s in others] == [1, 2, 3]  # no budget: charged, never refused
    trained = [r.trained_sites for r in result.history.rounds[1:]]  # round 0: evaluation
    assert trained == [["site-0", "site-1", "site-2"], ["site-0", "site-1", "site-2"],
                       ["site-0", "site-2"]]
    assert np.isfinite(np.asarray(result.weights["w"])).all()
