"""Site filter chains from a SitePolicy: the maths of each filter, bad policies, and the same
chain in the simulator's threads and processes."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import toyjob

from fedcare import ConfigError, TrainResult, Weights, load_job, simulate
from fedcare.core.message import Task, TaskKind
from fedcare.core.policy import SitePolicy
from fedcare.site import ClipUpdateNorm, ExcludeVariables, build_filters

TOY_JOB = Path(__file__).resolve().parents[1] / "toy_job.yaml"
START = Weights({"w": np.zeros(4, np.float32), "n": np.zeros((), np.int64)})


def train_task():
    return Task("t", "j", 1, TaskKind.TRAIN, START)


def test_clip_update_norm_scales_the_update_not_the_model():
    trained = TrainResult(Weights({"w": np.full(4, 3.0, np.float32), "n": np.array(7)}), 5)
    clipped = ClipUpdateNorm(max_norm=1.5).outbound(train_task(), trained)
    # update (3, 3, 3, 3) has norm 6: scaled by 1/4; the integer counter passes unchanged
    np.testing.assert_allclose(clipped.weights["w"], np.full(4, 0.75), rtol=1e-6)
    assert clipped.weights["w"].dtype == np.float32 and int(clipped.weights["n"]) == 7
    assert clipped.num_samples == 5
    small = TrainResult(Weights({"w": np.full(4, 0.1, np.float32), "n": np.array(7)}), 5)
    assert ClipUpdateNorm(max_norm=1.5).outbound(train_task(), small) is small


def test_exclude_variables_sends_back_what_the_server_sent():
    trained = TrainResult(Weights({"w": np.full(4, 3.0, np.float32), "n": np.array(7)}), 5)
    out = ExcludeVariables(patterns=["^w$"]).outbound(train_task(), trained)
    np.testing.assert_array_equal(out.weights["w"], START["w"])
    assert int(out.weights["n"]) == 7
    submitted = ExcludeVariables(patterns=["^w$"]).outbound(
        Task("t", "j", 1, TaskKind.SUBMIT_MODEL), trained)
    assert list(submitted.weights) == ["n"]  # no global values to send instead: dropped


@pytest.mark.parametrize(("policy", "message"), [
    ({"outbound": [{"add_noise": {"sigma": 1}}]}, "outbound.0: unknown filter 'add_noise'"),
    ({"outbound": [{"clip_update_norm": {"max_norm": -1}}]}, "max_norm must be a number > 0"),
    ({"inbound": [{"clip_update_norm": {"norm": 1}}]}, "inbound.0: filter clip_update_norm: "
                                                       "bad parameters"),
    ({"outbound": [{"exclude_variables": {"patterns": ["("]}}]}, "bad pattern '('"),
])
def test_a_bad_policy_is_refused_naming_the_filter(policy, message):
    with pytest.raises(ConfigError, match="site policy") as info:
        build_filters(SitePolicy.model_validate(policy))
    assert message in str(info.value)


CLIP = SitePolicy.model_validate({"outbound": [{"clip_update_norm": {"max_norm": 0.5}}]})


def test_the_simulator_applies_each_sites_policy_in_threads_and_processes():
    # site-1's policy clips its update (norm 6 -> 0.5): its entries arrive as 2 / 12
    expected = (10 * 1 + 20 * (2 / 12) + 30 * 3) / 60
    threads = simulate(toyjob.make_job(num_rounds=1), site_policy={"site-1": CLIP})
    np.testing.assert_allclose(threads.weights["w"], expected, rtol=1e-6)
    processes = simulate(load_job(str(TOY_JOB), {"num_rounds": 1}), processes=True,
                         site_policy={"site-1": CLIP})
    np.testing.assert_allclose(processes.weights["w"], expected, rtol=1e-6)
    with pytest.raises(ConfigError, match=r"site_policy names sites \['site-9'\]"):
        simulate(toyjob.make_job(num_rounds=1), site_policy={"site-9": CLIP})


def test_the_simulator_gives_each_site_its_own_data_folder(tmp_path):
    seen = {}

    def trainer(ctx):
        seen[ctx.site_id] = ctx.data_dir
        return toyjob.ToyTrainer(ctx.site_index, "ok")

    job = dataclasses.replace(toyjob.make_job(num_rounds=1), trainer=trainer)
    simulate(job, data_dirs={"site-0": tmp_path / "a", "site-2": tmp_path / "c"})
    assert seen == {"site-0": tmp_path / "a", "site-1": None, "site-2": tmp_path / "c"}


@pytest.mark.parametrize("processes", [False, True])
def test_a_bad_policy_stops_the_simulation_before_it_starts_naming_the_site(processes):
    bad = SitePolicy.model_validate({"outbound": [{"add_noise": {"sigma": 1}}]})
    job = (load_job(str(TOY_JOB), {"num_rounds": 1}) if processes
           else toyjob.make_job(num_rounds=1))
    with pytest.raises(ConfigError, match=r"site site-2: site policy outbound\.0: unknown "
                                          r"filter 'add_noise'"):
        simulate(job, processes=processes, site_policy={"site-2": bad})
