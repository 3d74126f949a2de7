"""``fedcare stats``: one command per analysis, its tables on screen and its files on disk."""

import csv
import json

from typer.testing import CliRunner

from fedcare.cli.main import app


def test_km_by_stage_prints_the_logrank_test_and_writes_csv_json_png(tmp_path):
    done = CliRunner().invoke(app, ["stats", "km", "--time", "time", "--event", "event",
                                    "--group", "stage", "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "log-rank test: chi2 = 19.0668, df = 3" in done.output
    (run,) = tmp_path.iterdir()
    assert {p.name for p in run.iterdir()} >= {"kaplan_meier.json", "kaplan_meier.csv",
                                               "kaplan_meier.png"}
    lines = list(csv.DictReader((run / "kaplan_meier.csv").read_text().splitlines()))
    assert {r["group"] for r in lines} == {"all", "stage=0", "stage=1", "stage=2", "stage=3"}
    assert json.loads((run / "kaplan_meier.json").read_text())["logrank"]["df"] == 3


def test_fit_with_a_missing_covariate_fails_in_one_line_naming_site_and_column(tmp_path):
    done = CliRunner().invoke(app, ["stats", "fit", "--model", "logistic", "--outcome",
                                    "disease", "--covariate", "age", "--covariate", "smoker",
                                    "--out", str(tmp_path)])
    assert done.exit_code == 1
    assert "error:" in done.output and "no column 'smoker'" in done.output
    assert "site cleveland" in done.output and "Traceback" not in done.output
