"""MedMNIST benchmark: FedAvg vs pooled vs local-only, beside the MedMNIST v2 paper's ResNets.

    .venv/bin/python bench/medmnist.py                                # 4 data sets, 1 seed
    .venv/bin/python bench/medmnist.py --datasets breastmnist --seeds 3 --rounds 20
    .venv/bin/python bench/medmnist.py --out docs/bench/medmnist-2026-12-03.json

The logic is :mod:`fedcare.jobs.medmnist_bench` (also ``fedcare bench medmnist``): per data set
and seed, pooled training, each label-skewed site alone, and FedAvg in the simulator, with the
same small MONAI ResNet and epochs; every model scored on the official test split. The default
run (3 sites, alpha 0.5, 10 rounds x 1 epoch, batch 32, width 16) costs about 11 CPU minutes a
seed; a GPU is used when present.

Prints one JSON object, then a table; ``--out`` also writes the JSON there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from transport import git_sha  # noqa: E402

from fedcare.jobs.medmnist_bench import DATASETS, Settings, run_benchmark, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = Settings(sites=args.sites, alpha=args.alpha, rounds=args.rounds,
                        local_epochs=args.local_epochs, lr=args.lr, batch_size=args.batch_size,
                        width=args.width, device=args.device, threads=args.threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    report = run_benchmark(args.datasets, args.seeds, settings)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    report = {"name": "medmnist", "git_sha": git_sha(),
              "command": "bench/medmnist.py " + " ".join(sys.argv[1:]),
              "units": {"auc": "ROC AUC on the official test split",
                        "accuracy": "fraction correct on the official test split",
                        "wall_s": "seconds", "cpu_s": "CPU seconds of the process"},
              "wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1),
              "cpu_count": os.cpu_count(), **report}
    text = json.dumps(report, indent=1)
    print(text)
    print(table(report), file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
