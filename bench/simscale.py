"""Simulator scale benchmark: 10, 100 and 1,000 simulated sites on this machine, per backend.

    .venv/bin/python bench/simscale.py                  # the full grid (several minutes)
    .venv/bin/python bench/simscale.py --quick          # 10 and 100 sites only
    .venv/bin/python bench/simscale.py --cases ray:1000 threads:1000:0.1

A case is BACKEND:SITES[:FRACTION] (FRACTION: the share of sites FedAvg samples each round,
default 1, every site every round). Each case runs in a fresh Python process (so one case's
memory does not count in another's) with the bench job (bench/benchjob.py: a float32 model of
--params parameters, one add per parameter as local training, no evaluation) for --rounds
rounds. Measured: the median round time (from the controller's round start to its end), the
set-up time (from calling simulate to round 1: certificates, starting the sites, the
prepare step), Ray's own start for the ray backend (apart), and the peak memory of the whole
process tree (this process, its site processes, Ray's processes and workers), as the sum of
proportional set sizes (PSS: shared pages, Ray's object store among them, counted once),
sampled every 0.2 s. Processes at 1,000 sites is not run by default: see --help of the table.
Prints JSON, then a table.
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

from transport import git_sha

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "bench"), *filter(None, [os.environ.get("PYTHONPATH")])])

CASES = ["threads:10", "processes:10", "ray:10",
         "threads:100", "processes:100", "ray:100",
         "threads:1000", "ray:1000", "threads:1000:0.1", "ray:1000:0.1"]
QUICK = [c for c in CASES if c.split(":")[1] in ("10", "100")]


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
    """The summed PSS of ``root`` and all its descendants, KiB."""
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
    """Samples the process tree's PSS in a thread; ``peak_mib`` is the largest seen."""

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


def run_case(backend: str, num_sites: int, fraction: float, num_params: int,
             rounds: int) -> dict[str, object]:
    """One case, in this process: returns its metrics."""
    import benchjob

    from fedcare import load_job, simulate
    from fedcare.server.events import RunListener

    class Rounds(RunListener):
        def __init__(self) -> None:
            self.starts: dict[int, float] = {}
            self.times: list[float] = []

        def on_round_start(self, round_num: int, num_rounds: int, site_ids: list[str]) -> None:
            self.starts[round_num] = time.perf_counter()

        def on_round_end(self, record: object) -> None:
            round_num = getattr(record, "round_num", 0)
            if round_num in self.starts and round_num > 0:
                self.times.append(time.perf_counter() - self.starts[round_num])

    memory = PeakMemory()
    ray_start_s = 0.0
    if backend == "ray":
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
                 object_store_memory=512 * 2**20)
        ray_start_s = time.perf_counter() - started
    assert benchjob  # importable here and, through PYTHONPATH, in site processes and actors
    job = load_job("benchjob:make_job", {"num_params": num_params, "num_rounds": rounds,
                                          "fraction": fraction})
    listener = Rounds()
    started = time.perf_counter()
    result = simulate(job, num_sites=num_sites, backend=backend,  # type: ignore[arg-type]
                      listener=listener, connect_timeout_s=1800)
    total_s = time.perf_counter() - started
    setup_s = listener.starts.get(1, started) - started
    if backend == "ray":
        import ray

        ray.shutdown()
    peak_mib = memory.stop()
    trained = [len(r.trained_sites) for r in result.history.rounds if r.round_num > 0]
    return {"backend": backend, "sites": num_sites, "fraction": fraction,
            "sites_per_round": trained[-1] if trained else 0,
            "round_s_median": statistics.median(listener.times),
            "round_s": [round(t, 4) for t in listener.times],
            "setup_s": setup_s, "ray_start_s": ray_start_s, "total_s": total_s,
            "peak_pss_mib": peak_mib, "summary": result.summary}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", help="BACKEND:SITES[:FRACTION] ...")
    parser.add_argument("--quick", action="store_true", help="10 and 100 sites only")
    parser.add_argument("--params", type=int, default=10_000, help="model parameters")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=1200, help="per case")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process's one case
    args = parser.parse_args()
    if args.one:
        backend, sites, fraction = [*args.one.split(":"), "1"][:3]
        print(json.dumps(run_case(backend, int(sites), float(fraction), args.params,
                                  args.rounds)))
        return
    cases = args.cases or (QUICK if args.quick else CASES)
    results = []
    for case in cases:
        command = [sys.executable, __file__, "--one", case, "--params", str(args.params),
                   "--rounds", str(args.rounds)]
        print(f"running {case} ...", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            results.append({"case": case, "error": f"over {args.timeout_s:g} s"})
            continue
        if done.returncode != 0:
            results.append({"case": case, "error": done.stderr.strip().splitlines()[-1:]})
            continue
        results.append({"case": case, **json.loads(done.stdout.strip().splitlines()[-1])})
    document = {"name": "simscale", "git_sha": git_sha(), "date": time.strftime("%Y-%m-%d"),
                "params": {"num_params": args.params, "rounds": args.rounds,
                           "cpus": os.cpu_count(), "model_bytes": 4 * args.params},
                "units": {"round_s_median": "s", "setup_s": "s", "ray_start_s": "s",
                          "peak_pss_mib": "MiB"},
                "results": results}
    print(json.dumps(document, indent=1))
    print(f"\n{'case':<20} {'sites/round':>11} {'round s':>9} {'set-up s':>9} "
          f"{'ray start s':>11} {'peak MiB':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:<20} error: {r['error']}")
            continue
        print(f"{r['case']:<20} {r['sites_per_round']:>11} {r['round_s_median']:>9.3f} "
              f"{r['setup_s']:>9.2f} {r['ray_start_s']:>11.2f} {r['peak_pss_mib']:>9.0f}")


if __name__ == "__main__":
    main()
