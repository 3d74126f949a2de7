"""Small CLI fixes: learning curve of any metric, ``admin status`` at 80 columns, download help."""

import io
import json
import logging
import re
import warnings

from rich.console import Console
from typer.testing import CliRunner

from fedcare.cli.federation import jobs_table
from fedcare.cli.main import app
from fedcare.cli.plot import learning_curve, learning_curve_figure
from fedcare.server.history import History, RoundRecord, SiteEval


def history_of(metrics_by_round):
    """Rounds 0..N-1 with two sites; ``metrics_by_round[r]`` is the global eval metrics."""
    history = History()
    for r, metrics in enumerate(metrics_by_round):
        sites = {s: SiteEval(10, {k: v + i for k, v in metrics.items()})
                 for i, s in enumerate(["site-a", "site-b"])}
        history.append(RoundRecord(round_num=r, trained_sites=[] if r == 0 else list(sites),
                                   train_metrics={"loss": 1.0}, eval_metrics=dict(metrics),
                                   site_eval=sites if metrics else {}))
    return history


def test_learning_curve_of_an_mse_only_history_has_lines_and_no_warning(tmp_path):
    history = history_of([{"mse": 4.0}, {"mse": 2.0}, {"mse": 1.0}])
    path = tmp_path / "learning_curve.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels" before the fix
        assert learning_curve(history, path, title="toy") == path
        fig = learning_curve_figure(history)
    assert path.stat().st_size > 10_000
    ax = fig.axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines == {"site-a": [4.0, 2.0, 1.0], "site-b": [5.0, 3.0, 2.0],
                     "all sites (weighted)": [4.0, 2.0, 1.0]}
    assert "mse" in ax.get_ylabel() and "mse" in ax.get_title()


def test_learning_curve_prefers_accuracy_else_the_first_metric():
    both = history_of([{"loss": 0.7, "accuracy": 0.5}, {"loss": 0.3, "accuracy": 0.9}])
    assert "accuracy" in learning_curve_figure(both).axes[0].get_ylabel()
    no_accuracy = history_of([{"auc": 0.5, "loss": 0.7}, {"auc": 0.8, "loss": 0.3}])
    assert "auc" in learning_curve_figure(no_accuracy).axes[0].get_ylabel()
    chosen = learning_curve_figure(no_accuracy, metric="loss").axes[0]
    assert "loss" in chosen.get_ylabel() and len(chosen.get_lines()) == 3


def test_learning_curve_without_any_metric_writes_no_file_and_says_why(tmp_path, caplog):
    path = tmp_path / "learning_curve.png"
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="fedcare"):
        warnings.simplefilter("error")
        assert learning_curve(history_of([{}, {}]), path) is None
        assert learning_curve(history_of([{"mse": 1.0}]), path, metric="accuracy") is None
    assert not path.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert any("no evaluation metric in the run's history" in m for m in messages), messages
    assert any("no evaluation metric 'accuracy'" in m for m in messages), messages


def job(job_id, **extra):
    return {"job_id": job_id, "entry_point": "hospital_research.cardiology.jobs:make_job",
            "params": {"num_rounds": 30, "seed": 2}, "status": "failed",
            "submitted_by": "admin@cardiology.example.org", "created_s": 1.7e9, "round_num": 3,
            "num_rounds": 30, "error": "round 4: only 1 of 3 sites returned a valid result "
                                       "[site-2 raised RuntimeError: disk full]", **extra}


def render(table, width=80):
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.file.getvalue()


