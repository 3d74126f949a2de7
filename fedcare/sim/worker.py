"""Entry point of one simulated site process: ``python -m fedcare.sim.worker ...``.

Rebuilds the job from its entry point, builds this site's trainer, and serves tasks over
stdin/stdout. Started by the simulator in processes mode; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from fedcare.core.config import build_job
from fedcare.core.job import JobSource
from fedcare.core.message import Reply, Task
from fedcare.core.trainer import SiteContext
from fedcare.site.agent import SiteAgent
from fedcare.transport.pipe import serve_stdio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedcare-site-worker")
    parser.add_argument("--source", required=True, help="JSON of the job's JobSource")
    parser.add_argument("--site-id", required=True)
    parser.add_argument("--site-index", type=int, required=True)
    parser.add_argument("--num-sites", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"[site {args.site_id}] %(levelname)s %(message)s")

    def build() -> Callable[[Task], Reply]:
        job = build_job(JobSource(**json.loads(args.source)))
        context = SiteContext(args.site_id, args.site_index, args.num_sites, seed=args.seed)
        return SiteAgent(args.site_id, job.trainer(context)).handle

    return serve_stdio(args.site_id, build)


if __name__ == "__main__":
    sys.exit(main())
