"""Secure aggregation benchmark: SecAgg / SecAgg+ rounds against plain FedAvg.

    .venv/bin/python bench/secagg.py            # everything (tens of minutes on 2 cores)
    .venv/bin/python bench/secagg.py --quick    # 10 sites only, no 25 M case

Same model (1 M float32 parameters in 8 tensors) and trivial local step as bench/transport.py.

* 10 sites: a real mTLS federation of processes on loopback (``PocFederation``): round wall
  time (median of rounds 2..R), bytes on the wire (loopback counters: TLS, HTTP/2, TCP).
  ``--processes 50 100`` adds such federations of 50 and 100 site processes with SecAgg+
  (each site process takes about 100 MB; all of them share this machine's cores).
* 10, 50, 100 sites simulated in one process (threads over the in-memory transport, the
  simulator's): the 2 cores of this machine cannot host 50-100 site processes. Every site's
  work (training, key agreement, masking) runs on the same 2 cores, so the time ratio is that
  of total CPU work, not the latency of sites working in parallel. Bytes are the encoded size
  of every task and reply (``codec.encode_parts``: what the gRPC transport would send, before
  TLS framing).
* Server peak memory, 25 M parameters x 8 site processes (secure): server peak RSS above its
  idle RSS over the model's float32 bytes, as bench/transport.py measures it.

Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "bench"), *filter(None, [os.environ.get("PYTHONPATH")])])

import benchjob  # noqa: E402
from transport import git_sha, loopback_bytes, proc_kib  # noqa: E402

from fedcare.cli.poc import PocFederation  # noqa: E402
from fedcare.sim.simulator import simulate  # noqa: E402
from fedcare.transport import codec  # noqa: E402
from fedcare.transport.grpc import fedcare_pb2 as pb  # noqa: E402
from fedcare.transport.memory import MemoryTransport  # noqa: E402

JOBS = ["benchjob:make_job", "benchjob:make_secure_job"]


def secagg_plus_degree(num_sites: int) -> int:
    """SecAgg+'s neighbours: 2 * ceil(log2 n), an O(log n) degree as Bell et al. suggest."""
    return 2 * math.ceil(math.log2(num_sites))


def _median_round_s(history: list[float]) -> float:
    return statistics.median(history[1:] if len(history) > 1 else history)


class _CountingTransport:
    """Counts the encoded bytes of every task sent and reply received by a MemoryTransport."""

    def __init__(self) -> None:
        self.bytes = 0
        self._send = MemoryTransport.send
        self._receive = MemoryTransport.receive

    def __enter__(self) -> _CountingTransport:
        counter = self

        def send(transport, site_id, task):  # type: ignore[no-untyped-def]
            counter.bytes += sum(len(p) for p in codec.encode_parts(task))
            return counter._send(transport, site_id, task)

        def receive(transport, timeout_s):  # type: ignore[no-untyped-def]
            reply = counter._receive(transport, timeout_s)
            if reply is not None:
                counter.bytes += sum(len(p) for p in codec.encode_parts(reply))
            return reply

        MemoryTransport.send = send  # type: ignore[method-assign]
        MemoryTransport.receive = receive  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        MemoryTransport.send = self._send  # type: ignore[method-assign]
        MemoryTransport.receive = self._receive  # type: ignore[method-assign]


def simulated(num_sites: int, num_params: int, rounds: int, mode: str) -> dict[str, float]:
    """One simulated run: plain, secagg (complete graph) or secagg+ (neighbour graph)."""
    if mode == "plain":
        job = benchjob.make_job(num_params=num_params, num_rounds=rounds)
    else:
        degree = secagg_plus_degree(num_sites) if mode == "secagg+" else None
        job = benchjob.make_secure_job(num_params=num_params, num_rounds=rounds,
                                       neighbours=degree)
    with _CountingTransport() as counter:
        started = time.perf_counter()
        result = simulate(job, num_sites=num_sites)
        total_s = time.perf_counter() - started
    durations = [r.duration_s for r in result.history.rounds if r.round_num >= 1]
    return {"round_s_median": _median_round_s(durations), "run_s": total_s,
            "bytes_per_round": counter.bytes / rounds,
            "raw_bytes_per_round": 2 * num_sites * num_params * 4}


