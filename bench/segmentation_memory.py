"""Memory of one round of the hippocampus segmentation job, at a site and at the server.

    .venv/bin/python bench/segmentation_memory.py          # about 10 s on 2 cores

Each side runs in a fresh process and reports its peak resident set size (``ru_maxrss``) at
each stage, in MiB. Site: after importing torch and MONAI, after building the trainer (the
site's packaged volumes loaded and cached), and after one round (``local_epochs`` passes of
training, then sliding-window evaluation of its test volumes). Server: the job's server half
(no torch) combining three site updates of the model's size with FedAvg, after importing
fedcare's server side and after the aggregation. Prints one JSON object.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def site_side(params: dict[str, object]) -> dict[str, float]:
    import numpy as np
    import torch

    from fedcare.core.trainer import SiteContext
    from fedcare.jobs.hippocampus import make_job
    from fedcare.jobs.hippocampus_site import make_trainer

    torch.set_num_threads(1)
    out = {"after_import_mib": peak_mib()}
    job = make_job(**params)
    trainer = make_trainer(SiteContext("hospital-a", 0, 3, seed=0), **job.trainer_params)
    out["after_loading_data_mib"] = peak_mib()
    weights = trainer.initial_model()
    trained = trainer.train(weights, job.strategy.configure_train(1, "hospital-a"))
    metrics = trainer.evaluate(trained.weights, {}).metrics
    out["after_one_round_mib"] = peak_mib()
    out["model_bytes"] = float(sum(np.asarray(a).nbytes for a in weights.values()))
    out["dice_mean_after_one_round"] = metrics["dice_mean"]
    out["train_volumes"] = float(trainer.num_train)
    return out


def server_side(model_bytes: int) -> dict[str, float]:
    import numpy as np

    from fedcare.algorithms import FedAvg
    from fedcare.core.message import TrainResult
    from fedcare.core.weights import Weights

    out = {"after_import_mib": peak_mib()}
    rng = np.random.default_rng(0)
    size = model_bytes // 4
    global_weights = Weights({"w": np.zeros(size, np.float32)})
    aggregator = FedAvg().aggregator(1, global_weights)
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        update = Weights({"w": rng.standard_normal(size).astype(np.float32)})
        aggregator.add(site, TrainResult(update, 7))
    aggregator.finish()
    out["after_aggregating_three_updates_mib"] = peak_mib()
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--site", "--server"):
        arg = json.loads(sys.argv[2])
        result = site_side(arg) if sys.argv[1] == "--site" else server_side(int(arg))
        print(json.dumps(result))
        return
    params: dict[str, object] = {}

    def run(side: str, arg: object) -> dict[str, float]:
        done = subprocess.run([sys.executable, __file__, side, json.dumps(arg)], check=True,
                              capture_output=True, text=True, cwd=ROOT)
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    site = run("--site", params)
    server = run("--server", int(site["model_bytes"]))
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=ROOT).stdout.strip()
    print(json.dumps({"name": "segmentation_memory", "params": {"job": "hippocampus",
                      "job_params": params or "defaults"}, "metrics": {"site": site,
                      "server": server}, "units": "MiB peak RSS (ru_maxrss), model bytes",
                      "git_sha": sha}, indent=1))


if __name__ == "__main__":
    main()
