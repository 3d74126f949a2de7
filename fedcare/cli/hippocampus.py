"""``fedcare demo hippocampus``: federated 3D segmentation on real MRI, next to its baselines.

By default a real federation on this machine (server and three hospital site processes over
mutual TLS, as ``fedcare demo heart``); ``--simulate`` runs the same job in the simulator.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcare.cli.demo import local_federation
from fedcare.cli.plot import learning_curve
from fedcare.cli.poc import PocFederation
from fedcare.cli.progress import RichProgress
from fedcare.core.errors import FedcareError
from fedcare.core.message import Reply, TrainResult
from fedcare.core.tracking import TrackingConfig
from fedcare.core.weights import Weights
from fedcare.datasets.hippocampus import SITES
from fedcare.jobs import hippocampus_demo as demo
from fedcare.server.history import History, RoundRecord, record_from_dict
from fedcare.sim.simulator import simulate
from fedcare.transport.codec import decode
from fedcare.transport.grpc import fedcare_pb2 as pb


def dice_line(round_num: int, metrics: dict[str, float]) -> str:
    what = "initial model" if round_num == 0 else f"round {round_num:>2}"
    return (f"{what}: mean Dice anterior {metrics.get('dice_anterior', float('nan')):.3f}  "
            f"posterior {metrics.get('dice_posterior', float('nan')):.3f}  "
            f"(mean {metrics.get('dice_mean', float('nan')):.3f})")


class DiceProgress(RichProgress):
    """The simulator's progress bars, plus one line of mean Dice per round."""

    def on_round_end(self, record: RoundRecord) -> None:
        super().on_round_end(record)
        self.progress.console.print(dice_line(record.round_num, dict(record.eval_metrics)))


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM), in MiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _federated(console: Console, fed: PocFederation, params: dict[str, object]
               ) -> tuple[History, Weights]:
    """Submit the job as the admin, follow it round by round, fetch history and model."""
    admin = fed.admin()
    job_id = admin.Submit(pb.SubmitRequest(entry_point=demo.ENTRY_POINT,
                                           params_json=json.dumps(params)), timeout=60).job_id
    printed = -1
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task(f"{job_id} rounds", total=None, info="")
        for update in admin.Watch(pb.JobRef(job_id=job_id), timeout=3600):
            state = json.loads(update.json)
            metrics = state["eval_metrics"]
            if metrics and state["round_num"] > printed:
                printed = state["round_num"]
                progress.console.print(dice_line(printed, metrics))
            progress.update(bar, total=state["num_rounds"], completed=state["round_num"],
                            info=f"dice_mean={metrics.get('dice_mean', float('nan')):.3f}")
    if state["status"] != "finished":
        raise FedcareError(f"job {job_id} {state['status']}: {state['error']}")
    history = History()
    for record in json.loads(admin.Metrics(pb.JobRef(job_id=job_id), timeout=60).json):
        history.append(record_from_dict(record))
    data = b"".join(c.data for c in admin.Download(pb.JobRef(job_id=job_id), timeout=600))
    downloaded = decode(data)
    assert isinstance(downloaded, Reply) and isinstance(downloaded.result, TrainResult)
    return history, downloaded.result.weights


def run_hippocampus_demo(console: Console, run_dir: Path, *, federated: bool = True,
                         processes: bool = False, params: dict[str, object] | None = None,
                         tracking: TrackingConfig | None = None) -> demo.Table:
    """Run FedAvg, then the local and pooled baselines; print and write the comparison.
    ``tracking``: TensorBoard/MLflow, as for the heart demo (in the server's kit, or the
    simulator's)."""
    console.print("[bold]fedcare demo:[/] hippocampus segmentation on real 3D MRI (Medical "
                  "Segmentation Decathlon Task04, 30 cases, CC BY-SA 4.0), 3 hospitals "
                  "(a simulated split of single-centre data), MONAI UNet, FedAvg.")
    params = dict(params or {})
    job = demo.job_of(params)
    started = time.monotonic()
    facts: dict[str, object] = {"params": params, "budget": vars(demo.Budget.of(job))}
    if federated:
        fed = local_federation(console, run_dir, list(SITES), tracking)
        try:
            history, weights = _federated(console, fed, params)
            assert fed.server is not None
            memory = {"server": peak_rss_mib(fed.server.pid),
                      **{s: peak_rss_mib(p.pid) for s, p in fed.sites.items()}}
        finally:
            fed.stop()
        facts["peak_rss_mib"] = memory
        console.print("peak resident memory (MiB): " + ", ".join(
            f"{k} {v:.0f}" for k, v in memory.items() if v is not None))
    else:
        with DiceProgress(console, "simulated") as listener:
            result = simulate(job, processes=processes, run_dir=run_dir / "simulation",
                              listener=listener, tracking=tracking,
                              run_name=f"{run_dir.name}-simulated")
        history, weights = result.history, result.weights
    facts["federation_s"] = round(time.monotonic() - started, 1)
    history.write(run_dir)
    learning_curve(history, run_dir / "learning_curve.png", metric="dice_mean",
                   title="Hippocampus, FedAvg: mean Dice on the sites' test volumes")
    np.savez(run_dir / "global_model.npz", **dict(weights))
    figure = demo.slice_figure(job, weights, run_dir / "slices.png")
    baseline_start = time.monotonic()
    with console.status("baselines: each hospital alone, then all training volumes pooled "
                        f"({demo.Budget.of(job).epochs} epochs each)"):
        local, pooled = demo.local_and_pooled(params)
    facts["baselines_s"] = round(time.monotonic() - baseline_start, 1)
    facts["total_s"] = round(time.monotonic() - started, 1)
    table = demo.table_of(local, demo.fedavg_scores(history), pooled)
    demo.write_summary(run_dir, table, facts)
    print_table(console, table)
    console.print(f"wall time {facts['total_s']} s (federation {facts['federation_s']} s, "
                  f"baselines {facts['baselines_s']} s); slices: {figure}")
    console.print(f"run folder: [bold]{run_dir}[/] (summary.csv, summary.json, metrics.csv, "
                  "metrics.json, learning_curve.png, slices.png, global_model.npz)")
    return table


def print_table(console: Console, table: demo.Table) -> None:
    out = Table(title="Dice on each hospital's 3 test volumes: mean (anterior / posterior)")
    out.add_column("test set")
    for title in ("local only", "FedAvg", "pooled"):
        out.add_column(title, justify="right")
    for site in (*SITES, "mean"):
        cells = [f"{table[c][site]['dice_mean']:.3f} ({table[c][site]['dice_anterior']:.3f} / "
                 f"{table[c][site]['dice_posterior']:.3f})" for c in demo.COLUMNS]
        out.add_row(f"[bold]{site}" if site == "mean" else site, *cells)
    console.print(out)
    gap = table["fedavg"]["mean"]["dice_mean"] - table["pooled"]["mean"]["dice_mean"]
    console.print(f"FedAvg mean Dice {table['fedavg']['mean']['dice_mean']:.3f} vs pooled "
                  f"{table['pooled']['mean']['dice_mean']:.3f} (difference {gap:+.3f}); "
                  f"local only {table['local']['mean']['dice_mean']:.3f}. Full-size "
                  f"supervised 3D models on the whole task reach {demo.FULL_SIZE_REFERENCE}.")
