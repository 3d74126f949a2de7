"""Cross-site validation on the heart job: the matrix, refusals, the files, who sees what."""

import csv
import dataclasses
import io
import json

import numpy as np
import pytest
from rich.console import Console

import fedcare.sim.simulator as simulator
from fedcare import load_job, simulate
from fedcare.cli.cross_site import FILES, choose_metric, print_matrix, write_matrix
from fedcare.core.cross_site import GLOBAL, Cell, CrossSiteMatrix, local_model
from fedcare.core.errors import ConfigError
from fedcare.core.message import TaskKind
from fedcare.core.privacy_policy import PrivacyPolicy
from fedcare.core.trainer import SiteContext
from fedcare.datasets.heart import HOSPITALS
from fedcare.jobs.heart_site import make_trainer
from fedcare.server.visibility import cross_site_view, scope_of
from fedcare.site.privacy_guard import PrivacyGuard
from fedcare.site.privacy_ledger import PrivacyLedger

HEART = "fedcare.jobs.heart:make_job"


def heart_job(**params):
    return load_job(HEART, {"num_rounds": 3, "seed": 4, "cross_site": True, **params})


@pytest.fixture()
def sent(monkeypatch):
    """What each simulated site sent, by task kind: {kind: {site: [result, ...]}}."""
    sent = {}
    start_job = simulator.start_job

    def recording(job, context, policy, privacy, *identity):
        handle = start_job(job, context, policy, privacy, *identity)

        def handler(task):
            reply = handle(task)
            if reply.result is not None:
                sent.setdefault(str(task.kind), {}).setdefault(reply.site_id, []).append(
                    (task.round_num, reply.result))
            return reply
        return handler

    monkeypatch.setattr(simulator, "start_job", recording)
    return sent


def test_the_heart_matrix_equals_evaluating_the_same_models_directly(sent):
    job = heart_job()
    result = simulate(job)
    matrix = CrossSiteMatrix.from_dict(result.results["cross_site"])
    assert result.summary == "finished with 4 of 4 sites"
    assert matrix.sites == tuple(sorted(HOSPITALS))
    assert matrix.models == (GLOBAL, *(local_model(h) for h in sorted(HOSPITALS)))
    # a site's local model is the update it sent in the job's last round, sent again
    models = {GLOBAL: result.weights}
    for site in HOSPITALS:
        ((_, submitted),) = sent[TaskKind.SUBMIT_MODEL][site]
        last_round, trained = sent[TaskKind.TRAIN][site][-1]
        assert last_round == 3 and list(submitted.weights) == list(trained.weights)
        for name, array in submitted.weights.items():
            np.testing.assert_array_equal(array, trained.weights[name])
        models[local_model(site)] = submitted.weights
    # the same models, evaluated by each hospital's trainer built afresh for its data
    for index, site in enumerate(job.site_ids):
        trainer = make_trainer(SiteContext(site, index, len(job.site_ids), seed=job.seed),
                               **job.trainer_params)
        for model, weights in models.items():
            direct = trainer.evaluate(weights, {})
            cell = matrix.cell(model, site)
            assert cell.num_samples == direct.num_samples
            assert cell.metrics.keys() == direct.metrics.keys()  # with the metrics' parts
            assert {"accuracy", "loss", "accuracy.num", "accuracy.den"} <= cell.metrics.keys()
            for name, value in direct.metrics.items():
                assert cell.metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-12), (
                    model, site, name)
    # the global row is the last round's federated evaluation
    last = result.history.rounds[-1].site_eval
    assert {s: matrix.value(GLOBAL, s, "accuracy") for s in HOSPITALS} == {
        s: last[s].metrics["accuracy"] for s in HOSPITALS}
    # models differ: the matrix is not one row repeated
    assert len({matrix.value(m, "cleveland", "loss") for m in matrix.models}) == 5


