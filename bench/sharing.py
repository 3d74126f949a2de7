"""Selective sharing on the heart job: accuracy against the fraction of each update shared.

    .venv/bin/python bench/sharing.py             # 5 seeds (about a minute on 2 cores)
    .venv/bin/python bench/sharing.py --seeds 2

As in Li et al. 2019 (federated brain-tumour segmentation, Table 1: sharing 100 %, 40 % and
10 % of the largest update components), every hospital's site policy carries the
``percentile_sharing`` filter: only the given fraction of its update's components, the largest
in magnitude, leave the site (the others leave unchanged from the global model). FLamby's fixed
split of Fed-Heart-Disease, the heart job's defaults (FedAvg, 40 rounds x 5 full-batch steps),
metric: test accuracy, mean over the four hospitals, mean and sd over seeds. Prints one JSON
object, then a table; ``--out`` also writes the JSON there.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from transport import git_sha

from fedcare import load_job, simulate
from fedcare.core.policy import FilterSpec, SitePolicy

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = [1.0, 0.4, 0.1]



def accuracy(fraction: float, seed: int) -> float:
    """Mean test accuracy over the hospitals after the heart job, sharing ``fraction``."""
    job = load_job("fedcare.jobs.heart:make_job", {"split": "flamby", "seed": seed})
    policy = SitePolicy(outbound=[FilterSpec(name="percentile_sharing",
                                             params={"fraction": fraction})])
    result = simulate(job, site_policy=policy)
    if result.failures:
        raise RuntimeError(f"fraction {fraction}, seed {seed}: {result.failures[0]}")
    final = result.history.rounds[-1].site_eval
    return float(np.mean([e.metrics["accuracy"] for e in final.values()]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the filter logs every upload at INFO
    started = time.perf_counter()
    rows = []
    for fraction in FRACTIONS:
        scores = [accuracy(fraction, seed) for seed in range(args.seeds)]
        rows.append({"fraction": fraction, "accuracy_mean": float(np.mean(scores)),
                     "accuracy_sd": float(np.std(scores)), "accuracy_each": scores})
    result = {"name": "sharing", "git_sha": git_sha(),
              "params": {"seeds": args.seeds, "job": "fedcare.jobs.heart:make_job",
                         "split": "flamby", "fractions": FRACTIONS},
              "metrics": {"rows": rows, "seconds": time.perf_counter() - started}}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print(f"\n{'shared':>8} {'accuracy':>18}")
    for row in rows:
        print(f"{row['fraction']:>8.0%} {row['accuracy_mean']:>10.3f} +- {row['accuracy_sd']:.3f}")


if __name__ == "__main__":
    main()
