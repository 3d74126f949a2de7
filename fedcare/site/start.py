"""How a simulated site starts a job it is given: the same steps, in the same order, as a
real site's :class:`~fedcare.site.runtime.SiteRuntime` (which also chooses what code may run).

The outbound chain (the job's filters, then the site's) is built and the job checked against
the site's privacy policy before the trainer, which is what reads data, is built; a job the
site refuses, or cannot start, leaves a site that answers every task with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fedcare.core.config import site_trainer
from fedcare.core.identity import SiteIdentity
from fedcare.core.job import Job
from fedcare.core.message import Reply, Task
from fedcare.core.policy import SitePolicy
from fedcare.core.text import one_line
from fedcare.core.trainer import SiteContext
from fedcare.site.agent import SiteAgent, refusing, start_failure
from fedcare.site.chain import build_filters
from fedcare.site.privacy_guard import PrivacyGuard

log = logging.getLogger(__name__)


def start_job(job: Job, context: SiteContext, policy: SitePolicy | None,
              privacy: PrivacyGuard | None, identity: SiteIdentity | None = None
              ) -> Callable[[Task], Reply]:
    """The task handler of one site for ``job``: a SiteAgent, or a refusing one.

    ``identity``: the site's certificate, key and CA (a simulated site's are throwaway ones),
    with which it signs and verifies secure and homomorphic aggregation keys.
    """
    site_id = context.site_id
    try:
        inbound, outbound = build_filters(policy, job.outbound_filters)
        problem = privacy.refuses_job(job, outbound) if privacy is not None else None
        if problem:
            reason = one_line(f"site policy refuses job {job.name}: {problem}")
            log.warning("site %s: %s", site_id, reason)
            return refusing(site_id, reason)
        trainer = site_trainer(job)(context)
    except Exception as exc:  # as at a real site: this site fails, the others go on
        log.error("site %s: cannot start job %s", site_id, job.name, exc_info=True)
        return refusing(site_id, start_failure(exc))
    return SiteAgent(site_id, trainer, outbound, inbound=inbound,
                     keep_local_model=job.needs_local_models, privacy=privacy,
                     identity=identity).handle