def columns(text):
    """{header: [cell per row]} of a table rendered with rich's default box, spaces dropped
    (a wrapped cell's lines are joined back, whether rich broke them at a space or not)."""
    head, body = text.split("┡", 1)[0], text.split("┩", 1)[1]

    def fragments(line):
        return [part.replace(" ", "") for part in line.strip()[1:-1].split(line.strip()[0])]

    head_rows = [fragments(line) for line in head.splitlines() if line.startswith("┃")]
    headers = ["".join(parts) for parts in zip(*head_rows, strict=True)]
    rows: list[list[str]] = []
    for line in body.splitlines():
        if line.startswith("│"):
            parts = fragments(line)
            if parts[0]:  # the job id starts a row
                rows.append(parts)
            else:
                rows[-1] = [a + b for a, b in zip(rows[-1], parts, strict=True)]
    return {h: [row[i] for row in rows] for i, h in enumerate(headers)}


def test_admin_status_at_80_columns_shows_whole_job_ids_and_params():
    jobs = [job("job-0123456789abcdef"), job("job-fedcba9876543210", params={"lr": 0.5})]
    text = render(jobs_table(jobs))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    for j in jobs:  # each id whole on one line, not cut or folded
        assert any(j["job_id"] in line for line in lines), text
    table = columns(text)
    assert table["job"] == [j["job_id"] for j in jobs]
    assert table["params"] == ['{"num_rounds":30,"seed":2}', '{"lr":0.5}'], text
    assert table["round"] == ["3/30", "3/30"]
    # brackets in an error are shown as they are, not read as rich markup
    assert all(e.endswith("[site-2raisedRuntimeError:diskfull]") for e in table["error"]), text


def test_jobs_table_takes_the_server_dicts_as_they_come():
    """Unknown keys (a newer server) are ignored; missing ones give an empty cell."""
    newer = job("job-aaaaaaaaaa", summary="finished with 2 of 3 sites", failures=[{"x": 1}])
    older = {"job_id": "job-bbbbbbbbbb", "entry_point": "m:f", "status": "queued"}
    text = render(jobs_table([newer, older]), width=200)
    table = columns(text)
    assert table["job"] == ["job-aaaaaaaaaa", "job-bbbbbbbbbb"]
    assert table["entrypoint"][1] == "m:f" and table["status"][1] == "queued"
    assert table["params"][1] == "{}" and table["error"][1] == "" and table["round"][1] == "/"
    assert "finished with 2 of 3 sites" in text  # the summary, in the sites column
    assert "'x'" not in text  # an unknown key is not shown
    assert "jobs" in render(jobs_table([]))


def test_admin_download_help_names_the_files_it_writes(tmp_path):
    result = CliRunner().invoke(app, ["admin", str(tmp_path / "any-kit"), "download", "--help"],
                                env={"COLUMNS": "100", "TERMINAL_WIDTH": "100"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    # what admin_download writes, named as the usage line names the argument: {job_id}
    assert "{job_id}-model.npz" in text and "{job_id}-metrics.json" in text, text
    assert not re.search(r"(?<![-\w])model\.npz|(?<![-\w])metrics\.json", text), text


def test_jobs_table_params_are_one_line_of_json():
    params = {"modes": {"site-1": "nan"}, "lr": 0.05, "hosts": ["a", "b"]}
    text = render(jobs_table([job("job-cccccccccc", params=params)]), width=400)
    assert json.dumps(params) in text


def test_admin_status_shows_who_failed_and_the_summary():
    from rich.console import Console

    from fedcare.cli.federation import jobs_table

    running = {"job_id": "job-1", "status": "running", "round_num": 2, "num_rounds": 5,
               "failed_sites": {"va": {"count": 2, "round_num": 2, "kind": "train",
                                       "message": "train raised KeyError: 'chol'"}}}
    done = {"job_id": "job-2", "status": "finished", "round_num": 5, "num_rounds": 5,
            "summary": "finished with 3 of 4 sites; va: round 5 train: \x1b[31mKeyError"}
    console = Console(width=200, record=True, color_system=None)
    console.print(jobs_table([running, done]))
    text = console.export_text()
    assert "va: 2x, last round 2 train: train raised KeyError: 'chol'" in text
    assert "finished with 3 of 4 sites; va: round 5 train:" in text
    assert "\x1b" not in text
