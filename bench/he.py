"""Homomorphic (CKKS) aggregation benchmark: HomomorphicAggregation rounds against plain FedAvg.

    .venv/bin/python bench/he.py                       # 3 sites x 100 k parameters, 3 rounds
    .venv/bin/python bench/he.py --sites 3 5 --params 100000 1000000

Same model (float32 parameters in 8 tensors) and trivial local step as bench/transport.py, in
the simulator (threads over the in-memory transport): every site's work (training, CKKS
encryption, decryption) and the server's ciphertext additions run on the same CPU cores, so the
time ratio is that of total CPU work, not the latency of sites working in parallel. Bytes are
the encoded size of every task and reply (``codec.encode_parts``: what the gRPC transport would
send, before TLS framing). FLARE reports a 2.5-3x wall-time overhead for its CKKS aggregation,
against rounds that include real training; the trivial local step here makes a plain round
take milliseconds, so the time ratio is large and ``he_overhead_s`` (the seconds CKKS adds to a
round) is the number to compare with a real job's round time.

Prints one JSON object, then a table; ``--out`` also writes the JSON there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import benchjob  # noqa: E402
from secagg import _CountingTransport, _median_round_s, _ratios  # noqa: E402
from transport import git_sha  # noqa: E402

from fedcare.server.workflows import HomomorphicAggregation  # noqa: E402
from fedcare.sim.simulator import simulate  # noqa: E402

FLARE_TIME_RATIO = [2.5, 3.0]


def simulated(num_sites: int, num_params: int, rounds: int, mode: str,
              poly_modulus_degree: int) -> dict[str, float]:
    """One simulated run, plain or he; median round time and encoded bytes a round."""
    if mode == "plain":
        job = benchjob.make_job(num_params=num_params, num_rounds=rounds)
    else:
        job = benchjob.make_he_job(num_params=num_params, num_rounds=rounds,
                                   poly_modulus_degree=poly_modulus_degree)
    with _CountingTransport() as counter:
        result = simulate(job, num_sites=num_sites)
    durations = [r.duration_s for r in result.history.rounds if r.round_num >= 1]
    return {"round_s_median": _median_round_s(durations),
            "bytes_per_round": counter.bytes / rounds,
            "raw_bytes_per_round": 2 * num_sites * num_params * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sites", type=int, nargs="*", default=[3])
    parser.add_argument("--params", type=int, nargs="*", default=[100_000])
    parser.add_argument("--poly", type=int, default=8192, help="poly_modulus_degree")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    cases: list[dict[str, object]] = []
    for sites in args.sites:
        for num_params in args.params:
            plain = simulated(sites, num_params, args.rounds, "plain", args.poly)
            he = simulated(sites, num_params, args.rounds, "he", args.poly)
            cases.append({"sites": sites, "num_params": num_params, **_ratios(plain, he),
                          "he_overhead_s": he["round_s_median"] - plain["round_s_median"],
                          "plain": plain, "he": he})
    report = {"name": "he", "git_sha": git_sha(),
              "params": {"rounds": args.rounds, "poly_modulus_degree": args.poly,
                         "scale_bits": 40,
                         "coeff_mod_bit_sizes": list(HomomorphicAggregation().coeff_mod_bit_sizes),
                         "flare_time_ratio": FLARE_TIME_RATIO},
              "cases": cases}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(f"\n{'sites':>5} {'params':>9} {'plain s':>8} {'he s':>8} {'time x':>7} "
          f"{'+s':>7} {'plain MB':>9} {'he MB':>8} {'bytes x':>8}")
    for case in cases:
        plain_r, he_r = case["plain"], case["he"]
        assert isinstance(plain_r, dict) and isinstance(he_r, dict)
        print(f"{case['sites']:>5} {case['num_params']:>9} {plain_r['round_s_median']:>8.3f} "
              f"{he_r['round_s_median']:>8.3f} {case['time_ratio']:>7.1f} "
              f"{case['he_overhead_s']:>7.3f} {plain_r['bytes_per_round'] / 1e6:>9.2f} "
              f"{he_r['bytes_per_round'] / 1e6:>8.2f} "
              f"{case['bytes_ratio']:>8.2f}")


if __name__ == "__main__":
    main()
