"""Rendering of the heart demo: progress, the comparison table, and the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcare.cli.plot import learning_curve
from fedcare.cli.poc import PocFederation
from fedcare.cli.progress import RichProgress
from fedcare.core.errors import FedcareError
from fedcare.core.message import Reply, TrainResult
from fedcare.core.tracking import TrackingConfig
from fedcare.datasets.heart import HOSPITALS
from fedcare.jobs.heart_demo import (
    ENTRY_POINT,
    FLAMBY_REFERENCE,
    SeedResult,
    run_seed,
    seed_result,
    summarise,
    write_summary,
)
from fedcare.server.history import History, record_from_dict
from fedcare.transport.codec import decode
from fedcare.transport.grpc import fedcare_pb2 as pb

HOSPITAL_NAMES = {
    "cleveland": "Cleveland",
    "hungary": "Budapest",
    "switzerland": "Zurich+Basel",
    "va": "VA Long Beach",
}


def _run_seed_federated(console: Console, fed: PocFederation, seed: int,
                        params: dict[str, object], seed_dir: Path) -> tuple[SeedResult, History]:
    """Submit the heart job to the real federation as an admin and follow it to the end."""
    admin = fed.admin()
    job_id = admin.Submit(pb.SubmitRequest(entry_point=ENTRY_POINT, params_json=json.dumps(
        {**params, "seed": seed})), timeout=60).job_id
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task(f"seed {seed} {job_id} rounds", total=None, info="")
        for update in admin.Watch(pb.JobRef(job_id=job_id), timeout=3600):
            state = json.loads(update.json)
            info = " ".join(f"{k}={v:.3f}" for k, v in state["eval_metrics"].items())
            progress.update(bar, total=state["num_rounds"], completed=state["round_num"],
                            info=info)
    if state["status"] != "finished":
        raise FedcareError(f"job {job_id} {state['status']}: {state['error']}")
    history = History()
    for record in json.loads(admin.Metrics(pb.JobRef(job_id=job_id), timeout=60).json):
        history.append(record_from_dict(record))
    history.write(seed_dir)
    data = b"".join(c.data for c in admin.Download(pb.JobRef(job_id=job_id), timeout=600))
    downloaded = decode(data)
    assert isinstance(downloaded, Reply) and isinstance(downloaded.result, TrainResult)
    np.savez(seed_dir / "global_model.npz", **dict(downloaded.result.weights))
    return seed_result(seed, params, history, seed_dir), history


def run_heart_demo(console: Console, run_dir: Path, *, seeds: int, processes: bool,
                   params: dict[str, object] | None = None, federated: bool = True,
                   tracking: TrackingConfig | None = None) -> None:
    """``tracking``: in the federation, written into the server's kit (its runs are named
    by job id); simulated, each seed's run is ``RUN_FOLDER-seed-N``."""
    console.print("[bold]fedcare demo:[/] Fed-Heart-Disease, 4 hospitals, 740 patients "
                  "(UCI, CC BY 4.0). Feature scaling is computed federatedly; no row leaves "
                  "a site.")
    params = params or {}
    fed = local_federation(console, run_dir, list(HOSPITALS), tracking) if federated else None
    results = []
    try:
        for seed in range(seeds):
            seed_dir = run_dir / f"seed-{seed}"
            if fed is not None:
                result, history = _run_seed_federated(console, fed, seed, params, seed_dir)
            else:
                with RichProgress(console, f"seed {seed} (simulated)") as progress:
                    result, run = run_seed(seed, run_dir=seed_dir, processes=processes,
                                           listener=progress, params=params, tracking=tracking,
                                           run_name=f"{run_dir.name}-seed-{seed}")
                history = run.history
            learning_curve(history, seed_dir / "learning_curve.png",
                           title=f"Fed-Heart-Disease FedAvg, seed {seed}")
            results.append(result)
    finally:
        if fed is not None:
            fed.stop()
    table = summarise(results)
    write_summary(run_dir, results, table)
    if seeds == 1:
        (run_dir / "learning_curve.png").write_bytes(
            (run_dir / "seed-0" / "learning_curve.png").read_bytes())
    _print_table(console, table, seeds)
    console.print(f"run folder: [bold]{run_dir}[/] (summary.csv, summary.json, seed-*/: "
                  "metrics.csv, metrics.json, learning_curve.png, global model)")
    if tracking is not None and tracking.tensorboard is not None:
        console.print(f"TensorBoard: tensorboard --logdir {tracking.tensorboard}",
                      markup=False, highlight=False)


