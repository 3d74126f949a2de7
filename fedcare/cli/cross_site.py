"""The cross-site validation matrix on screen and on disk: ``fedcare admin KIT cross-site JOB``,
and the same table and files after ``fedcare simulate`` of a job that validates cross-site.

Three files, in one folder: ``cross_site.json`` (the whole matrix, every metric and every empty
cell's reason: :meth:`fedcare.core.cross_site.CrossSiteMatrix.to_dict`), ``cross_site.csv``
(one line per model and site) and ``cross_site.png`` (a heatmap of one metric).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedcare.cli.output import console, fail
from fedcare.cli.plot import PREFERRED_METRIC, cross_site_figure
from fedcare.core.cross_site import RESULT, CrossSiteMatrix
from fedcare.core.errors import ConfigError
from fedcare.core.text import one_line

FILES = ("cross_site.csv", "cross_site.json", "cross_site.png")


def choose_metric(matrix: CrossSiteMatrix, metric: str | None) -> str | None:
    """``metric``, checked; by default ``accuracy`` if the matrix has it, else its first
    metric; None when no cell has any metric.

    Raises:
        ConfigError: the matrix has no metric ``metric``, naming those it has.
    """
    names = matrix.metric_names
    if metric is None:
        return PREFERRED_METRIC if PREFERRED_METRIC in names else (names[0] if names else None)
    if metric not in names:
        raise ConfigError(f"job {matrix.job_id}: the cross-site matrix has no metric "
                          f"{metric!r}; it has {names or 'none'}")
    return metric


def write_matrix(matrix: CrossSiteMatrix, folder: Path, metric: str | None) -> list[Path]:
    """Write the three files into ``folder`` (created if missing; files of those names are
    replaced); the heatmap shows ``metric`` and is left out when the matrix has no metric."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, png_path = (folder / name for name in FILES)
    csv_path.write_text(matrix.to_csv(), encoding="utf-8")
    json_path.write_text(json.dumps(matrix.to_dict(), indent=1), encoding="utf-8")
    if metric is None:
        return [csv_path, json_path]
    cross_site_figure(matrix, metric, title=f"{matrix.job_id}: cross-site validation, "
                                            f"{metric}").savefig(png_path)
    return [csv_path, json_path, png_path]


def print_matrix(out: Console, matrix: CrossSiteMatrix, metric: str | None) -> None:
    """The matrix of ``metric`` as a table (models as rows, sites as columns), each empty
    cell marked with a number and the reasons listed below it."""
    table = Table(title=f"{matrix.job_id}: cross-site validation after round "
                        f"{matrix.round_num}" + (f", {metric}" if metric else ""))
    table.add_column("model \\ site", no_wrap=True)
    for site in matrix.sites:
        table.add_column(Text(site), justify="right")
    reasons: dict[str, int] = {}
    for model in matrix.models:
        row = [Text(model)]
        for site in matrix.sites:
            cell = matrix.cell(model, site)
            value = matrix.value(model, site, metric) if metric else None
            if cell.error is not None:
                number = reasons.setdefault(one_line(cell.error), len(reasons) + 1)
                row.append(Text(f"n/a [{number}]", style="dim"))
            else:
                row.append(Text("-" if value is None else f"{value:.4f}"))
        table.add_row(*row)
    out.print(table)
    for reason, number in reasons.items():
        out.print(Text(f"[{number}] {reason}"), highlight=False)


def admin_cross_site(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="the job (its id, from admin submit/status)")],
    metric: Annotated[str | None, typer.Option(
        help="the metric of the table and heatmap (default: accuracy, else the first)")] = None,
    out: Annotated[Path, typer.Option(
        help="folder to write cross_site.csv, cross_site.json and cross_site.png into "
             "(created if missing)")] = Path("."),
    server: Annotated[str | None, typer.Option(help="override host:port of the server")] = None,
) -> None:
    """A job's cross-site validation matrix: every model (the global one, each site's local
    one) evaluated at every site. Prints it and writes cross_site.csv, cross_site.json and
    cross_site.png (heatmap of --metric) into --out.

    A site admin gets the cells about its own site only, a viewer none.
    """
    from fedcare.cli.federation import _call
    from fedcare.server.admin import JOB_ID
    from fedcare.transport.grpc import fedcare_pb2 as pb

    if not JOB_ID.fullmatch(job_id):
        raise fail(ValueError(f"{one_line(job_id, 80)!r} is not a job id"))
    reply = _call(ctx.obj, server, "Result", pb.ResultRef(job_id=job_id, name=RESULT))
    try:
        matrix = CrossSiteMatrix.from_dict(json.loads(reply.json))
        chosen = choose_metric(matrix, metric)
    except (ValueError, ConfigError) as exc:
        raise fail(exc) from None
    if not matrix.models:
        console.print(f"{job_id}: no cell of the cross-site matrix is visible to your role",
                      markup=False, highlight=False)
        return
    print_matrix(console, matrix, chosen)
    try:
        written = write_matrix(matrix, out, chosen)
    except OSError as exc:
        raise fail(f"cannot write the cross-site files into {out}: {exc.strerror or exc}"
                   ) from None
    console.print("wrote " + ", ".join(map(str, written)), markup=False, highlight=False)
