"""The results of the clinical analytics on screen (rich tables) and on disk (JSON, CSV, PNG).

One function per result document (``regression``, ``kaplan_meier``, ``cohort``), used after
``fedcare stats ...`` in the simulator and after ``fedcare admin KIT stats JOB`` on a real
federation, so both write the same files.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

#: The result names of the clinical jobs, in the order they are shown.
RESULTS = ("regression", "kaplan_meier", "cohort")


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def show_regression(out: Console, doc: Mapping[str, Any], folder: Path) -> list[Path]:
    """The coefficient table (estimate, SE, 95% CI, Wald p, exp(coef)); regression.csv."""
    ratio = "odds ratio" if doc["model"] == "logistic" else "hazard ratio"
    kind = doc["model"] + (" (stratified by site)" if doc.get("stratified") else "")
    table = Table(title=f"{kind} regression of {doc['outcome']}: {doc['num_rows']:.0f} rows, "
                        f"{doc['num_events']:.0f} events, {len(doc['sites'])} sites, "
                        f"{doc['iterations']} Newton steps, log-likelihood {doc['loglik']:.6f}")
    for name in ("covariate", "coef", "se", "95% CI", "p", ratio):
        table.add_column(name, justify="left" if name == "covariate" else "right")
    for row in doc["coefficients"]:
        table.add_row(row["covariate"], _fmt(row["coef"]), _fmt(row["se"]),
                      f"{row['ci_low']:.4f} .. {row['ci_high']:.4f}", _fmt(row["p"]),
                      _fmt(row["exp_coef"]))
    out.print(table)
    perf = doc.get("performance") or {}
    if doc["model"] == "cox" and perf.get("c_index") is not None:
        out.print(f"C-index {perf['c_index']:.4f} (pairs within sites: "
                  f"{perf['comparable_pairs']:.0f})", markup=False, highlight=False)
    elif perf.get("accuracy") is not None:
        out.print(f"accuracy {_fmt(perf['accuracy'])}, AUC {_fmt(perf['auc'])} (+- "
                  f"{perf['auc_error_bound']:.1e}), sensitivity {_fmt(perf['sensitivity'])}, "
                  f"specificity {_fmt(perf['specificity'])}: on the fitted rows, from summed "
                  "counts", markup=False, highlight=False)
    path = folder / "regression.csv"
    path.write_text(_csv(doc["coefficients"], ["covariate", "coef", "se", "z", "p", "ci_low",
                                               "ci_high", "exp_coef"]), encoding="utf-8")
    return [path]


def show_kaplan_meier(out: Console, doc: Mapping[str, Any], folder: Path) -> list[Path]:
    """Each curve's rows, events and median; the log-rank test; kaplan_meier.csv (one line
    per curve and time) and kaplan_meier.png."""
    table = Table(title=f"Kaplan-Meier of {doc['time']} (event {doc['event']})"
                        + (f" by {doc['group']}" if doc.get("group") else ""))
    for name in ("group", "rows", "events", "median", "S at last time"):
        table.add_column(name, justify="left" if name == "group" else "right")
    lines = []
    for curve in doc["curves"]:
        last = curve["survival"][-1] if curve["survival"] else 1.0
        table.add_row(curve["group"], f"{curve['rows']:.0f}", f"{curve['events']:.0f}",
                      _fmt(curve["median"]), f"{last:.4f}")
        for j, t in enumerate(curve["times"]):
            lines.append({"group": curve["group"], "time": t, "at_risk": curve["at_risk"][j],
                          "events": curve["events_at"][j], "survival": curve["survival"][j],
                          "ci_low": curve["ci_low"][j], "ci_high": curve["ci_high"][j]})
    out.print(table)
    test = doc.get("logrank")
    if test:
        out.print(f"log-rank test: chi2 = {test['chi2']:.4f}, df = {test['df']}, "
                  f"p = {test['p']:.4g}", markup=False, highlight=False)
    suppressed = {s: n for s, n in doc.get("suppressed_groups", {}).items() if n}
    if suppressed:
        out.print(f"groups suppressed at sites (below their min_rows): {suppressed}",
                  markup=False, highlight=False)
    path = folder / "kaplan_meier.csv"
    path.write_text(_csv(lines, ["group", "time", "at_risk", "events", "survival", "ci_low",
                                 "ci_high"]), encoding="utf-8")
    png = folder / "kaplan_meier.png"
    _km_figure(doc, png)
    return [path, png]


def _km_figure(doc: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=110)
    axes = figure.add_subplot()
    for curve in doc["curves"]:
        times = [0.0, *curve["times"]]
        axes.step(times, [1.0, *curve["survival"]], where="post",
                  label=f"{curve['group']} (n={curve['rows']:.0f})",
                  linewidth=2.2 if curve["group"] == "all" else 1.4)
        axes.fill_between(times, [1.0, *curve["ci_low"]], [1.0, *curve["ci_high"]],
                          step="post", alpha=0.12)
    test = doc.get("logrank")
    axes.set_title("Kaplan-Meier, federated" + (f" (log-rank p = {test['p']:.3g})"
                                                if test else ""))
    axes.set_xlabel(str(doc["time"]))
    axes.set_ylabel("survival")
    axes.set_ylim(0, 1.02)
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def show_cohort(out: Console, doc: Mapping[str, Any], folder: Path) -> list[Path]:
    """The cohort table (overall lines bold, per-site lines under them); cohort.csv and one
    histogram PNG per column."""
    table = Table(title="cohort" + (f" by {doc['group']}" if doc.get("group") else ""))
    for name in ("group", "column", "site", "n", "missing", "mean", "sd", "q25", "median",
                 "q75"):
        table.add_column(name, justify="left" if name in ("group", "column", "site")
                         else "right")
    lines = []
    for cell in doc["cells"]:
        quantiles = cell.get("quantiles", {})
        overall = cell["site"] == "all"
        shown = "suppressed" if cell.get("suppressed") else None
        table.add_row(cell["group"], cell["column"], ("[bold]" if overall else "") + cell["site"],
                      shown or f"{cell['count']:.0f}", shown or f"{cell['missing']:.0f}",
                      _fmt(cell["mean"]), _fmt(cell["sd"]),
                      *(_fmt(quantiles.get(q)) for q in ("q25", "median", "q75")))
        lines.append({**{k: v for k, v in cell.items() if k not in ("quantiles", "histogram")},
                      **quantiles})
    out.print(table)
    if doc["cells"]:
        bound = {c["column"]: c["quantile_error_bound"] for c in doc["cells"] if "low" in c}
        out.print("quantiles from the summed histograms, each within one bin width: "
                  + ", ".join(f"{k} {v:.3g}" for k, v in bound.items()), markup=False,
                  highlight=False)
    path = folder / "cohort.csv"
    path.write_text(_csv(lines, ["group", "column", "site", "count", "missing", "mean", "sd",
                                 "q25", "median", "q75", "suppressed"]), encoding="utf-8")
    written = [path]
    for column in doc["columns"]:
        png = folder / f"cohort_{_safe(column)}.png"
        _histogram_figure(doc, column, png)
        written.append(png)
    return written


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:60]


def _histogram_figure(doc: Mapping[str, Any], column: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    for cell in doc["cells"]:
        if cell["column"] != column or cell["site"] != "all":
            continue
        inner = cell["histogram"][1:-1]
        width = (cell["high"] - cell["low"]) / len(inner)
        left = [cell["low"] + i * width for i in range(len(inner))]
        axes.bar(left, inner, width=width, align="edge", alpha=0.5, label=cell["group"])
    axes.set_title(f"{column}: federated histogram")
    axes.set_xlabel(column)
    axes.set_ylabel("rows")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


SHOW = {"regression": show_regression, "kaplan_meier": show_kaplan_meier,
        "cohort": show_cohort}


def write_results(out: Console, results: Mapping[str, Mapping[str, Any]], folder: Path
                  ) -> list[Path]:
    """Show every clinical result of ``results`` and write its files (and ``NAME.json``)
    into ``folder``; the written paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in RESULTS:
        if name in results:
            document = results[name]
            path = folder / f"{name}.json"
            path.write_text(json.dumps(document, indent=1), encoding="utf-8")
            written += [path, *SHOW[name](out, document, folder)]
    return written
