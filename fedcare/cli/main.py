"""The ``fedcare`` command. Wiring only: every error becomes one clear line and an exit code."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.table import Table

from fedcare.cli.output import console, fail
from fedcare.core import logs
from fedcare.core.config import load_job
from fedcare.core.cross_site import RESULT
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.core.policy import SitePolicy
from fedcare.core.tracking import TrackingConfig
from fedcare.sim.simulator import BACKENDS, RAY_MISSING, Backend, simulate
from fedcare.transport.resources import SiteResources

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="fedcare: federated learning for healthcare.")


def _run_dir(base: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = base / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = base / f"{name}-{stamp}-{suffix}"
    return path


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects key=value, got {pair!r}")
        params[key] = yaml.safe_load(value)
    return params



def _site_folders(pairs: list[str]) -> dict[str, Path]:
    folders = {}
    for pair in pairs:
        site, sep, folder = pair.partition("=")
        if not sep or not site or not folder:
            raise ConfigError(f"--data-dir {pair!r}: expected SITE=FOLDER")
        folders[site] = Path(folder)
    return folders


#: The tracking options of ``simulate`` and ``demo``, by TrackingConfig field.
_TRACKING_OPTIONS = {"tensorboard": "--tensorboard", "mlflow_uri": "--mlflow-uri",
                     "mlflow_experiment": "--mlflow-experiment"}

TensorBoardOption = Annotated[Path | None, typer.Option(
    help="write each round's metrics as TensorBoard event files into DIR/RUN (server and "
         "one run per site); view with: tensorboard --logdir DIR", metavar="DIR")]
MlflowUriOption = Annotated[str | None, typer.Option(
    help="also log them to this MLflow tracking server (http://HOST:PORT), one run per job "
         "with a nested run per site", metavar="URI")]
MlflowExperimentOption = Annotated[str | None, typer.Option(
    help="the MLflow experiment (default: fedcare)", metavar="NAME")]


def _tracking(tensorboard: Path | None, mlflow_uri: str | None,
              mlflow_experiment: str | None) -> TrackingConfig | None:
    """The tracking options as a TrackingConfig; a bad value fails naming its option."""
    try:
        config = TrackingConfig(tensorboard=str(tensorboard) if tensorboard else None,
                                mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment)
    except ValidationError as exc:
        from fedcare.provision.project import format_errors

        message = format_errors(exc)
        for field, option in _TRACKING_OPTIONS.items():
            message = message.replace(f"{field}: ", f"{option}: ")
        raise ConfigError(message) from None
    return config if config.enabled else None


def _read_site_policy(path: Path) -> SitePolicy | dict[str, SitePolicy]:
    """One policy for every site, or ``sites: {SITE: policy}``; errors name file and field."""
    from fedcare.provision.project import read_yaml_model

    class PerSite(BaseModel):
        model_config = ConfigDict(extra="forbid")
        sites: dict[str, SitePolicy]

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None  # read_yaml_model says what is wrong with the file
    from fedcare.site.chain import build_filters

    policies: SitePolicy | dict[str, SitePolicy]
    if isinstance(raw, dict) and "sites" in raw:
        policies = read_yaml_model(path, PerSite, "site policy").sites
    else:
        policies = read_yaml_model(path, SitePolicy, "site policy")
    named = policies.items() if isinstance(policies, dict) else [("", policies)]
    for site, policy in named:
        try:
            build_filters(policy)  # unknown filters and bad parameters fail here, named
        except ConfigError as exc:
            where = f" (site {site})" if site else ""
            raise ConfigError(f"{path}{where}: {exc.message}") from None
    return policies


def _simulation_backend(name: str | None) -> Backend | None:
    """``--backend``, checked; Ray's absence is said before any job is loaded."""
    if name is None:
        return None
    for backend in BACKENDS:
        if name == backend:
            if backend == "ray" and importlib.util.find_spec("ray") is None:
                raise ConfigError(RAY_MISSING)
            return backend
    raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}")


