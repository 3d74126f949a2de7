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
from pathlib import Path

from fedcare.core import logs
from fedcare.core.config import build_job
from fedcare.core.job import JobSource
from fedcare.core.message import Reply, Task
from fedcare.core.policy import SitePolicy
from fedcare.core.privacy_policy import PrivacyPolicy
from fedcare.core.trainer import SiteContext
from fedcare.sim.identity import read_identity
from fedcare.site.agent import refusing, start_failure
from fedcare.site.chain import build_filters
from fedcare.site.privacy_guard import PrivacyGuard
from fedcare.site.start import start_job
from fedcare.transport.pipe import serve_stdio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedcare-site-worker")
    parser.add_argument("--source", required=True, help="JSON of the job's JobSource")
    parser.add_argument("--site-id", required=True)
    parser.add_argument("--site-index", type=int, required=True)
    parser.add_argument("--num-sites", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", help="JSON of the site's SitePolicy (its filter chains)")
    parser.add_argument("--data-dir", help="the site's own data folder")
    parser.add_argument("--privacy", help="JSON of the site's PrivacyPolicy")
    parser.add_argument("--privacy-ledger", help="the site's privacy ledger (SQLite file)")
    parser.add_argument("--identity", required=True,
                        help="folder of the site's throwaway CA certificate, certificate, key")
    args = parser.parse_args(argv)
    logs.configure(logging.WARNING, f"%(asctime)s [site {args.site_id}] %(levelname)s "
                                    "%(message)s")

    def build() -> Callable[[Task], Reply]:
        # A bad policy is the site's own fatal error: the process reports it and exits.
        policy = SitePolicy.model_validate_json(args.policy) if args.policy else None
        privacy = PrivacyGuard.of_site(
            PrivacyPolicy.model_validate_json(args.privacy) if args.privacy else None,
            Path(args.privacy_ledger) if args.privacy_ledger else None)
        build_filters(policy)
        try:
            job = build_job(JobSource(**json.loads(args.source)))
        except Exception as exc:
            # As a real site does (and a simulated thread): it stays, answers every task with
            # the reason, and keeps the traceback in its own log (stderr).
            logging.getLogger(__name__).error("site %s: cannot start the job", args.site_id,
                                              exc_info=True)
            return refusing(args.site_id, start_failure(exc))
        context = SiteContext(args.site_id, args.site_index, args.num_sites, seed=args.seed,
                              data_dir=Path(args.data_dir) if args.data_dir else None)
        return start_job(job, context, policy, privacy,
                         read_identity(args.site_id, Path(args.identity)))

    return serve_stdio(args.site_id, build)


if __name__ == "__main__":
    sys.exit(main())
