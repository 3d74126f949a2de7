"""POC mode: a whole real federation on this machine, as separate processes on 127.0.0.1.

Provisions a throwaway federation (CA, kits), starts the server and every site as their own OS
processes over mutual TLS, and gives an admin handle: how a new user tries a real deployment in
one command. Processes are stopped by pid when the POC ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
import yaml

from fedcare.core.config import JobFile, read_job_file
from fedcare.core.errors import FedcareError
from fedcare.provision import provision
from fedcare.transport.grpc import fedcare_pb2 as pb
from fedcare.transport.grpc import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.grpc.chunks import ADMIN_REPLY_LIMIT
from fedcare.transport.grpc.client import secure_channel
from fedcare.transport.grpc.tls import TlsFiles

_READY = re.compile(r"fedcare server ready on (\S+):(\d+)")


class PocFederation:
    """Server and sites as child processes of this one, plus an admin stub.

    ``import_paths`` are put first on the server's and the sites' import path (PYTHONPATH), e.g.
    the folder of a job file, so that the entry point module beside it is importable there
    wherever this process was started from. ``admins``: more admins than the project admin
    ``admin``, as a project file lists them (``{"name": .., "role": .., "site": ..}``).
    """

    def __init__(self, workdir: Path, site_names: list[str], *, log_dir: Path | None = None,
                 import_paths: Sequence[Path] = (), allowed_jobs: Sequence[str] = (),
                 admins: Sequence[Mapping[str, str]] = ()) -> None:
        """``allowed_jobs``: entry points (besides the built-in jobs) that every kit's code
        policy lists, as each host's operator would after installing them."""
        self.workdir = workdir
        self.allowed_jobs = list(allowed_jobs)
        self.site_names = site_names
        self.admins = [{"org": "POC", **a} for a in admins]
        self.log_dir = log_dir or workdir / "logs"
        self.import_paths = [Path(p).resolve() for p in import_paths]
        self.kits: dict[str, Path] = {}
        self.server: subprocess.Popen[str] | None = None
        self.sites: dict[str, subprocess.Popen[bytes]] = {}
        self.address = ""

    def provision(self) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        project = {
            "name": "poc", "server": {"host": "127.0.0.1", "port": 8443},
            "sites": [{"name": s, "org": f"{s} (POC)"} for s in self.site_names],
            "admins": [{"name": "admin", "org": "POC", "role": "project_admin"}, *self.admins],
        }
        path = self.workdir / "project.yaml"
        path.write_text(yaml.safe_dump(project, sort_keys=False))
        self.kits = provision(path, self.workdir / "kits")
        for name in ["server", *self.site_names]:
            self.edit_kit(name, lambda config: config.setdefault("code", {}).update(
                entry_points=list(self.allowed_jobs)))
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def edit_kit(self, name: str, change: Callable[[dict[str, Any]], object]) -> None:
        """Change a kit's config.yaml as its owner would: ``change`` edits the parsed dict."""
        path = self.kits[name] / "config.yaml"
        config = yaml.safe_load(path.read_text())
        change(config)
        path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fedcare.cli", *args]

    def _env(self, **extra: str) -> dict[str, str]:
        """This process's environment, with ``import_paths`` first on PYTHONPATH."""
        env = {**os.environ, **extra}
        paths = [str(p) for p in self.import_paths]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def start_server(self, timeout_s: float = 30.0, extra_args: Sequence[str] = ()) -> str:
        """Start (or restart) the server; returns host:port once it is accepting connections.

        ``extra_args``: more ``fedcare server start`` options (e.g. ``--no-streamed-fold``).
        """
        port = self.address.rsplit(":", 1)[1] if self.address else "0"
        log = open(self.log_dir / "server.log", "a")  # noqa: SIM115 - owned by the process
        self.server = subprocess.Popen(
            self._command("server", "start", str(self.kits["server"]), "--port", port,
                          *extra_args),
            stdout=subprocess.PIPE, stderr=log, text=True, env=self._env())
        assert self.server.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.server.stdout.readline()
            if not line:
                raise FedcareError(f"POC server exited with code {self.server.wait()}; see "
                                   f"{self.log_dir / 'server.log'}")
            match = _READY.search(line)
            if match:
                self.address = f"{match.group(1)}:{match.group(2)}"
                return self.address
        raise FedcareError(f"POC server not ready within {timeout_s} s")

    def start_sites(self) -> None:
        for name in self.site_names:
            self.start_site(name)

    def start_site(self, name: str, server_address: str | None = None) -> None:
        """Start one site process; ``server_address`` overrides where it dials (e.g. a relay)."""
        log = open(self.log_dir / f"{name}.log", "a")  # noqa: SIM115 - owned by the process
        # All sites share this machine's cores: one math thread each, or OpenMP threads
        # spin-waiting in N processes starve each other (a real site has its own machine).
        env = self._env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        self.sites[name] = subprocess.Popen(
            self._command("site", "start", str(self.kits[name]), "--server",
                          server_address or self.address),
            stdout=log, stderr=subprocess.STDOUT, env=env)

    def admin(self, name: str = "admin") -> pb_grpc.AdminStub:
        kit = self.kits[name]
        tls = TlsFiles((kit / "ca.crt").read_bytes(), (kit / "cert.crt").read_bytes(),
                       (kit / "key.pem").read_bytes())
        return pb_grpc.AdminStub(secure_channel(self.address, tls,
                                                max_receive_bytes=ADMIN_REPLY_LIMIT))

    def wait_for_sites(self, count: int, timeout_s: float = 60.0) -> list[str]:
        stub = self.admin()
        deadline = time.monotonic() + timeout_s
        sites: list[str] = []
        while time.monotonic() < deadline:
            sites = json.loads(stub.Sites(pb.Empty(), timeout=10).json)["connected"]
            if len(sites) >= count:
                return sites
            time.sleep(0.05)
        raise FedcareError(f"only {len(sites)} of {count} POC sites connected: {sites}")

    def kill_server(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown."""
        if self.server is not None:
            os.kill(self.server.pid, signal.SIGKILL)
            self.server.wait()

    def stop(self) -> None:
        procs = [p for p in [self.server, *self.sites.values()] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.server is not None and self.server.stdout is not None:
            self.server.stdout.close()

    def __enter__(self) -> PocFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def poc_command(
    sites: Annotated[int, typer.Option(help="number of sites")] = 2,
    site_names: Annotated[str | None, typer.Option(
        help="comma-separated site names (default site-1..site-N)")] = None,
    job: Annotated[str | None, typer.Option(
        help="job file or module:function to submit and watch")] = None,
    workdir: Annotated[Path, typer.Option(help="POC folder (wiped first)")] = Path("poc"),
) -> None:
    """A real federation on this machine: server and sites as processes over mTLS."""
    from rich.console import Console

    console = Console()
    names = site_names.split(",") if site_names else [f"site-{i}" for i in range(1, sites + 1)]
    started = time.monotonic()
    spec: JobFile | None = None
    import_paths: list[Path] = []
    try:
        if job is not None and Path(job).is_file():
            # The entry point module may sit beside the job file (as with ``simulate``): the
            # server and the sites get its folder on their import path, whatever the cwd.
            spec = read_job_file(Path(job))
            import_paths.append(Path(job).resolve().parent)
        elif job is not None:
            spec = JobFile(entry_point=job)
    except FedcareError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from None
    except ValueError:  # pydantic's ValidationError: neither a job file nor module:function
        console.print(f"[bold red]error:[/] job {job!r} is neither a job file nor "
                      "module:function")
        raise typer.Exit(code=1) from None
    # Here one person is every host's operator, trusting the job they chose to run.
    fed = PocFederation(workdir.resolve(), names, import_paths=import_paths,
                        allowed_jobs=[spec.entry_point] if spec is not None else [])
    try:
        fed.provision()
        address = fed.start_server()
        fed.start_sites()
        fed.wait_for_sites(len(names))
        console.print(f"POC federation up in {time.monotonic() - started:.1f} s: server "
                      f"{address}, sites {', '.join(names)}; logs in {fed.log_dir}")
        admin = fed.kits["admin"]
        if spec is None:
            console.print(f"try: fedcare admin {admin} sites --server {address}\n"
                          "Ctrl-C stops everything.")
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
            return
        job_id = fed.admin().Submit(pb.SubmitRequest(
            entry_point=spec.entry_point, params_json=json.dumps(spec.params)), timeout=60).job_id
        first_round = None
        for update in fed.admin().Watch(pb.JobRef(job_id=job_id)):
            state = json.loads(update.json)
            if first_round is None and state["round_num"] >= 1:
                first_round = time.monotonic() - started
                console.print(f"first round done {first_round:.1f} s after poc started")
            metrics = " ".join(f"{k}={v:.4f}" for k, v in state["eval_metrics"].items())
            console.print(f"{job_id} {state['status']} round {state['round_num']}/"
                          f"{state['num_rounds']} {metrics} {state['error'] or ''}")
    except (FedcareError, grpc.RpcError) as exc:
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        console.print(f"[bold red]error:[/] {detail}")
        raise typer.Exit(code=1) from None
    finally:
        fed.stop()