def federation(num_sites: int, num_params: int, rounds: int, entry_point: str,
               params: dict[str, object] | None = None) -> dict[str, float]:
    """A real POC federation: median round, loopback bytes a round, server peak over model."""
    with tempfile.TemporaryDirectory() as tmp:
        fed = PocFederation(Path(tmp) / "poc", [f"site-{i}" for i in range(num_sites)],
                            allowed_jobs=JOBS)
        try:
            fed.provision()
            fed.start_server()
            fed.start_sites()
            fed.wait_for_sites(num_sites, timeout_s=60 + 5 * num_sites)
            server_pid = fed.server.pid  # type: ignore[union-attr]
            admin = fed.admin()
            time.sleep(0.5)
            idle_kib = proc_kib(server_pid, "VmRSS")
            wire_before = loopback_bytes()
            job_id = admin.Submit(pb.SubmitRequest(
                entry_point=entry_point, params_json=json.dumps(
                    {"num_params": num_params, "num_rounds": rounds, **(params or {})})),
                timeout=60).job_id
            for update in admin.Watch(pb.JobRef(job_id=job_id), timeout=3600):
                state = json.loads(update.json)
            wire = loopback_bytes() - wire_before
            peak_kib = proc_kib(server_pid, "VmHWM")
            if state["status"] != "finished":
                raise RuntimeError(f"bench job {state['status']}: {state['error']}")
            records = json.loads(admin.Metrics(pb.JobRef(job_id=job_id), timeout=60).json)
        finally:
            fed.stop()
    durations = [r["duration_s"] for r in records if r["round_num"] >= 1]
    return {"round_s_median": _median_round_s(durations), "round_s_each": durations,
            "bytes_per_round": wire / rounds,
            "server_peak_above_idle_MiB": (peak_kib - idle_kib) / 1024,
            "server_peak_over_model": (peak_kib - idle_kib) * 1024 / (num_params * 4)}


def _ratios(plain: dict[str, float], secure: dict[str, float]) -> dict[str, float]:
    return {"time_ratio": secure["round_s_median"] / plain["round_s_median"],
            "bytes_ratio": secure["bytes_per_round"] / plain["bytes_per_round"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 sites only, no 25 M case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sites", type=int, nargs="*", default=[10, 50, 100])
    parser.add_argument("--processes", type=int, nargs="*", default=[],
                        help="also these numbers of site processes, SecAgg+ (many GB of RAM)")
    parser.add_argument("--only-processes", action="store_true",
                        help="just the --processes cases")
    args = parser.parse_args()
    num_params = 1_000_000
    cases: list[dict[str, object]] = []
    if not args.only_processes:
        real = {"plain": federation(10, num_params, args.rounds, "benchjob:make_job"),
                "secagg": federation(10, num_params, args.rounds, "benchjob:make_secure_job")}
        cases.append({"sites": 10, "how": "processes", "mode": "secagg",
                      **_ratios(real["plain"], real["secagg"]), "plain": real["plain"],
                      "secure": real["secagg"]})
    for sites in args.processes:
        degree = secagg_plus_degree(sites)
        plain = federation(sites, num_params, args.rounds, "benchjob:make_job")
        secure = federation(sites, num_params, args.rounds, "benchjob:make_secure_job",
                            {"neighbours": degree})
        cases.append({"sites": sites, "how": "processes", "mode": "secagg+", "degree": degree,
                      **_ratios(plain, secure), "plain": plain, "secure": secure})
    for sites in [] if args.only_processes else [10] if args.quick else args.sites:
        plain = simulated(sites, num_params, args.rounds, "plain")
        for mode in ("secagg", "secagg+"):
            if mode == "secagg+" and secagg_plus_degree(sites) >= sites - 1:
                continue
            secure = simulated(sites, num_params, args.rounds, mode)
            cases.append({"sites": sites, "how": "simulated", "mode": mode,
                          "degree": secagg_plus_degree(sites) if mode == "secagg+" else None,
                          **_ratios(plain, secure), "plain": plain, "secure": secure})
    memory = None
    if not (args.quick or args.only_processes):
        memory = federation(8, 25_000_000, args.rounds, "benchjob:make_secure_job")
    print(json.dumps({"name": "secagg", "git_sha": git_sha(),
                      "params": {"num_params": num_params, "rounds": args.rounds,
                                 "targets": {"time_ratio": 2.0, "bytes_ratio": 1.8,
                                             "server_peak_over_model": 5.0}},
                      "cases": cases, "memory_25M_x8": memory}, indent=1))
    print(f"\n{'sites':>5} {'how':>10} {'mode':>8} {'plain s':>8} {'secure s':>9} "
          f"{'time x':>7} {'bytes x':>8}")
    for case in cases:
        plain_s = case["plain"]["round_s_median"]  # type: ignore[index]
        secure_s = case["secure"]["round_s_median"]  # type: ignore[index]
        print(f"{case['sites']:>5} {case['how']:>10} {case['mode']:>8} {plain_s:>8.3f} "
              f"{secure_s:>9.3f} {case['time_ratio']:>7.2f} {case['bytes_ratio']:>8.3f}")
    if memory is not None:
        print(f"25 M x 8 secure: {memory['round_s_median']:.2f} s a round, server peak "
              f"{memory['server_peak_over_model']:.2f}x the model")


if __name__ == "__main__":
    main()