@app.command("simulate")
def simulate_cmd(
    job: Annotated[str, typer.Argument(help="job file (.yaml/.toml/.json) or module:function")],
    sites: Annotated[int | None, typer.Option(help="number of simulated sites")] = None,
    processes: Annotated[bool, typer.Option(help="one OS process per site "
                                                 "(same as --backend processes)")] = False,
    backend: Annotated[str | None, typer.Option(
        help="threads (default), processes, or ray (sites on a pool of Ray actors; "
             "pip install 'fedcare[ray]')")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="with --backend ray: the Ray cluster to use (default: a local Ray for the run)")
    ] = None,
    site_cpus: Annotated[float | None, typer.Option(
        help="with --backend ray: CPUs per site (default 1)")] = None,
    site_gpus: Annotated[float | None, typer.Option(
        help="with --backend ray: GPUs per site, e.g. 0.25 for four sites per GPU")] = None,
    rounds: Annotated[int | None, typer.Option(help="override the job's number of rounds")] = None,
    seed: Annotated[int | None, typer.Option(help="passed to the job as params.seed")] = None,
    param: Annotated[list[str], typer.Option(help="job parameter key=value")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="folder for run folders")] = Path("runs"),
    data_dir: Annotated[list[str], typer.Option(
        help="a site's own data folder, SITE=FOLDER (repeat per site)")] = [],  # noqa: B006
    site_policy: Annotated[Path | None, typer.Option(
        help="YAML file with the sites' filter policy: {inbound: [...], outbound: [...]} "
             "for every site, or {sites: {SITE: {outbound: [...]}}} per site")] = None,
    tensorboard: TensorBoardOption = None,
    mlflow_uri: MlflowUriOption = None,
    mlflow_experiment: MlflowExperimentOption = None,
) -> None:
    """Run a job with every site simulated on this machine."""
    from fedcare.cli.plot import learning_curve
    from fedcare.cli.progress import RichProgress

    try:
        folders = _site_folders(data_dir)
        tracking = _tracking(tensorboard, mlflow_uri, mlflow_experiment)
        policy = _read_site_policy(site_policy) if site_policy is not None else None
        params = _parse_params(param)
        if seed is not None:
            params["seed"] = seed
        resources = None
        if site_cpus is not None or site_gpus is not None:
            resources = SiteResources(num_cpus=1.0 if site_cpus is None else site_cpus,
                                      num_gpus=site_gpus or 0.0)
        kind = _simulation_backend(backend)
        loaded = load_job(job, params)
        if rounds is not None:
            loaded = dataclasses.replace(loaded, num_rounds=rounds)
        run_dir = _run_dir(out, loaded.name)
        with RichProgress(console, loaded.name) as progress:
            result = simulate(loaded, num_sites=sites, processes=processes, backend=kind,
                              ray_address=ray_address, site_resources=resources,
                              run_dir=run_dir, listener=progress, site_policy=policy,
                              data_dirs=folders, tracking=tracking)
    except FedcareError as exc:
        raise fail(exc) from None
    console.print(result.summary, markup=False, highlight=False)
    for name in result.results:
        console.print(f"{name}: {run_dir / (name + '.json')}", markup=False, highlight=False)
    if RESULT in result.results:
        _cross_site_files(result.results[RESULT], run_dir)
    if not result.history.rounds[-1].site_eval:  # nothing evaluated (e.g. statistics alone)
        console.print(f"run folder: {run_dir}", markup=False, highlight=False)
        return
    learning_curve(result.history, run_dir / "learning_curve.png", title=loaded.name)
    last = result.history.rounds[-1]
    table = Table(title=f"{loaded.name}: federated evaluation after round {last.round_num}")
    metrics = sorted({k for ev in last.site_eval.values() for k in ev.metrics})
    table.add_column("site")
    table.add_column("test samples", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    for site_id, ev in last.site_eval.items():
        table.add_row(site_id, str(ev.num_samples),
                      *[f"{ev.metrics.get(m, float('nan')):.4f}" for m in metrics])
    table.add_row("[bold]all (weighted)", str(sum(e.num_samples for e in last.site_eval.values())),
                  *[f"{last.eval_metrics.get(m, float('nan')):.4f}" for m in metrics])
    console.print(table)
    console.print(f"run folder: [bold]{run_dir}[/]")
    if tracking is not None and tracking.tensorboard is not None:
        console.print(f"TensorBoard: tensorboard --logdir {tracking.tensorboard}",
                      markup=False, highlight=False)


def _cross_site_files(document: dict[str, object], run_dir: Path) -> None:
    """Print the run's cross-site matrix and write its CSV, JSON and PNG into the run folder."""
    from fedcare.cli.cross_site import choose_metric, print_matrix, write_matrix
    from fedcare.core.cross_site import CrossSiteMatrix

    matrix = CrossSiteMatrix.from_dict(document)
    metric = choose_metric(matrix, None)
    print_matrix(console, matrix, metric)
    written = write_matrix(matrix, run_dir, metric)
    console.print("cross-site validation: " + ", ".join(map(str, written)), markup=False,
                  highlight=False)


@app.command("demo")
def demo_cmd(
    name: Annotated[str, typer.Argument(help="which demo: heart or hippocampus")] = "heart",
    seeds: Annotated[int, typer.Option(help="heart: number of seeds (0..N-1)")] = 1,
    simulate: Annotated[bool, typer.Option(
        "--simulate", help="run in the simulator instead of a real local federation")] = False,
    processes: Annotated[bool, typer.Option(help="with --simulate: one process per site")] = False,
    param: Annotated[list[str], typer.Option(help="job parameter key=value")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="folder for run folders")] = Path("runs"),
    tensorboard: TensorBoardOption = None,
    mlflow_uri: MlflowUriOption = None,
    mlflow_experiment: MlflowExperimentOption = None,
) -> None:
    """heart: FedAvg across four real hospitals vs local and pooled training. hippocampus:
    federated 3D segmentation of real MRI (MONAI UNet) vs local and pooled training."""
    if name not in ("heart", "hippocampus"):
        raise fail(ConfigError(f"unknown demo {name!r}; available: heart, hippocampus"))
    if seeds < 1:
        raise fail(ConfigError(f"--seeds must be >= 1, got {seeds}"))
    try:
        params = _parse_params(param)
        tracking = _tracking(tensorboard, mlflow_uri, mlflow_experiment)
        if name == "hippocampus":
            from fedcare.cli.hippocampus import run_hippocampus_demo

            run_hippocampus_demo(console, _run_dir(out, "hippocampus-demo"),
                                 federated=not simulate, processes=processes, params=params,
                                 tracking=tracking)
            return
        from fedcare.cli.demo import run_heart_demo

        run_heart_demo(console, _run_dir(out, "heart-demo"), seeds=seeds, processes=processes,
                       params=params, federated=not simulate, tracking=tracking)
    except FedcareError as exc:
        raise fail(exc) from None


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks on real medical data.")