def test_a_site_refusing_its_model_or_validation_leaves_empty_cells_with_its_reason():
    allowed = ["train", "evaluate", "statistics", "initial_model"]
    job = heart_job()
    result = simulate(job, site_privacy={
        "va": PrivacyPolicy(task_kinds=[*allowed, "validate"]),          # keeps its model
        "hungary": PrivacyPolicy(task_kinds=[*allowed, "submit_model"]),  # validates nothing
    })
    matrix = CrossSiteMatrix.from_dict(result.results["cross_site"])
    # both took part in training all the same
    assert all({"va", "hungary"} <= set(r.trained_sites) for r in result.history.rounds[1:])
    for site in matrix.sites:
        cell = matrix.cell(local_model("va"), site)
        assert cell.empty and cell.error.startswith("no local model from va: submit_model "
                                                    "raised PrivacyError: task kind "
                                                    "'submit_model' is not allowed"), cell
    for model in matrix.models[:-1]:  # (va's row says it sent no model)
        cell = matrix.cell(model, "hungary")
        assert cell.empty and "task kind 'validate' is not allowed" in cell.error, cell
    filled = [(m, s) for m in matrix.models for s in matrix.sites
              if not matrix.cell(m, s).empty]
    assert len(filled) == 4 * 3 == len([(m, s) for m in matrix.models if m != "local:va"
                                        for s in matrix.sites if s != "hungary"])
    assert matrix.value(local_model("hungary"), "va", "accuracy") is not None
    assert {(f.site_id, f.kind) for f in result.failures} == {
        ("va", "submit_model"), *(("hungary", "validate") for _ in range(4))}


def test_a_policy_refuses_a_job_for_a_required_kind_but_not_for_an_optional_one(tmp_path):
    job = heart_job()
    assert job.optional_task_kinds == {"submit_model", "validate"}

    def refusal(kinds):
        guard = PrivacyGuard(PrivacyPolicy(task_kinds=kinds), PrivacyLedger(None))
        return guard.refuses_job(job, [])

    assert refusal(["train", "evaluate", "statistics", "initial_model"]) is None
    assert "['train']" in refusal(["evaluate", "statistics", "initial_model", "validate"])


def small_matrix():
    cells = {(GLOBAL, "a"): Cell({"accuracy": 0.75, "loss": 0.5}, 40),
             (GLOBAL, "b"): Cell({"accuracy": 0.5, "loss": 0.25}, 10),
             (local_model("a"), "a"): Cell({"accuracy": 1.0}, 40),
             (local_model("a"), "b"): Cell(error="validate raised OSError: disk, site a's fault"),
             (local_model("b"), "a"): Cell({"accuracy": 0.25, "loss": 1.5}, 40)}
    return CrossSiteMatrix("job-0123456789", 5, (GLOBAL, local_model("a"), local_model("b")),
                           ("a", "b"), cells)


