"""A real site: serves tasks of any job the server sends, under the site's own policies.

The first task of a job names the job: an entry point installed at the site, or a signed job
package. The site runs only the code its own code policy allows (:class:`CodePolicy`:
fedcare's built-in jobs, entry points its operator lists, packages from listed signers or with
listed ids), whatever the server says; anything else is refused, and the refusal, with its
reason, is the task's reply, which the admin sees. A package is fetched from the server,
verified by the site itself (content hashes, signature, signer certified by the federation's
CA as a project admin) and run from the site's own copy, with the entry point and parameters
its signer signed. The trainer is built from the site's own configuration (data locations never
come from the server) and kept for the rest of the job, so trainer state persists across
rounds and across reconnections.

No task says that a job has ended, so the runtime keeps the trainers of the ``max_jobs`` most
recently used jobs and frees older ones. A server runs one job at a time, so a task of a new job
means the previous one is over; a stray late task of an evicted job starts a fresh trainer.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from fedcare.core.config import build_job, build_package_job, site_trainer
from fedcare.core.errors import ConfigError
from fedcare.core.identity import SiteIdentity
from fedcare.core.job import Job, JobSource
from fedcare.core.message import JobRef, Reply, Task
from fedcare.core.package import read_package
from fedcare.core.policy import CodePolicy, SitePolicy
from fedcare.core.privacy_policy import PrivacyPolicy
from fedcare.core.trainer import SiteContext
from fedcare.site.agent import SiteAgent, start_failure
from fedcare.site.chain import build_filters
from fedcare.site.privacy_guard import PrivacyGuard

log = logging.getLogger(__name__)


PackageFetcher = Callable[[str], bytes]
#: Refusals remembered (per job), so a refused job is not fetched and checked for every task.
_REMEMBERED_REFUSALS = 64


class SiteRuntime:
    """Dispatches tasks to one SiteAgent per job; refuses jobs the site does not allow.

    Each job's agent gets filter chains built afresh from the site's ``policy`` (state never
    crosses jobs). Keeps the agents (trainer, model, data) of at most ``max_jobs`` jobs, least
    recently used evicted first.

    Args:
        code: Which job code this site runs (default: fedcare's built-in jobs only).
        fetch_package: Downloads a package's bytes from the server by id; None: this site
            runs no packages.
        ca_pem: The federation's CA certificate, against which packages' signers are checked.
        packages_dir: Where the site keeps its own copies of the packages it runs.
        privacy: The site's privacy policy: jobs that do not satisfy it are refused before
            their trainer is built; its budget is kept in the ledger at ``privacy_ledger``.
        privacy_ledger: The site's privacy ledger (every epsilon spent); None: in memory.
        identity: The site's certificate, key and CA from its kit, with which it signs its
            secure and homomorphic aggregation keys and verifies its peers'; None: it takes
            no part in those.
    """

    def __init__(self, site_id: str, *, data_dir: Path | None = None,
                 code: CodePolicy | None = None, policy: SitePolicy | None = None,
                 max_jobs: int = 1, fetch_package: PackageFetcher | None = None,
                 ca_pem: bytes | None = None, packages_dir: Path | None = None,
                 privacy: PrivacyPolicy | None = None,
                 privacy_ledger: Path | None = None,
                 identity: SiteIdentity | None = None) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")
        self.site_id = site_id
        self.data_dir = data_dir
        self.code = code or CodePolicy()
        self.policy = policy
        build_filters(policy)  # a bad policy fails when the site starts, not at the first job
        self.privacy = PrivacyGuard.of_site(privacy, privacy_ledger)
        self.max_jobs = max_jobs
        self.fetch_package = fetch_package
        self.ca_pem = ca_pem
        self.packages_dir = packages_dir
        self.identity = identity
        self._agents: OrderedDict[str, SiteAgent] = OrderedDict()
        self._refused: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def handle(self, task: Task) -> Reply:
        if task.job is None:
            return Reply(task.task_id, self.site_id, error="task does not name its job")
        try:
            agent = self._agent(task.job_id, task.job)
        except _Refused as refused:
            return Reply(task.task_id, self.site_id, error=str(refused))
        except Exception as exc:
            log.error("site %s: cannot start job %s (%s)", self.site_id, task.job_id,
                      task.job.entry_point, exc_info=True)
            return Reply(task.task_id, self.site_id,
                         error=start_failure(exc))
        return agent.handle(task)

    def _refuse(self, job_id: str, reason: str) -> _Refused:
        message = f"site policy refuses job {job_id}: {reason}"
        log.warning("site %s: %s", self.site_id, message)
        self._refused[job_id] = message
        while len(self._refused) > _REMEMBERED_REFUSALS:
            self._refused.popitem(last=False)
        return _Refused(message)

    def _build(self, job_id: str, ref: JobRef) -> Job:
        """The job's object, built only from code this site's policy allows."""
        if ref.package is None:
            problem = self.code.refuses_entry_point(ref.entry_point)
            if problem:
                raise self._refuse(job_id, problem)
            params = json.loads(ref.params_json)
            if not isinstance(params, dict):
                raise ValueError("job params must be a JSON object")
            return build_job(JobSource(ref.entry_point, params))
        if self.fetch_package is None or self.ca_pem is None or self.packages_dir is None:
            raise self._refuse(job_id, "this site runs no job packages")
        try:
            package = read_package(self.fetch_package(ref.package), self.ca_pem)
        except ConfigError as exc:
            raise self._refuse(job_id, f"package {ref.package[:12]}: {exc}") from None
        if package.package_id != ref.package:
            raise self._refuse(job_id, f"the server sent package {package.package_id[:12]} "
                                       f"for {ref.package[:12]}")
        problem = self.code.refuses_package(package.package_id, package.signer)
        if problem:
            raise self._refuse(job_id, problem)
        log.info("site %s runs package %s signed by %s (%s): %s", self.site_id,
                 package.package_id[:12], package.signer, package.signer_org,
                 package.entry_point)
        return build_package_job(package.extract(self.packages_dir), package.entry_point,
                                 package.params)

    def _agent(self, job_id: str, ref: JobRef) -> SiteAgent:
        with self._lock:
            if job_id in self._refused:
                raise _Refused(self._refused[job_id])
            agent = self._agents.get(job_id)
            if agent is not None:
                self._agents.move_to_end(job_id)
            else:
                job = self._build(job_id, ref)
                inbound, outbound = build_filters(self.policy, job.outbound_filters)
                problem = self.privacy.refuses_job(job, outbound) if self.privacy else None
                if problem:  # before the trainer, which is what reads data, is built
                    raise self._refuse(job_id, problem)
                context = SiteContext(self.site_id, ref.site_index, ref.num_sites,
                                      seed=job.seed, data_dir=self.data_dir)
                agent = SiteAgent(self.site_id, site_trainer(job)(context), outbound,
                                  inbound=inbound,
                                  keep_local_model=job.needs_local_models,
                                  privacy=self.privacy, identity=self.identity)
                self._agents[job_id] = agent
                log.info("site %s started job %s (%s)", self.site_id, job_id, ref.entry_point)
                while len(self._agents) > self.max_jobs:
                    old_job, _ = self._agents.popitem(last=False)
                    log.info("site %s freed job %s", self.site_id, old_job)
            return agent


class _Refused(Exception):
    """A job this site's policy does not allow; its message is the reply's error."""