@bench_app.command("flamby")
def bench_flamby(
    dataset: Annotated[str, typer.Option(help="heart or tcga")] = "heart",
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1")] = 5,
    algorithm: Annotated[list[str], typer.Option(help="only these (default: all)")] = [],  # noqa: B006
    param: Annotated[list[str], typer.Option(help="heart job parameter key=value")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="folder for run folders")] = Path("runs"),
) -> None:
    """FLamby's protocol (heart or tcga): local, pooled and every algorithm, N seeds."""
    from fedcare.jobs.flamby import BENCHMARKS, run_benchmark, write_results

    if dataset not in BENCHMARKS:
        raise fail(f"--dataset must be one of {sorted(BENCHMARKS)}, got {dataset!r}")
    try:
        rows = run_benchmark(seeds, _parse_params(param), algorithm or None, dataset)
    except FedcareError as exc:
        raise fail(exc) from None
    paths = write_results(rows, _run_dir(out, f"flamby-{dataset}"), seeds, dataset)
    console.print(paths["md"].read_text())
    console.print(f"written: {paths['csv']}, {paths['md']}, {paths['png']}")


@bench_app.command("medmnist")
def bench_medmnist(
    dataset: Annotated[list[str], typer.Option(
        help="breastmnist, pneumoniamnist, adrenalmnist3d or vesselmnist3d (default: all)")] = [],  # noqa: B006
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1")] = 1,
    sites: Annotated[int, typer.Option(help="simulated sites")] = 3,
    alpha: Annotated[float, typer.Option(help="Dirichlet label skew (small: strong)")] = 0.5,
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 10,
    local_epochs: Annotated[int, typer.Option(help="epochs per round at each site")] = 1,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="images per step")] = 32,
    width: Annotated[int, typer.Option(help="ResNet width (channels of its first stage)")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    out: Annotated[Path, typer.Option(help="folder for run folders")] = Path("runs"),
) -> None:
    """MedMNIST: FedAvg vs pooled vs local-only on the official test split, beside the paper."""
    import json

    from fedcare.jobs.medmnist_bench import DATASETS, Settings, run_benchmark, table

    unknown = sorted(set(dataset) - set(DATASETS))
    if unknown:
        raise fail(f"--dataset must be among {list(DATASETS)}, got {unknown}")
    if min(seeds, sites, rounds, local_epochs, width) < 1 or batch_size < 2 or not lr > 0:
        raise fail("--seeds, --sites, --rounds, --local-epochs and --width must be >= 1, "
                   "--batch-size >= 2 and --lr > 0")
    settings = Settings(sites=sites, alpha=alpha, rounds=rounds, local_epochs=local_epochs,
                        lr=lr, batch_size=batch_size, width=width, device=device)
    try:
        report = run_benchmark(dataset or list(DATASETS), seeds, settings)
    except (FedcareError, ValueError) as exc:
        raise fail(exc) from None
    run_dir = _run_dir(out, "medmnist")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (run_dir / "results.md").write_text(table(report) + "\n")
    console.print(table(report), markup=False, highlight=False)
    console.print(f"written: {run_dir / 'results.json'}, {run_dir / 'results.md'}",
                  markup=False, highlight=False)

