"""Round workflows: statistics as a job of its own, cross-site validation, custom task kinds."""

import contextlib
import dataclasses
import json

import numpy as np
import pytest
import toyjob

from fedcare import EvalResult, Job, Weights, simulate
from fedcare.core.cross_site import CrossSiteMatrix
from fedcare.core.workflow import Gather, Workflow
from fedcare.datasets.heart import HOSPITALS, load_raw_columns
from fedcare.jobs.heart_stats import make_job as heart_stats
from fedcare.jobs.heart_stats import pooled
from fedcare.server import Checkpointer
from fedcare.server.workflows import CrossSiteValidation, FederatedStatistics, TrainRounds

MEAN_ALL = (10 * 1 + 20 * 2 + 30 * 3) / 60


def test_statistics_job_of_its_own_equals_pooled_numbers_with_missing_values(tmp_path):
    result = simulate(heart_stats(), run_dir=tmp_path)
    data = [load_raw_columns(h) for h in HOSPITALS]
    expected = pooled(data)
    assert expected["missing"].sum() > 1000  # the raw files have many '?'
    np.testing.assert_allclose(result.weights["mean"], expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(result.weights["std"], expected["std"], rtol=1e-12)
    np.testing.assert_array_equal(result.weights["missing"], expected["missing"])
    ages = np.concatenate(data)[:, 0]
    np.testing.assert_array_equal(result.weights["histogram"][0],
                                  np.histogram(ages, bins=np.linspace(20, 80, 11))[0])
    assert result.weights["rows"][0] == 920
    assert result.summary == "finished with 4 of 4 sites"
    saved = json.loads((tmp_path / "statistics.json").read_text())
    assert list(saved["passes"]) == ["mean", "variance", "missing", "histogram"]
    assert saved["passes"]["variance"]["sites"] == sorted(HOSPITALS)
    np.testing.assert_allclose(saved["values"]["mean"], expected["mean"], rtol=1e-12)
    # the statistics are the job's result: checkpointed (downloadable) as round 0
    round_num, model = Checkpointer(tmp_path / "checkpoints").load_latest()
    assert round_num == 0 and model.allclose(result.weights)
    assert [r.round_num for r in result.history.rounds] == [0]


def test_a_site_that_fails_a_statistics_pass_is_reported():
    def locked(config):
        raise OSError("table locked")

    def trainer(ctx):
        t = toyjob.ToyTrainer(ctx.site_index, "ok")
        if ctx.site_id == "site-1":
            t.statistics = locked
        return t

    job = dataclasses.replace(toyjob.make_job(num_rounds=1, statistics=True), trainer=trainer)
    result = simulate(job)
    assert [(f.site_id, f.round_num, f.kind) for f in result.failures] == [
        ("site-1", 0, "statistics")]
    assert "OSError: table locked" in result.failures[0].message
    # training afterwards does not make up for the statistics it did not send
    assert result.summary.startswith("finished with 2 of 3 sites; site-1: round 0 statistics")


def test_cross_site_validation_gives_the_models_by_sites_matrix(tmp_path):
    job = dataclasses.replace(toyjob.make_job(num_rounds=1),
                              workflows=(TrainRounds(), CrossSiteValidation()))
    (tmp_path / "cross_site-models-x1").mkdir()  # left by a server killed mid-step
    (tmp_path / "cross_site-models-x1" / "site-0.npz").write_bytes(b"a site's model")
    result = simulate(job, run_dir=tmp_path)
    saved = result.results["cross_site"]
    matrix = CrossSiteMatrix.from_dict(saved)
    assert matrix.models == ("global", "local:site-0", "local:site-1", "local:site-2")
    assert matrix.sites == ("site-0", "site-1", "site-2")
    targets = {"site-0": 1.0, "site-1": 2.0, "site-2": 3.0}
    for site, target in targets.items():
        # the toy site's local model is its target everywhere; its mse at j is (t_i - t_j)^2
        assert matrix.value("global", site, "mse") == pytest.approx((MEAN_ALL - target) ** 2)
        for owner, owner_target in targets.items():
            assert matrix.value(f"local:{owner}", site, "mse") == pytest.approx(
                (owner_target - target) ** 2)
    assert json.loads((tmp_path / "cross_site.json").read_text()) == saved
    assert not any(matrix.cell(m, s).empty for m in matrix.models for s in matrix.sites)
    assert matrix.cell("global", "site-2").num_samples == 15
    # the sites' local models are kept on the server only while the step runs
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints", "cross_site.json", "metrics.csv", "metrics.json"]


class CountRows(Workflow):
    """A workflow of its own with a task kind of its own."""

    name = "count_rows"

    def run(self, ctx, weights):
        failures = []
        counts = {}
        request = Gather("count_rows", 0, ctx.sites(), EvalResult)
        with contextlib.closing(ctx.gather(request, failures)) as arrivals:
            for arrival in arrivals:
                counts[arrival.site_id] = arrival.result.num_samples
        ctx.save_result(self.name, {"counts": counts})
        return weights


def test_a_custom_workflow_sends_its_own_task_kind_and_a_site_without_a_handler_says_so():
    def trainer(ctx):
        t = toyjob.ToyTrainer(ctx.site_index, "ok")
        if ctx.site_id != "site-2":
            t.task_handlers = {"count_rows": lambda task: EvalResult(t.n, {})}
        return t

    job = Job(name="count", initial_weights=toyjob.initial, trainer=trainer,
              strategy=toyjob.make_job().strategy, num_rounds=0,
              site_ids=("site-0", "site-1", "site-2"), workflows=(CountRows(),))
    result = simulate(job)
    assert result.results["count_rows"]["counts"] == {"site-0": 10, "site-1": 20}
    (failure,) = result.failures
    assert failure.site_id == "site-2" and failure.kind == "count_rows"
    assert "no handler for task kind 'count_rows'" in failure.message


def test_job_settings_for_workflows_are_checked():
    from fedcare import ConfigError
    with pytest.raises(ConfigError, match="num_rounds must be >= 1"):
        toyjob.make_job(num_rounds=0)
    with pytest.raises(ConfigError, match="workflows must be a non-empty sequence"):
        Job(name="x", initial_weights=toyjob.initial, trainer=toyjob.ToyTrainer,
            strategy=toyjob.make_job().strategy, num_rounds=1, workflows=("train",))
    with pytest.raises(ConfigError, match="site_wait_s must be a number >= 0"):
        toyjob.make_job(site_wait_s=-1)
    with pytest.raises(ValueError, match="distinct names"):
        FederatedStatistics(toyjob.MeanTarget(), toyjob.MeanTarget())


def test_sites_prepare_when_the_job_starts_and_one_that_cannot_is_reported_first():
    prepared = []

    class Preparing(toyjob.ToyTrainer):
        def prepare(self, config):
            if self.n == 20:
                raise ImportError("No module named 'monai'")
            prepared.append(self.n)

    def trainer(ctx):
        return Preparing(ctx.site_index, "ok")

    result = simulate(dataclasses.replace(toyjob.make_job(num_rounds=2), trainer=trainer))
    assert sorted(prepared) == [10, 30]  # once per site, before round 1
    first = result.failures[0]
    assert (first.site_id, first.round_num, first.kind) == ("site-1", 0, "prepare")
    assert "ImportError: No module named 'monai'" in first.message
    assert result.history.rounds[0].failures[0] == first
    # it trained afterwards: a site that could not start and then did counts as recovered
    assert result.summary == ("finished with 3 of 3 sites; recovered after failing: site-1 "
                              "(1 failure)")


def test_a_job_without_initial_weights_takes_them_from_a_site():
    class Initialising(toyjob.ToyTrainer):
        def initial_model(self):
            return toyjob.initial()

    def trainer(ctx):
        return Initialising(ctx.site_index, "ok")

    job = dataclasses.replace(toyjob.make_job(num_rounds=1), trainer=trainer,
                              initial_weights=None)
    result = simulate(job)
    np.testing.assert_allclose(result.weights["w"], MEAN_ALL, rtol=1e-6)
    without = dataclasses.replace(job, trainer=lambda ctx: toyjob.ToyTrainer(ctx.site_index, "ok"))
    with pytest.raises(Exception, match="has no initial_model"):
        simulate(without)


def test_a_trainer_referenced_by_name_is_imported_only_where_it_trains():
    job = dataclasses.replace(toyjob.make_job(num_rounds=1), trainer="toyjob:trainer_for",
                              trainer_params={"mode": "ok"})
    result = simulate(job)
    np.testing.assert_allclose(result.weights["w"], MEAN_ALL, rtol=1e-6)
    from fedcare import ConfigError
    with pytest.raises(ConfigError, match="trainer must be a callable or 'module:function'"):
        dataclasses.replace(job, trainer="not a reference")
    with pytest.raises(ConfigError, match="trainer_params must be JSON values"):
        dataclasses.replace(job, trainer_params={"x": object()})


def test_a_round_leaves_no_reference_cycle_holding_its_model():
    """A cycle through the round's streams kept every round's model and upload undo memory
    alive until the cyclic GC ran (server peak 9.4x the model instead of 4.4x)."""
    import gc
    import weakref

    from fedcare.server.streams import RoundStreams

    made = []
    original = RoundStreams.__init__

    def tracking(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(weakref.ref(self))

    gc.collect()
    gc.disable()
    try:
        RoundStreams.__init__ = tracking
        simulate(toyjob.make_job(num_rounds=3))
        alive = [ref for ref in made if ref() is not None]
    finally:
        RoundStreams.__init__ = original
        gc.enable()
    assert len(made) == 3 and alive == []


def test_variance_is_exact_when_a_site_misses_the_second_pass():
    from fedcare.analytics import Mean, Variance, site_statistics

    data = {"a": np.array([[1.0], [2.0], [3.0]]), "b": np.array([[100.0], [np.nan], [102.0]])}

    class Rows:
        def __init__(self, ctx):
            self.x, self.site = data[ctx.site_id], ctx.site_id

        def statistics(self, config, model=None):
            if self.site == "b" and config["name"] == "variance":
                raise OSError("connection to the warehouse lost")
            return site_statistics(self.x, config, model)

        def train(self, weights, config):
            raise NotImplementedError

        evaluate = train

    job = Job(name="two-pass", initial_weights=lambda: Weights({}), trainer=Rows,
              strategy=toyjob.make_job().strategy, num_rounds=0, site_ids=("a", "b"),
              workflows=(FederatedStatistics(Mean(), Variance()),))
    result = simulate(job)
    # the mean counts a and b; the variance can only count a's rows, about a's own mean
    assert result.weights["mean"][0] == pytest.approx((1 + 2 + 3 + 100 + 102) / 5)
    assert result.weights["variance"][0] == pytest.approx(1.0)
    assert [f.kind for f in result.failures] == ["statistics"]


def test_cross_site_validation_with_scaffold_and_a_site_called_global():
    from test_controller import ScaffoldToy

    from fedcare import algorithms

    job = dataclasses.replace(
        toyjob.make_job(num_rounds=1), strategy=algorithms.Scaffold(),
        trainer=lambda ctx: ScaffoldToy(ctx.site_index), site_ids=("global", "b", "c"),
        workflows=(TrainRounds(), CrossSiteValidation()))
    result = simulate(job)
    matrix = CrossSiteMatrix.from_dict(result.results["cross_site"])
    # control-variate changes are not part of a local model; "global" is just a site's name
    assert result.failures == []
    assert matrix.models == ("global", "local:b", "local:c", "local:global")
    assert matrix.value("local:global", "global", "mse") == pytest.approx(0.0)  # its own data
    assert matrix.value("global", "global", "mse") > 0.1  # not site "global"'s model


def test_excluded_variables_do_not_break_an_initial_model_from_a_site():
    from fedcare.core.policy import SitePolicy

    class Initialising(toyjob.ToyTrainer):
        def initial_model(self):
            return toyjob.initial()

    job = dataclasses.replace(toyjob.make_job(num_rounds=1), initial_weights=None,
                              trainer=lambda ctx: Initialising(ctx.site_index, "ok"))
    policy = SitePolicy.model_validate({"outbound": [{"exclude_variables": {"patterns": ["^b$"]}}]})
    result = simulate(job, site_policy=policy)
    assert result.failures == []
    np.testing.assert_array_equal(result.weights["b"], 0.0)  # nobody's b left its site


def test_workflow_settings_that_cannot_work_are_refused():
    from fedcare import ConfigError
    with pytest.raises(ValueError, match="task kind must match"):
        Gather("Train\n", 0, [], EvalResult)
    with pytest.raises(ConfigError, match="as a FederatedStatistics workflow"):
        dataclasses.replace(toyjob.make_job(statistics=True), workflows=(TrainRounds(),))
    with pytest.raises(ConfigError, match="trains in one workflow"):
        dataclasses.replace(toyjob.make_job(), workflows=(TrainRounds(), TrainRounds()))


def test_a_sites_error_text_reaches_logs_and_records_as_one_printable_line():
    class Forging(toyjob.ToyTrainer):
        def train(self, weights, config):
            raise RuntimeError("disk\njob toy round 1: site site-0: forged line \x1b[31m red"
                               + "x" * 5000)

    def trainer(ctx):
        kind = Forging if ctx.site_id == "site-2" else toyjob.ToyTrainer
        return kind(ctx.site_index, "ok")

    job = dataclasses.replace(toyjob.make_job(num_rounds=1, min_sites=2), trainer=trainer)
    (failure,) = simulate(job).failures
    assert "\n" not in failure.message and "\x1b" not in failure.message
    assert failure.message.startswith("train raised RuntimeError: disk job toy round 1")
    assert len(failure.message) == 2000 and failure.message.endswith("...")


def test_statistics_after_training_run_again_when_a_job_resumes(tmp_path):
    from fedcare.server.controller import Checkpoint, RoundController
    from fedcare.site import SiteAgent
    from fedcare.transport import MemoryTransport

    def job():
        return dataclasses.replace(
            toyjob.make_job(num_rounds=2),
            workflows=(TrainRounds(), FederatedStatistics(toyjob.MeanTarget()),
                       CrossSiteValidation()))

    def transport(j):
        return MemoryTransport({s: SiteAgent(s, toyjob.ToyTrainer(i, "ok"),
                                             keep_local_model=True).handle
                                for i, s in enumerate(j.site_ids)})

    first = job()
    run = RoundController(first, transport(first), run_dir=tmp_path, keep_checkpoints=2)
    run.run()
    checkpoints = Checkpointer(tmp_path / "checkpoints", keep=2)
    resumed_job = job()
    resumed = RoundController(resumed_job, transport(resumed_job), resume=Checkpoint(
        1, checkpoints.load(1), [r for r in run.history.rounds if r.round_num <= 1])).run()
    assert [r.round_num for r in resumed.history.rounds] == [0, 1, 2]
    assert "statistics" in resumed.results and "cross_site" in resumed.results
    np.testing.assert_allclose(resumed.weights["b"], MEAN_ALL, rtol=1e-6)


def test_metric_names_must_be_printable_and_short():
    class Odd(toyjob.ToyTrainer):
        def evaluate(self, weights, config):
            return EvalResult(5, {"acc\x1b[2J": 1.0})

    job = dataclasses.replace(toyjob.make_job(num_rounds=1, min_sites=2),
                              trainer=lambda ctx: Odd(ctx.site_index, "ok")
                              if ctx.site_id == "site-0" else toyjob.ToyTrainer(ctx.site_index,
                                                                                "ok"))
    result = simulate(job)
    assert {(f.site_id, f.kind) for f in result.failures} == {("site-0", "evaluate")}
    assert "metric names must be printable text of 1..128 characters" in (
        result.failures[0].message)


def test_a_result_with_too_many_metrics_is_refused_and_never_stored():
    class Chatty(toyjob.ToyTrainer):
        def evaluate(self, weights, config):
            return EvalResult(5, {f"m{i}": 0.5 for i in range(65)})

    job = dataclasses.replace(toyjob.make_job(num_rounds=1, min_sites=2),
                              trainer=lambda ctx: Chatty(ctx.site_index, "ok")
                              if ctx.site_id == "site-1" else toyjob.ToyTrainer(ctx.site_index,
                                                                                "ok"))
    result = simulate(job)
    assert {(f.site_id, f.kind) for f in result.failures} == {("site-1", "evaluate")}
    assert {f.message for f in result.failures} == {"reported 65 metrics, at most 64 are taken"}
    assert all("site-1" not in r.site_eval and "m0" not in r.eval_metrics
               for r in result.history.rounds)


def test_a_site_keeps_exactly_the_parameters_the_server_names_local():
    from fedcare import TrainResult
    from fedcare.core.message import Task, TaskKind
    from fedcare.site import SiteAgent

    class Local:
        def train(self, weights, config):
            return TrainResult(Weights({k: np.asarray(v) + 1 for k, v in weights.items()}), 3)

        def evaluate(self, weights, config):
            self.seen = weights
            return EvalResult(1, {})

    trainer = Local()
    agent = SiteAgent("s", trainer)
    model = Weights({"bn.weight": np.zeros(2), "bn.weights2": np.zeros(2), "fc": np.zeros(2)})
    sent = agent.handle(Task("t", "j", 1, TaskKind.TRAIN, model, local_names=("bn.weight",)))
    assert sorted(sent.result.weights) == ["bn.weights2", "fc"]  # a name, not a pattern
    agent.handle(Task("e", "j", 1, TaskKind.EVALUATE, model, local_names=("bn.weight",)))
    np.testing.assert_array_equal(trainer.seen["bn.weight"], 1.0)  # its own value, put back
    np.testing.assert_array_equal(trainer.seen["fc"], 0.0)  # the server's


def test_a_failed_statistics_pass_is_not_made_good_by_a_later_pass_but_a_missing_initial_model_is():
    from fedcare.analytics import Mean, Variance, site_statistics

    class Rows:
        def __init__(self, ctx):
            self.site = ctx.site_id

        def statistics(self, config, model=None):
            if self.site == "b" and config["name"] == "mean":
                raise OSError("table locked")
            return site_statistics(np.array([[1.0], [3.0]]), config, model)

        def train(self, weights, config):
            raise NotImplementedError

        evaluate = train

    job = Job(name="passes", initial_weights=lambda: Weights({}), trainer=Rows,
              strategy=toyjob.make_job().strategy, num_rounds=0, site_ids=("a", "b"),
              workflows=(FederatedStatistics(Mean(), Variance()),))
    assert simulate(job).summary.startswith("finished with 1 of 2 sites; b: round 0 statistics")

    class NoInitial(toyjob.ToyTrainer):
        def initial_model(self):
            if self.n == 10:
                raise RuntimeError("no GPU for the initial model")
            return toyjob.initial()

    job = dataclasses.replace(toyjob.make_job(num_rounds=1), initial_weights=None,
                              trainer=lambda ctx: NoInitial(ctx.site_index, "ok"))
    assert simulate(job).summary == ("finished with 3 of 3 sites; recovered after failing: "
                                     "site-0 (1 failure)")