def test_the_three_files_are_written_and_read_back(tmp_path):
    matrix = small_matrix()
    written = write_matrix(matrix, tmp_path / "out", "accuracy")
    assert [p.name for p in written] == list(FILES)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "cross_site.csv").read_text())))
    assert [(r["model"], r["site"]) for r in rows] == [
        (m, s) for m in matrix.models for s in matrix.sites]
    by_cell = {(r["model"], r["site"]): r for r in rows}
    assert float(by_cell[(GLOBAL, "b")]["loss"]) == 0.25
    assert by_cell[(GLOBAL, "b")]["num_samples"] == "10" and by_cell[(GLOBAL, "b")]["error"] == ""
    assert by_cell[("local:a", "a")]["loss"] == ""  # the cell lacks the metric
    assert by_cell[("local:a", "b")]["error"].startswith("validate raised OSError")
    assert by_cell[("local:b", "b")]["error"] == "not evaluated"
    again = CrossSiteMatrix.from_dict(json.loads((tmp_path / "out" / "cross_site.json")
                                                 .read_text()))
    assert again == dataclasses.replace(matrix, cells={
        **matrix.cells, ("local:b", "b"): Cell(error="not evaluated")})
    import matplotlib.image
    image = matplotlib.image.imread(tmp_path / "out" / "cross_site.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_the_table_marks_empty_cells_with_their_reasons_and_metrics_are_checked():
    matrix = small_matrix()
    out = Console(record=True, width=120)
    print_matrix(out, matrix, choose_metric(matrix, None))
    text = out.export_text()
    assert "0.7500" in text and "n/a [1]" in text and "n/a [2]" in text
    assert "[1] validate raised OSError: disk, site a's fault" in text
    assert "[2] not evaluated" in text
    assert choose_metric(matrix, "loss") == "loss"
    with pytest.raises(ConfigError, match="no metric 'auc'; it has \\['accuracy', 'loss'\\]"):
        choose_metric(matrix, "auc")


@pytest.mark.parametrize("document, problem", [
    ({"job_id": "j", "round_num": 1, "models": "global", "sites": []}, "models must be a list"),
    ({"job_id": "j", "round_num": 1, "models": ["m"], "sites": ["a", "a"]}, "sites has dup"),
    ({"job_id": "j", "round_num": "1", "models": [], "sites": []}, "round_num must be an int"),
    ({"job_id": "j", "round_num": 1, "models": ["m"], "sites": ["a"],
      "cells": {"m": {"a": {"num_samples": 3, "metrics": {"acc": "high"}}}}},
     r"cells\['m'\]\['a'\].metrics\['acc'\] must be a finite number"),
])
def test_a_malformed_matrix_document_is_refused_naming_the_field(document, problem):
    with pytest.raises(ValueError, match=problem):
        CrossSiteMatrix.from_dict(document)


def test_a_site_admin_sees_only_the_cells_about_its_own_site_and_a_viewer_none():
    document = small_matrix().to_dict()
    assert cross_site_view(document, scope_of("project_admin")) == document
    own = CrossSiteMatrix.from_dict(cross_site_view(document, scope_of("site_admin:b")))
    # b's data with the global model; its own model row is empty here ("not evaluated")
    assert own.models == (GLOBAL, local_model("b")) and own.sites == ("b",)
    assert own.value(GLOBAL, "b", "accuracy") == 0.5
    a_view = CrossSiteMatrix.from_dict(cross_site_view(document, scope_of("site_admin:a")))
    assert a_view.models == (GLOBAL, local_model("a")) and a_view.sites == ("a",)
    viewer = CrossSiteMatrix.from_dict(cross_site_view(document, scope_of("viewer")))
    assert viewer.models == () and viewer.sites == () and viewer.cells == {}


def test_a_reason_in_a_visible_cell_names_no_other_site():
    matrix = CrossSiteMatrix("j", 1, (GLOBAL,), ("a", "b"), {
        (GLOBAL, "a"): Cell(error="validate raised TimeoutError: waited for b")})
    view = CrossSiteMatrix.from_dict(cross_site_view(matrix.to_dict(), scope_of("site_admin:a")))
    assert view.cell(GLOBAL, "a").error == "validate raised TimeoutError: waited for another site"


def test_fedcare_simulate_writes_the_three_files_into_the_run_folder(tmp_path):
    from typer.testing import CliRunner

    from fedcare.cli.main import app

    done = CliRunner().invoke(app, ["simulate", HEART, "--param", "num_rounds=2", "--param",
                                    "cross_site=true", "--out", str(tmp_path)],
                              env={"COLUMNS": "150"})
    assert done.exit_code == 0, done.output
    (run_dir,) = tmp_path.iterdir()
    assert {p.name for p in run_dir.iterdir()} >= set(FILES)
    assert "heart: cross-site validation after round 2, accuracy" in done.output
    matrix = CrossSiteMatrix.from_dict(json.loads((run_dir / "cross_site.json").read_text()))
    assert matrix.models == (GLOBAL, *(local_model(h) for h in sorted(HOSPITALS)))
