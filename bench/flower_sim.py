"""Flower's simulator on the simulator-scale bench job, for a comparison with bench/simscale.py.

    python3 -m venv /tmp/flwr-venv
    /tmp/flwr-venv/bin/pip install "flwr[simulation]==1.42.0"      # numpy, Ray 2.55; no torch
    /tmp/flwr-venv/bin/python bench/flower_sim.py --sites 10 100 [--rounds 5] [--params 10000]

Runs in its own virtual environment, NOT fedcare's: flwr[simulation] does not install against
fedcare's pinned constraints, so this script does not import fedcare (nor bench/benchjob.py,
which does); the model and the local step are copied from bench/benchjob.py and the PSS
sampling from bench/simscale.py, minimally.

The same job as bench/simscale.py: a float32 model of --params parameters in 8 tensors
(benchjob.model, seed 0), local training one add of 0.001 per parameter, the site's sample
count 100 + its index, FedAvg weighted by that count with every site every round, no
evaluation (fraction_evaluate=0). Flower side: Flower's own simulation runtime
(flwr.simulation.run_simulation, the Ray backend, a ServerApp using the Message-API
flwr.serverapp.strategy.FedAvg and a ClientApp), Ray initialised by Flower with all CPUs and a
512 MiB object store (as simscale does), --client-cpus CPUs per ClientApp actor (default 1:
two actors on two cores, as fedcare's Ray backend has; Flower's own default is 2 CPUs, one
actor here).

Measured, each case in a fresh Python process: the round time (from the strategy's
configure_train to the end of its aggregate_train; median of rounds 2..R, all listed), the
set-up (from calling run_simulation to round 1's start; Flower starts Ray itself), and the
peak memory of the whole process tree (driver, Ray's processes and actors), as the summed PSS
sampled every 0.2 s. Flower's ServerApp starts at once and its first
round waits for Ray and the actor pool to start, so set-up is near zero and round 1 carries
Ray's start: "to end of round 1" (from calling run_simulation) is the figure to set against
simscale's Ray start + set-up + round 1. Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

NUM_TENSORS = 8
STEP = 0.001


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_pss_kib(root: int) -> int:
    """The summed PSS of ``root`` and all its descendants, KiB (as bench/simscale.py)."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


class PeakMemory:
    """Samples the process tree's PSS in a thread; ``stop`` returns the peak, MiB."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak_kib = max(self.peak_kib, tree_pss_kib(os.getpid()))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, tree_pss_kib(os.getpid()))
        return self.peak_kib / 1024


def model(num_params: int, seed: int = 0) -> list:
    """bench/benchjob.py's model: ``num_params`` float32 parameters in NUM_TENSORS tensors."""
    import numpy as np

    rng = np.random.default_rng(seed)
    size = num_params // NUM_TENSORS
    sizes = [size] * (NUM_TENSORS - 1) + [num_params - size * (NUM_TENSORS - 1)]
    return [rng.standard_normal(n, dtype=np.float32) for n in sizes]


def run_case(num_sites: int, num_params: int, rounds: int, client_cpus: float) -> dict:
    """One case, in this process: returns its metrics."""
    import flwr
    import numpy as np
    import ray
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    trained: dict[int, int] = {}
    final: list = []

    class TimedFedAvg(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
            starts[server_round] = time.perf_counter()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            replies = list(replies)
            out = super().aggregate_train(server_round, replies)
            ends[server_round] = time.perf_counter()
            trained[server_round] = sum(1 for r in replies if not r.has_error())
            return out

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        updated = [a + np.float32(STEP) for a in arrays]
        samples = 100 + int(context.node_config["partition-id"])
        return Message(RecordDict({"arrays": ArrayRecord(updated),
                                   "metrics": MetricRecord({"num-examples": samples})}),
                       reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0,
                               min_train_nodes=num_sites, min_available_nodes=num_sites)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model(num_params)),
                                num_rounds=rounds)
        final.append(result.arrays.to_numpy_ndarrays())

    backend_config = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count(), "object_store_memory": 512 * 2**20,
                      "logging_level": "WARNING", "include_dashboard": False},
    }
    memory = PeakMemory()
    started = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_sites,
                   backend_name="ray", backend_config=backend_config)  # type: ignore[arg-type]
    total_s = time.perf_counter() - started
    if ray.is_initialized():
        ray.shutdown()
    peak_mib = memory.stop()
    if len(ends) != rounds or not final:
        raise RuntimeError(f"only {len(ends)} of {rounds} rounds finished")
    # Check the job: after R rounds every parameter moved by R * STEP.
    drift = max(float(np.max(np.abs(f - i - rounds * STEP)))
                for f, i in zip(final[0], model(num_params), strict=True))
    times = [ends[r] - starts[r] for r in sorted(ends)]
    return {"framework": "flower", "flwr": flwr.__version__, "ray": ray.__version__,
            "sites": num_sites, "sites_per_round": trained[rounds],
            "round_s_median": statistics.median(times[1:] or times),
            "round_s": [round(t, 4) for t in times],
            "setup_s": starts[1] - started, "to_round1_end_s": ends[1] - started,
            "total_s": total_s,
            "peak_pss_mib": peak_mib, "client_cpus": client_cpus,
            "max_abs_error": drift}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--params", type=int, default=10_000, help="model parameters")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--client-cpus", type=float, default=1.0,
                        help="CPUs per ClientApp actor (Flower's default: 2)")
    parser.add_argument("--timeout-s", type=float, default=1200, help="per case")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child's one case
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network here
    if args.one:
        print(json.dumps(run_case(args.one, args.params, args.rounds, args.client_cpus)))
        return
    results = []
    for sites in args.sites:
        command = [sys.executable, __file__, "--one", str(sites), "--params", str(args.params),
                   "--rounds", str(args.rounds), "--client-cpus", str(args.client_cpus)]
        print(f"running flower:{sites} ...", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            results.append({"case": f"flower:{sites}", "error": f"over {args.timeout_s:g} s"})
            continue
        if done.returncode != 0:
            results.append({"case": f"flower:{sites}",
                            "error": done.stderr.strip().splitlines()[-3:]})
            continue
        results.append({"case": f"flower:{sites}",
                        **json.loads(done.stdout.strip().splitlines()[-1])})
    document = {"name": "flower_sim", "date": time.strftime("%Y-%m-%d"),
                "params": {"num_params": args.params, "rounds": args.rounds,
                           "cpus": os.cpu_count(), "model_bytes": 4 * args.params,
                           "client_cpus": args.client_cpus},
                "units": {"round_s_median": "s", "setup_s": "s", "to_round1_end_s": "s",
                          "peak_pss_mib": "MiB"},
                "results": results}
    print(json.dumps(document, indent=1))
    print(f"\n{'case':<14} {'sites/round':>11} {'round s':>9} {'set-up s':>9} "
          f"{'to end of round 1 s':>19} {'peak MiB':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:<14} error: {r['error']}")
            continue
        print(f"{r['case']:<14} {r['sites_per_round']:>11} {r['round_s_median']:>9.3f} "
              f"{r['setup_s']:>9.2f} {r['to_round1_end_s']:>19.2f} {r['peak_pss_mib']:>9.0f}")


if __name__ == "__main__":
    main()
