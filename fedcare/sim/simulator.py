"""The simulator: a whole federation on one machine, every site isolated.

Each site gets its own trainer instance built by the job for that site only (its own data
partition). ``processes=False`` runs the sites as threads of this process over the in-memory
transport; ``processes=True`` runs one OS process per site over pipes, each rebuilding the job
from its entry point, which is exactly what a real site does. The controller is the same.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from fedcare.core.errors import ConfigError, FedcareError, SiteError
from fedcare.core.job import Job
from fedcare.core.trainer import SiteContext
from fedcare.server.controller import RoundController, RunResult
from fedcare.server.events import RunListener
from fedcare.site.agent import SiteAgent
from fedcare.transport.base import Transport
from fedcare.transport.memory import MemoryTransport
from fedcare.transport.pipe import PipeTransport

log = logging.getLogger(__name__)


def simulation_sites(job: Job, num_sites: int | None) -> list[str]:
    """Site ids for a simulation: the job's natural sites, or site-0 .. site-(N-1)."""
    if job.site_ids is not None:
        if num_sites is not None and num_sites != len(job.site_ids):
            raise ConfigError(
                f"the job has {len(job.site_ids)} natural sites {list(job.site_ids)}, "
                f"cannot simulate {num_sites}", job_id=job.name)
        return list(job.site_ids)
    if num_sites is None:
        raise ConfigError("the job has no natural sites: give the number of sites",
                          job_id=job.name)
    if num_sites < 1:
        raise ConfigError(f"number of sites must be >= 1, got {num_sites}", job_id=job.name)
    return [f"site-{i}" for i in range(num_sites)]


def _memory_transport(job: Job, site_ids: list[str]) -> MemoryTransport:
    handlers = {}
    for index, site_id in enumerate(site_ids):
        context = SiteContext(site_id, index, len(site_ids), seed=job.seed)
        try:
            trainer = job.trainer(context)
        except FedcareError:
            raise
        except Exception as exc:
            raise SiteError(f"building the trainer failed: {type(exc).__name__}: {exc}",
                            job_id=job.name, site_id=site_id) from exc
        handlers[site_id] = SiteAgent(site_id, trainer).handle
    return MemoryTransport(handlers)


def _process_transport(job: Job, site_ids: list[str]) -> PipeTransport:
    if job.source is None:
        raise ConfigError("processes mode needs a job loaded from a config file or "
                          "module:function, so each site process can rebuild it", job_id=job.name)
    source = json.dumps(dataclasses.asdict(job.source))
    env = dict(os.environ)
    # N sites share the machine's cores: one math thread each avoids oversubscription.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    commands = {
        site_id: [sys.executable, "-m", "fedcare.sim.worker", "--source", source,
                  "--site-id", site_id, "--site-index", str(index),
                  "--num-sites", str(len(site_ids)), "--seed", str(job.seed)]
        for index, site_id in enumerate(site_ids)
    }
    return PipeTransport(commands, env=env)


def simulate(
    job: Job,
    *,
    num_sites: int | None = None,
    processes: bool = False,
    run_dir: Path | None = None,
    listener: RunListener | None = None,
    connect_timeout_s: float = 120.0,
) -> RunResult:
    """Run ``job`` over simulated sites and return the final model and history."""
    site_ids = simulation_sites(job, num_sites)
    transport: Transport
    transport = _process_transport(job, site_ids) if processes else _memory_transport(job, site_ids)
    try:
        if processes:
            connected = transport.wait_for_sites(len(site_ids), connect_timeout_s)
            missing = [s for s in site_ids if s not in connected]
            if missing:
                assert isinstance(transport, PipeTransport)
                reasons = "; ".join(
                    f"site {s}: {transport.failures.get(s, 'not ready in time')}" for s in missing)
                if len(connected) < job.min_sites:
                    raise SiteError(f"site processes failed to start: {reasons}", job_id=job.name)
                log.warning("job %s: going on without %s: %s", job.name, missing, reasons)
        controller = RoundController(job, transport, run_dir=run_dir, listener=listener,
                                     connect_timeout_s=connect_timeout_s)
        return controller.run()
    finally:
        transport.close()