def _register() -> None:
    from fedcare.cli.attack import privacy_app
    from fedcare.cli.audit import audit_app, site_uploads
    from fedcare.cli.cross_site import admin_cross_site
    from fedcare.cli.dashboard import dashboard_command
    from fedcare.cli.federation import admin_app, server_app, site_app
    from fedcare.cli.job import job_app
    from fedcare.cli.poc import poc_command
    from fedcare.cli.privacy import site_policy, site_privacy
    from fedcare.cli.provision import provision_app
    from fedcare.cli.stats import admin_stats, stats_app

    app.add_typer(provision_app, name="provision")
    app.add_typer(server_app, name="server")
    app.add_typer(site_app, name="site")
    app.add_typer(admin_app, name="admin")
    admin_app.command("cross-site")(admin_cross_site)
    admin_app.command("stats")(admin_stats)
    app.add_typer(stats_app, name="stats")
    app.add_typer(job_app, name="job")
    app.add_typer(audit_app, name="audit")
    site_app.command("uploads")(site_uploads)
    site_app.command("policy")(site_policy)
    site_app.command("privacy")(site_privacy)
    app.command("poc")(poc_command)
    app.command("dashboard")(dashboard_command)
    app.add_typer(bench_app, name="bench")
    app.add_typer(privacy_app, name="privacy")


_register()


def main() -> None:
    logs.configure(logging.WARNING)
    app()
