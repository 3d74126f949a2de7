"""The simulator: a whole federation on one machine (or a Ray cluster), every site isolated.

Each site gets its own trainer instance built by the job for that site only (its own data
partition). Three backends, one controller; only the transport changes:

- ``threads`` (the default): the sites are threads of this process, over the in-memory
  transport;
- ``processes``: one OS process per site over pipes, each rebuilding the job from its entry
  point, which is exactly what a real site does;
- ``ray``: the sites are hosted by a pool of Ray actors, each declaring one site's resources
  (:mod:`fedcare.transport.ray`), for populations of hundreds or thousands of sites and for
  spreading a simulation over a Ray cluster.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from fedcare.core.errors import ConfigError, SiteError
from fedcare.core.job import Job
from fedcare.core.policy import SitePolicy
from fedcare.core.privacy_policy import PrivacyPolicy
from fedcare.core.tracking import TrackingConfig
from fedcare.core.trainer import SiteContext
from fedcare.server.controller import RoundController, RunResult
from fedcare.server.events import ListenerGroup, RunListener
from fedcare.server.tracking import Tracker
from fedcare.sim.identity import ThrowawayIdentities
from fedcare.site.chain import build_filters
from fedcare.site.privacy_guard import PrivacyGuard
from fedcare.site.privacy_ledger import PRIVACY_LEDGER_FILE
from fedcare.site.start import start_job
from fedcare.transport.base import Transport
from fedcare.transport.memory import MemoryTransport
from fedcare.transport.pipe import PipeTransport
from fedcare.transport.resources import SiteResources

log = logging.getLogger(__name__)

Backend = Literal["threads", "processes", "ray"]
BACKENDS: tuple[Backend, ...] = ("threads", "processes", "ray")
#: What a simulation with the Ray backend says when Ray is not installed.
RAY_MISSING = "the ray backend needs Ray, which is not installed: pip install 'fedcare[ray]'"


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


PolicyArg = SitePolicy | Mapping[str, SitePolicy] | None
PrivacyArg = PrivacyPolicy | Mapping[str, PrivacyPolicy] | None


def _site_policy(policy: PolicyArg, site_id: str) -> SitePolicy | None:
    """One site's policy from ``simulate``'s argument: one for all, or one per site."""
    if policy is None or isinstance(policy, SitePolicy):
        return policy
    return policy.get(site_id)


def _site_privacy(privacy: PrivacyArg, site_id: str) -> PrivacyPolicy | None:
    if privacy is None or isinstance(privacy, PrivacyPolicy):
        return privacy
    return privacy.get(site_id)


def ledger_path(privacy_dir: Path | None, site_id: str) -> Path | None:
    """Where a simulated site keeps its privacy ledger: ``privacy_dir/SITE/privacy.db``."""
    if privacy_dir is None:
        return None
    folder = Path(privacy_dir) / site_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder / PRIVACY_LEDGER_FILE


def _check_sites(site_ids: list[str], what: str, given: Mapping[str, object] | None,
                 job: Job) -> None:
    unknown = sorted(set(given or {}) - set(site_ids))
    if unknown:
        raise ConfigError(f"{what} names sites {unknown} that are not simulated "
                          f"(sites: {site_ids})", job_id=job.name)


def _check_policies(site_ids: list[str], policy: PolicyArg, privacy: PrivacyArg,
                    job: Job) -> None:
    """Build every site's filter chains (with the job's) and privacy guard once up front: a
    bad policy fails here, naming the site, rather than inside a thread or a site process."""
    for site_id in site_ids:
        try:
            build_filters(_site_policy(policy, site_id), job.outbound_filters)
            PrivacyGuard.of_site(_site_privacy(privacy, site_id), None)
        except ConfigError as exc:
            raise ConfigError(f"site {site_id}: {exc.message}", job_id=job.name) from None


def _memory_transport(job: Job, site_ids: list[str], policy: PolicyArg,
                      data_dirs: Mapping[str, Path] | None, privacy: PrivacyArg,
                      privacy_dir: Path | None, identities: ThrowawayIdentities
                      ) -> MemoryTransport:
    handlers = {}
    for index, site_id in enumerate(site_ids):
        data_dir = (data_dirs or {}).get(site_id)
        context = SiteContext(site_id, index, len(site_ids), seed=job.seed,
                              data_dir=Path(data_dir) if data_dir is not None else None)
        guard = PrivacyGuard.of_site(_site_privacy(privacy, site_id),
                                     ledger_path(privacy_dir, site_id))
        handlers[site_id] = start_job(job, context, _site_policy(policy, site_id), guard,
                                      identities.identity(site_id))
    return MemoryTransport(handlers)


def _process_transport(job: Job, site_ids: list[str], policy: PolicyArg,
                       data_dirs: Mapping[str, Path] | None, privacy: PrivacyArg,
                       privacy_dir: Path | None, identities: ThrowawayIdentities,
                       identity_dir: Path) -> PipeTransport:
    if job.source is None:
        raise ConfigError("processes mode needs a job loaded from a config file or "
                          "module:function, so each site process can rebuild it", job_id=job.name)
    source = json.dumps(dataclasses.asdict(job.source))
    env = dict(os.environ)
    # N sites share the machine's cores: one math thread each avoids oversubscription.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    # -P: the current directory is not put first on the import path, so a folder called
    # "fedcare" there is never imported instead of the installed package.
    commands = {}
    for index, site_id in enumerate(site_ids):
        command = [sys.executable, "-P", "-m", "fedcare.sim.worker", "--source", source,
                   "--site-id", site_id, "--site-index", str(index),
                   "--num-sites", str(len(site_ids)), "--seed", str(job.seed),
                   "--identity", str(identities.write(site_id, identity_dir / str(index)))]
        site_policy = _site_policy(policy, site_id)
        if site_policy is not None:
            command += ["--policy", site_policy.to_json()]
        site_privacy = _site_privacy(privacy, site_id)
        if site_privacy is not None:
            command += ["--privacy", site_privacy.to_json()]
        ledger = ledger_path(privacy_dir, site_id)
        if ledger is not None:
            command += ["--privacy-ledger", str(ledger.resolve())]
        data_dir = (data_dirs or {}).get(site_id)
        if data_dir is not None:
            command += ["--data-dir", str(Path(data_dir).resolve())]
        commands[site_id] = command
    return PipeTransport(commands, env=env)


def _ray_transport(job: Job, site_ids: list[str], policy: PolicyArg,
                   data_dirs: Mapping[str, Path] | None, privacy: PrivacyArg,
                   privacy_dir: Path | None, identities: ThrowawayIdentities,
                   resources: SiteResources | None) -> Transport:
    """Sites on a pool of Ray actors; needs a running Ray (see ``ray_session``)."""
    from fedcare.sim.ray_sites import SiteStarter
    from fedcare.transport.ray import RayTransport

    folders = {s: Path(d).resolve() for s, d in (data_dirs or {}).items()}
    ledgers = {s: ledger_path(privacy_dir, s) for s in site_ids}
    starter = SiteStarter(
        job, site_ids, policies={s: _site_policy(policy, s) for s in site_ids},
        privacy={s: _site_privacy(privacy, s) for s in site_ids},
        ledgers={s: p.resolve() if p is not None else None for s, p in ledgers.items()},
        data_dirs=folders, identities=identities)
    return RayTransport(site_ids, starter, resources)


def _backend(backend: Backend | None, processes: bool, job: Job) -> Backend:
    if backend is None:
        return "processes" if processes else "threads"
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}",
                          job_id=job.name)
    if processes and backend != "processes":
        raise ConfigError(f"processes=True contradicts backend={backend!r}", job_id=job.name)
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(RAY_MISSING, job_id=job.name)
    return backend


def simulate(
    job: Job,
    *,
    num_sites: int | None = None,
    processes: bool = False,
    backend: Backend | None = None,
    ray_address: str | None = None,
    site_resources: SiteResources | None = None,
    run_dir: Path | None = None,
    listener: RunListener | None = None,
    connect_timeout_s: float = 120.0,
    site_policy: PolicyArg = None,
    data_dirs: Mapping[str, Path] | None = None,
    site_privacy: PrivacyArg = None,
    privacy_dir: Path | None = None,
    tracking: TrackingConfig | None = None,
    run_name: str | None = None,
) -> RunResult:
    """Run ``job`` over simulated sites and return the final model and history.

    Args:
        processes: Same as ``backend="processes"`` (kept for callers from before backends).
        backend: ``threads`` (default), ``processes`` or ``ray``; every backend gives the
            same model for the same seed.
        ray_address: The Ray cluster to run on (``ray`` backend); None: the Ray already
            initialised in this process, else a local Ray started for this run and shut
            down after it.
        site_resources: What each site needs on Ray (CPUs, a fraction of a GPU); the pool
            of actors is as large as the cluster's resources hold. Default: 1 CPU.
        site_policy: The sites' own filter chains: one policy for every site, or one per site
            id (a site not named has none), exactly as a real site's kit declares it.
        data_dirs: Each site's own data folder (site id -> folder), handed to its trainer as
            ``SiteContext.data_dir``, as a real site's kit does.
        site_privacy: The sites' privacy policies (one for all, or one per site id), as a
            real site's kit's ``privacy:`` section.
        privacy_dir: Where the sites keep their privacy ledgers (``privacy_dir/SITE/
            privacy.db``, kept across runs as a real site's are); None: in memory, for this
            run only.
        tracking: Experiment tracking of the run (TensorBoard event files, MLflow), as a
            server kit's ``tracking:`` section; a backend that fails is dropped with a warning.
        run_name: Names the run there (its TensorBoard folder, its MLflow run): by default
            the run folder's name (``run_dir``), else the job's name, the time and a random
            suffix (a run of the same name would go on in the same runs).
    """
    kind = _backend(backend, processes, job)
    if kind != "ray" and (ray_address is not None or site_resources is not None):
        raise ConfigError("ray_address and site_resources are for backend='ray'",
                          job_id=job.name)
    processes = kind == "processes"
    site_ids = simulation_sites(job, num_sites)
    if site_policy is not None and not isinstance(site_policy, SitePolicy):
        _check_sites(site_ids, "site_policy", site_policy, job)
    if site_privacy is not None and not isinstance(site_privacy, PrivacyPolicy):
        _check_sites(site_ids, "site_privacy", site_privacy, job)
    _check_sites(site_ids, "data_dirs", data_dirs, job)
    _check_policies(site_ids, site_policy, site_privacy, job)
    # Simulated sites have no kits: a CA for this run certifies them, so secure and
    # homomorphic aggregation sign and check keys exactly as at real sites.
    identities = ThrowawayIdentities(site_ids)
    if kind == "ray":
        from fedcare.transport.ray import ray_session

        with ray_session(ray_address):
            hosts = _ray_transport(job, site_ids, site_policy, data_dirs, site_privacy,
                                   privacy_dir, identities, site_resources)
            return _run(job, hosts, run_dir, listener, connect_timeout_s, tracking,
                        run_name)
    identity_dir = tempfile.TemporaryDirectory(prefix="fedcare-sim-") if processes else None
    transport: Transport
    try:
        transport = (_process_transport(job, site_ids, site_policy, data_dirs, site_privacy,
                                        privacy_dir, identities, Path(identity_dir.name))
                     if identity_dir is not None
                     else _memory_transport(job, site_ids, site_policy, data_dirs,
                                            site_privacy, privacy_dir, identities))
    except BaseException:
        if identity_dir is not None:
            identity_dir.cleanup()
        raise
    try:
        if processes:
            assert isinstance(transport, PipeTransport)
            _await_processes(job, site_ids, transport, connect_timeout_s)
        return _run(job, transport, run_dir, listener, connect_timeout_s, tracking, run_name)
    finally:
        if identity_dir is not None:
            identity_dir.cleanup()


def _await_processes(job: Job, site_ids: list[str], transport: PipeTransport,
                     connect_timeout_s: float) -> None:
    """Wait for the site processes; too few ready closes them and fails the run."""
    connected = transport.wait_for_sites(len(site_ids), connect_timeout_s)
    missing = [s for s in site_ids if s not in connected]
    if not missing:
        return
    reasons = "; ".join(
        f"site {s}: {transport.failures.get(s, 'not ready in time')}" for s in missing)
    if len(connected) < job.min_sites:
        transport.close()
        raise SiteError(f"site processes failed to start: {reasons}", job_id=job.name)
    log.warning("job %s: going on without %s: %s", job.name, missing, reasons)


def _run(job: Job, transport: Transport, run_dir: Path | None, listener: RunListener | None,
         connect_timeout_s: float, tracking: TrackingConfig | None, run_name: str | None
         ) -> RunResult:
    """The controller's run over ``transport``, which is closed after it."""
    try:
        if tracking is not None and tracking.enabled:
            name = run_name or (Path(run_dir).name if run_dir is not None else
                                f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-"
                                f"{uuid.uuid4().hex[:6]}")
            tracker = Tracker(tracking, name, tags={"job_name": job.name})
            listener = ListenerGroup(*([listener] if listener else []), tracker)
        controller = RoundController(job, transport, run_dir=run_dir, listener=listener,
                                     connect_timeout_s=connect_timeout_s)
        return controller.run()
    finally:
        transport.close()