def local_federation(console: Console, run_dir: Path, sites: list[str],
                     tracking: TrackingConfig | None) -> PocFederation:
    """A real federation on this machine for a demo: a server and one process per site, mutual
    TLS, kits and logs under ``run_dir/federation``; ``tracking`` goes into the server's kit."""
    fed = PocFederation(run_dir / "federation", sites)
    fed.provision()
    if tracking is not None:
        fed.edit_kit("server", lambda config: config.update(tracking=tracking_section(tracking)))
    address = fed.start_server()
    fed.start_sites()
    fed.wait_for_sites(len(sites))
    console.print(f"real federation on this machine: server {address} and {len(sites)} "
                  f"hospital site processes, mutual TLS (kits in {fed.workdir / 'kits'}, logs "
                  f"in {fed.log_dir})")
    return fed


def tracking_section(tracking: TrackingConfig) -> dict[str, object]:
    """The tracking section for the POC server's kit: a TensorBoard folder given here, made
    absolute (the kit would take a relative one from its own folder)."""
    section = tracking.model_dump(exclude_none=True)
    if tracking.tensorboard is not None:
        section["tensorboard"] = str(Path(tracking.tensorboard).resolve())
    return section


def _print_table(console: Console, table: dict[str, dict[str, float]], seeds: int) -> None:
    out = Table(title=f"Test accuracy per hospital (mean over {seeds} seed(s))")
    out.add_column("test set")
    out.add_column("(a) local", justify="right")
    out.add_column("(b) pooled", justify="right")
    out.add_column("(c) FedAvg", justify="right")
    out.add_column("local, all tests", justify="right")
    for h in HOSPITALS:
        out.add_row(HOSPITAL_NAMES[h], *(f"{table[c][h]:.3f}" for c in
                                         ("local", "pooled", "fedavg", "local_all_tests")))
    out.add_row("[bold]mean", *(f"[bold]{table[c]['mean']:.3f}" for c in
                                ("local", "pooled", "fedavg", "local_all_tests")))
    sums = table["from_sums"]
    out.add_row("[bold]all test rows", *(f"[bold]{sums[f'{c}_accuracy']:.3f}" for c in
                                         ("local", "pooled", "fedavg")), "")
    console.print(out)
    console.print("ROC AUC, mean per hospital | all test rows (from sums): " + ", ".join(
        f"{name} {table[f'auc_{c}']['mean']:.3f} | {sums[f'{c}_auc']:.3f}"
        for name, c in (("(a)", "local"), ("(b)", "pooled"), ("(c)", "fedavg"))))
    console.print("'mean' is the unweighted mean over hospitals (what FLamby reports); 'all "
                  "test rows' is the metric of the four test sets together, from the counts "
                  "and score histograms each hospital's evaluation sends (for (a), each "
                  "hospital's own model).")
    console.print(f"FLamby (NeurIPS 2022) mean per-centre accuracy: pooled "
                  f"{FLAMBY_REFERENCE['pooled']}, FedAvg {FLAMBY_REFERENCE['fedavg']}, "
                  f"FedAdagrad {FLAMBY_REFERENCE['fedadagrad']}.")
    console.print("(a) each hospital trains alone; (b) all training rows pooled (upper "
                  "baseline); (c) fedcare; last column: each local model's mean accuracy on "
                  "all four test sets, as FLamby reports local training.")
    gap = table["fedavg"]["mean"] - table["pooled"]["mean"]
    console.print(f"fedcare FedAvg mean {table['fedavg']['mean']:.3f} vs pooled "
                  f"{table['pooled']['mean']:.3f} (difference {gap:+.3f}).")
