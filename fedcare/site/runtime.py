"""A real site: serves tasks of any job the server sends, under the site's own policy.

The first task of a job names the job's entry point; the site checks it against its own
allow-list, builds the trainer from its own configuration (data locations never come from the
server) and keeps it for the rest of the job, so trainer state persists across rounds and
across reconnections.

No task says that a job has ended, so the runtime keeps the trainers of the ``max_jobs`` most
recently used jobs and frees older ones. A server runs one job at a time, so a task of a new job
means the previous one is over; a stray late task of an evicted job starts a fresh trainer.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from fedcare.core.config import build_job, site_trainer
from fedcare.core.job import JobSource
from fedcare.core.message import JobRef, Reply, Task
from fedcare.core.policy import SitePolicy
from fedcare.core.trainer import SiteContext
from fedcare.site.agent import SiteAgent, start_failure
from fedcare.site.filters import build_filters

log = logging.getLogger(__name__)


class SiteRuntime:
    """Dispatches tasks to one SiteAgent per job; refuses jobs the site does not allow.

    Each job's agent gets filter chains built afresh from the site's ``policy`` (state never
    crosses jobs). Keeps the agents (trainer, model, data) of at most ``max_jobs`` jobs, least
    recently used evicted first.
    """

    def __init__(self, site_id: str, *, data_dir: Path | None = None,
                 allowed_trainers: Sequence[str] = (), policy: SitePolicy | None = None,
                 max_jobs: int = 1) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")
        self.site_id = site_id
        self.data_dir = data_dir
        self.allowed_trainers = list(allowed_trainers)
        self.policy = policy
        build_filters(policy)  # a bad policy fails when the site starts, not at the first job
        self.max_jobs = max_jobs
        self._agents: OrderedDict[str, SiteAgent] = OrderedDict()
        self._lock = threading.Lock()

    def handle(self, task: Task) -> Reply:
        if task.job is None:
            return Reply(task.task_id, self.site_id, error="task does not name its job")
        entry_point = task.job.entry_point
        if self.allowed_trainers and entry_point not in self.allowed_trainers:
            log.warning("site %s refuses job %s: %s is not in allowed_trainers",
                        self.site_id, task.job_id, entry_point)
            return Reply(task.task_id, self.site_id, error=(
                f"site policy refuses job {task.job_id}: trainer {entry_point} is not in this "
                "site's allowed_trainers"))
        try:
            agent = self._agent(task.job_id, task.job)
        except Exception as exc:
            log.error("site %s: cannot start job %s (%s)", self.site_id, task.job_id,
                      entry_point, exc_info=True)
            return Reply(task.task_id, self.site_id,
                         error=start_failure(exc))
        return agent.handle(task)

    def _agent(self, job_id: str, ref: JobRef) -> SiteAgent:
        with self._lock:
            agent = self._agents.get(job_id)
            if agent is not None:
                self._agents.move_to_end(job_id)
            else:
                params = json.loads(ref.params_json)
                if not isinstance(params, dict):
                    raise ValueError("job params must be a JSON object")
                job = build_job(JobSource(ref.entry_point, params))
                context = SiteContext(self.site_id, ref.site_index, ref.num_sites,
                                      seed=job.seed, data_dir=self.data_dir)
                inbound, outbound = build_filters(self.policy)
                agent = SiteAgent(self.site_id, site_trainer(job)(context), outbound,
                                  inbound=inbound,
                                  keep_local_model=job.needs_local_models)
                self._agents[job_id] = agent
                log.info("site %s started job %s (%s)", self.site_id, job_id, ref.entry_point)
                while len(self._agents) > self.max_jobs:
                    old_job, _ = self._agents.popitem(last=False)
                    log.info("site %s freed job %s", self.site_id, old_job)
            return agent
