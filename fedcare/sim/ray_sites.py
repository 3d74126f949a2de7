"""The simulator's Ray backend: what each Ray actor needs to start the sites it hosts.

A :class:`SiteStarter` is sent once to every actor of the pool (Ray serializes it) and builds a
site's handler there, with the same steps as a thread or a site process: the job (rebuilt from
its entry point when it has one, as a site process does; else the Job itself, sent along),
the site's context, filter policy, privacy guard and ledger, and its throwaway identity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from fedcare.core.config import build_job
from fedcare.core.job import Job
from fedcare.core.message import Reply, Task
from fedcare.core.policy import SitePolicy
from fedcare.core.privacy_policy import PrivacyPolicy
from fedcare.core.trainer import SiteContext
from fedcare.sim.identity import ThrowawayIdentities
from fedcare.site.agent import refusing, start_failure
from fedcare.site.privacy_guard import PrivacyGuard
from fedcare.site.start import start_job


class SiteStarter:
    """Builds simulated sites' handlers inside a Ray actor; the job is built once per actor.

    Paths (data folders, privacy ledgers) are the actor's node's: the machine itself for a
    local Ray, every node's shared file system for a cluster.
    """

    def __init__(self, job: Job, site_ids: list[str], *,
                 policies: Mapping[str, SitePolicy | None],
                 privacy: Mapping[str, PrivacyPolicy | None],
                 ledgers: Mapping[str, Path | None],
                 data_dirs: Mapping[str, Path | None],
                 identities: ThrowawayIdentities) -> None:
        # A job with an entry point is rebuilt at the actor (its code is importable there, as
        # at a site process); one built in Python is sent as it is.
        self._source = job.source
        self._job: Job | None = None if job.source is not None else job
        self._seed = job.seed
        self._index = {site_id: i for i, site_id in enumerate(site_ids)}
        self._policies = dict(policies)
        self._privacy = dict(privacy)
        self._ledgers = dict(ledgers)
        self._data_dirs = dict(data_dirs)
        self._identities = identities  # PEM bytes: the keys are loaded at the actor

    def __call__(self, site_id: str) -> Callable[[Task], Reply]:
        if self._job is None:
            assert self._source is not None
            try:
                self._job = build_job(self._source)
            except Exception as exc:  # as a site process: the site stays and says why
                return refusing(site_id, start_failure(exc))
        context = SiteContext(site_id, self._index[site_id], len(self._index), seed=self._seed,
                              data_dir=self._data_dirs.get(site_id))
        guard = PrivacyGuard.of_site(self._privacy.get(site_id), self._ledgers.get(site_id))
        return start_job(self._job, context, self._policies.get(site_id), guard,
                         self._identities.identity(site_id))
