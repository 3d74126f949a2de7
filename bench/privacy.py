"""Differential privacy on the heart job: accuracy and membership-inference AUC per epsilon.

    .venv/bin/python bench/privacy.py             # 5 seeds (about 2 minutes on 2 cores)
    .venv/bin/python bench/privacy.py --seeds 2   # quicker

FLamby's fixed split of Fed-Heart-Disease (the four hospitals), metric: test accuracy, mean over
hospitals. For epsilon in {0.5, 1, 3, 8} (delta 1e-5), and without DP (inf):

- DP-FedAvg (client-level: a whole hospital's contribution is protected; noise added by the
  server, calibrated by dp-accounting for the job's rounds): 3 rounds x 50 full-batch local
  steps (``--dp-fedavg-rounds 1``: one release, no composition, the least noise for the
  epsilon), updates clipped to 0.5; without DP the same rounds and steps with FedAvg.
- DP-SGD (sample-level: each patient; Opacus at every site, calibrated by Opacus for the
  job's steps): 40 rounds x 5 full-batch steps, per-row gradients clipped to 1; without DP
  FedAvg with the same budget.

Beside each, the leak audit (:mod:`fedcare.jobs.heart_attack`): the loss-threshold attack on
the final model and the loss-difference attack on what the sites share. The noise comes from
the operating system's entropy (by design), so a rerun differs within the sds shown. Prints one
JSON object, then a table; ``--out`` also writes the JSON there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from transport import git_sha

from fedcare.jobs.heart_attack import audit, without_dp

ROOT = Path(__file__).resolve().parents[1]
EPSILONS = [0.5, 1.0, 3.0, 8.0, None]  # None: no DP
DELTA = 1e-5
#: FLamby (NeurIPS 2022), Fed-Heart-Disease with DP, and without.
FLAMBY = {"dp_range_eps_ge_1": [0.685, 0.706], "no_dp": 0.7125}
SETTINGS = {
    "dp_fedavg": {"num_rounds": 3, "local_steps": 50, "algorithm": "dp_fedavg",
                  "algorithm_params": {"clip_norm": 0.5, "delta": DELTA}},
    "dp_sgd": {"num_rounds": 40, "local_steps": 5, "dp": {"max_grad_norm": 1.0, "delta": DELTA}},
}


def params_for(method: str, epsilon: float | None) -> dict[str, object]:
    base = json.loads(json.dumps(SETTINGS[method]))  # a deep copy
    if epsilon is None:
        return without_dp(base)
    key = "algorithm_params" if method == "dp_fedavg" else "dp"
    base[key]["target_epsilon"] = epsilon
    return base



def stats(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--methods", nargs="*", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--dp-fedavg-rounds", type=int, help="DP-FedAvg's rounds (default 3)")
    args = parser.parse_args()
    if args.dp_fedavg_rounds is not None:
        SETTINGS["dp_fedavg"]["num_rounds"] = args.dp_fedavg_rounds
    logging.disable(logging.WARNING)
    started = time.monotonic()
    rows = []
    for method in args.methods:
        for epsilon in EPSILONS:
            params = params_for(method, epsilon)
            audits = [audit({"split": "flamby", **params, "seed": seed})
                      for seed in range(args.seeds)]
            reported = [a.epsilon for a in audits if a.epsilon is not None]
            rows.append({
                "method": method, "target_epsilon": epsilon, "delta": DELTA,
                "reported_epsilon": max(reported) if reported else None,
                "accuracy": stats([a.accuracy for a in audits]),
                "model_auc": stats([a.model_auc for a in audits]),
                "update_auc": stats([a.update_auc for a in audits]),
                "per_seed_accuracy": [a.accuracy for a in audits],
            })
            print(f"done {method} epsilon={epsilon}", file=sys.stderr, flush=True)
    result = {"name": "privacy", "git_sha": git_sha(),
              "params": {"seeds": args.seeds, "split": "flamby", "delta": DELTA,
                         "settings": {m: SETTINGS[m] for m in args.methods},
                         "flamby_reference": FLAMBY},
              "metrics": {"rows": rows, "wall_s": time.monotonic() - started}}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(f"\n{'method':<10} {'epsilon':>7} {'reported':>8} {'accuracy':>15} "
          f"{'model AUC':>15} {'update AUC':>15}")
    for r in rows:
        eps = "inf" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
        rep = "" if r["reported_epsilon"] is None else f"{r['reported_epsilon']:.3f}"
        cells = [f"{r[k]['mean']:.3f} ± {r[k]['sd']:.3f}"
                 for k in ("accuracy", "model_auc", "update_auc")]
        print(f"{r['method']:<10} {eps:>7} {rep:>8} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15}")
    print(f"\nFLamby with DP: {FLAMBY['dp_range_eps_ge_1']} at epsilon >= 1; without: "
          f"{FLAMBY['no_dp']}. wall {result['metrics']['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
