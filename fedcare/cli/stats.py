"""``fedcare stats``: clinical analytics in the simulator, and ``fedcare admin KIT stats JOB``
to fetch those of a real federation. Wiring only: the jobs are :mod:`fedcare.jobs.clinical`.

Simulated, each command runs its job over the data set's sites (or the sites of
``--data-dir SITE=FOLDER`` with ``--dataset csv:FILE``), with every site applying
``--min-rows`` as its privacy policy's ``min_rows``, then prints the tables and writes JSON,
CSV and PNG files into a run folder. On a real federation the same job is submitted by entry
point (``fedcare admin KIT submit fedcare.jobs.clinical:cohort_job --param ...``), and
``fedcare admin KIT stats JOB`` downloads its result and writes the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fedcare.cli.analytics_files import RESULTS, write_results
from fedcare.cli.output import console, fail
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.core.job import Job

stats_app = typer.Typer(no_args_is_help=True, help="Clinical statistics, exact across sites "
                        "(simulated here; fedcare admin KIT stats JOB on a federation).")

DatasetOpt = Annotated[str, typer.Option(help="heart, tcga_brca, or csv:FILE (in each "
                                              "site's --data-dir)")]
DataDirOpt = Annotated[list[str], typer.Option(
    help="a site's own data folder, SITE=FOLDER (repeat per site)")]
MinRowsOpt = Annotated[int, typer.Option(
    min=0, help="every site's privacy.min_rows: smaller cells never leave a site")]
OutOpt = Annotated[Path, typer.Option(help="folder for run folders")]
GroupOpt = Annotated[str | None, typer.Option(help="a numeric column to group by")]


def _run(make: Any, kwargs: dict[str, Any], data_dir: list[str], min_rows: int, out: Path,
         ) -> None:
    from fedcare.cli.main import _run_dir, _site_folders
    from fedcare.core.privacy_policy import PrivacyPolicy
    from fedcare.sim.simulator import simulate

    try:
        folders = _site_folders(data_dir)
        if folders and "sites" not in kwargs:
            kwargs["sites"] = sorted(folders)
        job: Job = make(**kwargs)
        run_dir = _run_dir(out, job.name)
        result = simulate(job, run_dir=run_dir, data_dirs=folders or None,
                          site_privacy=PrivacyPolicy(min_rows=min_rows) if min_rows else None)
    except (FedcareError, ValueError) as exc:
        raise fail(exc) from None
    written = write_results(console, result.results, run_dir)
    console.print("written: " + ", ".join(str(p) for p in written), markup=False,
                  highlight=False)


@stats_app.command("cohort")
def stats_cohort(
    column: Annotated[list[str], typer.Option(help="a column to describe (repeat)")],
    dataset: DatasetOpt = "heart",
    group: GroupOpt = None,
    bins: Annotated[int, typer.Option(help="histogram bins (quantiles are within one)")] = 20,
    data_dir: DataDirOpt = [],  # noqa: B006
    min_rows: MinRowsOpt = 0,
    out: OutOpt = Path("runs"),
) -> None:
    """Per-site and overall counts, missing values, mean, sd, quartiles and histograms."""
    from fedcare.jobs.clinical import cohort_job

    _run(cohort_job, {"dataset": dataset, "columns": column, "group": group, "bins": bins},
         data_dir, min_rows, out)


@stats_app.command("km")
def stats_km(
    time: Annotated[str, typer.Option(help="the follow-up time column")],
    event: Annotated[str, typer.Option(help="the event column (1 = event observed)")],
    dataset: DatasetOpt = "tcga_brca",
    group: GroupOpt = None,
    data_dir: DataDirOpt = [],  # noqa: B006
    min_rows: MinRowsOpt = 0,
    out: OutOpt = Path("runs"),
) -> None:
    """Kaplan-Meier curves (by group) and the log-rank test, equal to the pooled ones."""
    from fedcare.jobs.clinical import kaplan_meier_job

    _run(kaplan_meier_job, {"dataset": dataset, "event": event, "time": time,
                            "group": group}, data_dir, min_rows, out)


@stats_app.command("fit")
def stats_fit(
    model: Annotated[str, typer.Option(help="logistic or cox")],
    outcome: Annotated[str, typer.Option(help="the 0/1 label, or the event column (cox)")],
    covariate: Annotated[list[str], typer.Option(help="a covariate (repeat)")],
    dataset: DatasetOpt = "heart",
    time: Annotated[str | None, typer.Option(help="cox: the follow-up time column")] = None,
    stratified: Annotated[bool, typer.Option(
        help="cox: a baseline hazard per site (only per-site sums leave a site)")] = False,
    impute: Annotated[bool, typer.Option(
        help="replace missing covariates by the federation's means")] = False,
    missing_indicators: Annotated[bool, typer.Option(
        help="with --impute: a 0/1 column per covariate missing somewhere")] = False,
    standardise: Annotated[bool, typer.Option(
        help="covariates by the federation's mean and sd (coefficients per sd)")] = False,
    data_dir: DataDirOpt = [],  # noqa: B006
    min_rows: MinRowsOpt = 0,
    out: OutOpt = Path("runs"),
) -> None:
    """Logistic or Cox regression by federated Newton-Raphson: the pooled fit exactly."""
    from fedcare.jobs.clinical import regression_job

    _run(regression_job, {"dataset": dataset, "model": model, "outcome": outcome,
                          "covariates": covariate, "time": time, "stratified": stratified,
                          "impute": impute, "missing_indicators": missing_indicators,
                          "standardise": standardise}, data_dir, min_rows, out)


def admin_stats(ctx: typer.Context, job_id: str, out: Annotated[Path, typer.Option(
        help="folder for the files (created if missing)")] = Path("."),
        server: Annotated[str | None, typer.Option(
            help="override host:port of the server")] = None) -> None:
    """Download a clinical job's result (cohort, Kaplan-Meier or regression) and write its
    table, CSV, JSON and plots into --out (project admins)."""
    import grpc

    from fedcare.cli.federation import _stub
    from fedcare.server.admin import JOB_ID
    from fedcare.transport.grpc import fedcare_pb2 as pb

    if not JOB_ID.fullmatch(job_id):
        raise fail(ConfigError(f"{job_id[:80]!r} is not a job id"))
    try:
        stub = _stub(ctx.obj, server)
    except FedcareError as exc:
        raise fail(exc) from None
    results: dict[str, Any] = {}
    for name in RESULTS:
        try:
            reply = stub.Result(pb.ResultRef(job_id=job_id, name=name), timeout=30)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                continue
            raise fail(f"job {job_id}: result {name}: {exc.details()}") from None
        results[name] = json.loads(reply.json)
    if not results:
        raise fail(f"job {job_id} has no clinical result (yet): {', '.join(RESULTS)}")
    written = write_results(console, results, out / job_id)
    console.print("written: " + ", ".join(str(p) for p in written), markup=False,
                  highlight=False)
