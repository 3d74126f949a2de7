"""Transport benchmark: a real multi-process mTLS federation on loopback vs a plain Python loop.

    .venv/bin/python bench/transport.py            # full run (several minutes, ~6 GB RAM)
    .venv/bin/python bench/transport.py --quick    # small models only

For 1 M and 25 M float32 parameters with 2 and 8 sites, and 1 M with 32 sites (trivial local
training, no evaluation): per-round wall time (median of 10 rounds, and the first round alone),
bytes on the wire (loopback interface counters: TLS, HTTP/2, TCP, all of it), the server's peak
RSS above its idle RSS, and the largest site's peak RSS above its own idle RSS; the same FedAvg as
a plain in-process loop is the floor. Also two round trips of a 1 GiB model (cold, then warm),
and the time from starting a POC to the end of its first round. Prints JSON, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "bench"), *filter(None, [os.environ.get("PYTHONPATH")])])

import benchjob  # noqa: E402
import rawgrpc  # noqa: E402

from fedcare.cli.poc import PocFederation  # noqa: E402
from fedcare.transport.grpc import fedcare_pb2 as pb  # noqa: E402

JOBS = ["benchjob:make_job"]  # installed at the server and the sites, so their policies list it


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        if line.strip().startswith("lo:"):
            return int(line.split(":", 1)[1].split()[8])  # transmitted bytes
    return 0


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def floor_round_s(num_params: int, num_sites: int, rounds: int = 7) -> float:
    """FedAvg with no framework: same model, same local step, a Python loop."""
    weights = benchjob.model(num_params)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        acc = {k: np.zeros(v.shape, np.float64) for k, v in weights.items()}
        total = 0
        for site in range(num_sites):
            local = benchjob.local_step(weights)
            n = 100 + site
            for k, v in local.items():
                acc[k] += n * v
            total += n
        weights = benchjob.Weights({k: (a / total).astype(np.float32) for k, a in acc.items()})
        times.append(time.perf_counter() - start)
    return float(np.median(times))


#: Rounds per case: a federation runs for many rounds, and the first one or two here pay for
#: touching fresh memory (1-3 s per GiB on this VM); the median of 10 is the typical round.
ROUNDS = 10


def federation_run(num_params: int, num_sites: int, rounds: int = ROUNDS,
                   server_args: tuple[str, ...] = ()) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        fed = PocFederation(Path(tmp) / "poc", [f"site-{i}" for i in range(num_sites)],
                            allowed_jobs=JOBS)
        try:
            fed.provision()
            fed.start_server(extra_args=server_args)
            fed.start_sites()
            fed.wait_for_sites(num_sites)
            server_pid = fed.server.pid  # type: ignore[union-attr]
            admin = fed.admin()
            time.sleep(0.5)
            idle_kib = proc_kib(server_pid, "VmRSS")
            site_pids = [p.pid for p in fed.sites.values()]
            site_idle_kib = [proc_kib(pid, "VmRSS") for pid in site_pids]
            wire_before = loopback_bytes()
            job_id = admin.Submit(pb.SubmitRequest(
                entry_point="benchjob:make_job", params_json=json.dumps(
                    {"num_params": num_params, "num_rounds": rounds})), timeout=60).job_id
            for update in admin.Watch(pb.JobRef(job_id=job_id), timeout=3600):
                state = json.loads(update.json)
            wire = loopback_bytes() - wire_before
            peak_kib = proc_kib(server_pid, "VmHWM")
            site_above_kib = [proc_kib(pid, "VmHWM") - idle
                              for pid, idle in zip(site_pids, site_idle_kib, strict=True)]
            if state["status"] != "finished":
                raise RuntimeError(f"bench job {state['status']}: {state['error']}")
            records = json.loads(admin.Metrics(pb.JobRef(job_id=job_id), timeout=60).json)
        finally:
            fed.stop()
    durations = [r["duration_s"] for r in records if r["round_num"] >= 1]
    model_bytes = num_params * 4
    raw = model_bytes * num_sites * 2 * rounds  # each round: model out and back, per site
    return {
        "round_s_median": float(np.median(durations)),
        "round_s_first": durations[0],
        "round_s_each": durations,
        "wire_bytes": wire,
        "raw_tensor_bytes": raw,
        "wire_over_raw": wire / raw,
        "throughput_MBps": raw / rounds / float(np.median(durations)) / 1e6,
        "server_idle_MiB": idle_kib / 1024,
        "server_peak_above_idle_MiB": (peak_kib - idle_kib) / 1024,
        "peak_above_idle_over_model": (peak_kib - idle_kib) * 1024 / model_bytes,
        # every site process: its peak RSS above its RSS once connected, before the job
        "site_idle_MiB_median": float(np.median(site_idle_kib)) / 1024,
        "site_peak_above_idle_over_model_max": max(site_above_kib) * 1024 / model_bytes,
        "sites_total_peak_MiB": sum(site_above_kib + site_idle_kib) / 1024,
    }


def distant_site_round_s(num_params: int, delay_s: float = 0.02, rounds: int = 3) -> list[float]:
    """Rounds of one site that reaches the server through a link holding every byte back
    ``delay_s`` each way (bench/delaylink.py): what a hospital far from the server sees."""
    import socket

    with tempfile.TemporaryDirectory() as tmp:
        fed = PocFederation(Path(tmp) / "poc", ["site-0"], allowed_jobs=JOBS)
        link = None
        try:
            fed.provision()
            fed.start_server()
            upstream = int(fed.address.rsplit(":", 1)[1])
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            link = subprocess.Popen([sys.executable, str(ROOT / "bench" / "delaylink.py"),
                                     str(port), str(upstream), str(delay_s)],
                                    stdout=subprocess.PIPE, text=True)
            assert link.stdout is not None and link.stdout.readline().strip() == "ready"
            fed.start_site("site-0", server_address=f"127.0.0.1:{port}")
            fed.wait_for_sites(1)
            admin = fed.admin()
            job_id = admin.Submit(pb.SubmitRequest(
                entry_point="benchjob:make_job", params_json=json.dumps(
                    {"num_params": num_params, "num_rounds": rounds})), timeout=60).job_id
            for _ in admin.Watch(pb.JobRef(job_id=job_id), timeout=1800):
                pass
            records = json.loads(admin.Metrics(pb.JobRef(job_id=job_id), timeout=60).json)
        finally:
            fed.stop()
            if link is not None:
                link.kill()
                link.wait()
    return [r["duration_s"] for r in records if r["round_num"] >= 1]


def poc_first_round_s() -> float:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        fed = PocFederation(Path(tmp) / "poc", ["site-1", "site-2"], allowed_jobs=JOBS)
        try:
            fed.provision()
            fed.start_server()
            fed.start_sites()
            fed.wait_for_sites(2)
            admin = fed.admin()
            job_id = admin.Submit(pb.SubmitRequest(entry_point="benchjob:make_job",
                                                   params_json='{"num_params": 1000}'),
                                  timeout=60).job_id
            for update in admin.Watch(pb.JobRef(job_id=job_id), timeout=600):
                if json.loads(update.json)["round_num"] >= 1:
                    return time.monotonic() - started
        finally:
            fed.stop()
    raise RuntimeError("the POC job never completed a round")


def raw_grpc() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        fed = PocFederation(Path(tmp) / "poc", ["site-1"], allowed_jobs=JOBS)
        fed.provision()
        return rawgrpc.measure(fed.kits["server"], fed.kits["site-1"])


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 M parameters only, no 1 GiB")
    args = parser.parse_args()
    sizes = [1_000_000] if args.quick else [1_000_000, 25_000_000]
    first = poc_first_round_s()  # first: nothing else's memory or disk writes still settling
    raw = raw_grpc()
    raw_MBps = min(raw.values())
    cases = []
    shapes = [(n, s) for n in sizes for s in (2, 8)] + [(1_000_000, 32)]
    for num_params, num_sites in shapes:
        fed = federation_run(num_params, num_sites)
        floor = floor_round_s(num_params, num_sites)
        # no framework on this transport could beat moving the round's bytes at raw speed
        transport_floor = num_params * 4 * num_sites * 2 / (raw_MBps * 1e6)
        cases.append({"num_params": num_params, "num_sites": num_sites,
                      "floor_round_s": floor, "raw_grpc_round_s": transport_floor, **fed,
                      "round_over_floor": fed["round_s_median"] / floor,
                      "round_over_raw_grpc": fed["round_s_median"] / transport_floor})
        print(f"done {num_params} x {num_sites}", file=sys.stderr, flush=True)
    # Two round trips: the first touches every buffer for the first time (page faults cost
    # 1-3 s per GiB on this VM), the second reuses them.
    # Does folding uploads in as their chunks arrive pay? The same case with every upload
    # received whole first (``fedcare server start --no-streamed-fold``).
    big = sizes[-1]
    whole = federation_run(big, 8, server_args=("--no-streamed-fold",))
    streamed = next(c for c in cases if c["num_params"] == big and c["num_sites"] == 8)
    fold = {"num_params": big, "num_sites": 8, "whole_uploads": whole,
            "streamed_round_s": streamed["round_s_median"],
            "whole_round_s": whole["round_s_median"],
            "streamed_peak_over_model": streamed["peak_above_idle_over_model"],
            "whole_peak_over_model": whole["peak_above_idle_over_model"]}
    print(f"done {big} x 8 whole uploads", file=sys.stderr, flush=True)
    gib = None if args.quick else federation_run(1024**3 // 4, 1, rounds=2)
    distant = distant_site_round_s(big)
    print(f"done {big} x 1 distant site", file=sys.stderr, flush=True)
    result = {"name": "transport", "git_sha": git_sha(),
              "params": {"rounds": ROUNDS, "chunk_bytes": 2 * 1024**2, "quick": args.quick},
              "metrics": {"raw_grpc_mtls": raw, "cases": cases, "one_gib_round_trip": gib,
                          "streamed_fold": fold,
                          "distant_site": {"num_params": big, "delay_each_way_s": 0.02,
                                           "round_s_each": distant},
                          "poc_start_to_first_round_s": first}}
    print(json.dumps(result, indent=1))
    print(f"\nplain gRPC over mTLS, no framework: {raw['server_to_site_MBps']:.0f} MB/s down, "
          f"{raw['site_to_server_MBps']:.0f} MB/s up")
    print(f"\n{'params':>10} {'sites':>5} {'round s':>8} {'1st s':>7} {'floor s':>8} "
          f"{'x floor':>7} {'gRPC s':>7} {'x gRPC':>6} {'wire/raw':>8} {'MB/s':>7} "
          f"{'peak/model':>10} {'site/model':>10}")
    for c in cases:
        print(f"{c['num_params']:>10} {c['num_sites']:>5} {c['round_s_median']:>8.3f} "
              f"{c['round_s_first']:>7.3f} {c['floor_round_s']:>8.4f} "
              f"{c['round_over_floor']:>7.1f} {c['raw_grpc_round_s']:>7.3f} "
              f"{c['round_over_raw_grpc']:>6.1f} {c['wire_over_raw']:>8.3f} "
              f"{c['throughput_MBps']:>7.0f} {c['peak_above_idle_over_model']:>10.2f} "
              f"{c['site_peak_above_idle_over_model_max']:>10.2f}")
    if gib:
        cold, warm = gib["round_s_each"]
        size = 2 * 1024**3 / 1e6
        print(f"1 GiB round trip: first {cold:.1f} s ({size / cold:.0f} MB/s), second "
              f"{warm:.1f} s ({size / warm:.0f} MB/s); server peak "
              f"{gib['peak_above_idle_over_model']:.2f}x the model")
    print(f"{big} x 8, uploads folded as they arrive vs received whole: round "
          f"{fold['streamed_round_s']:.3f} s vs {fold['whole_round_s']:.3f} s, server peak "
          f"{fold['streamed_peak_over_model']:.2f}x vs {fold['whole_peak_over_model']:.2f}x")
    print(f"{big} x 1 site 20 ms away each way: rounds "
          f"{', '.join(f'{s:.2f}' for s in distant)} s")
    print(f"POC start to first round: {first:.2f} s")


if __name__ == "__main__":
    main()
