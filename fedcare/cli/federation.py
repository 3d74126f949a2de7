"""``fedcare server|site|admin``: the processes of a real federation, started from kits."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fedcare.cli.output import console, fail
from fedcare.core.config import JobFile, read_job_file
from fedcare.core.errors import ConfigError, FedcareError, TransportError
from fedcare.core.lockfile import LockFile
from fedcare.core.text import one_line
from fedcare.provision import Kit, load_kit
from fedcare.provision.revocation import RevocationList
from fedcare.transport.grpc import fedcare_pb2 as pb
from fedcare.transport.grpc import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.grpc.tls import TlsFiles

log = logging.getLogger("fedcare")
server_app = typer.Typer(no_args_is_help=True, help="Run the federation server.")
site_app = typer.Typer(no_args_is_help=True, help="Run a hospital's site process.")
admin_app = typer.Typer(no_args_is_help=True, help="Submit and watch jobs as an admin.")


def _tls(kit: Kit) -> TlsFiles:
    return TlsFiles(kit.read_ca(), kit.read_cert(), kit.read_key())


def _kit(path: Path, kind: str) -> Kit:
    kit = load_kit(path)
    if kit.config.kind != kind:
        raise ConfigError(f"kit {path} is a {kit.config.kind} kit, not a {kind} kit")
    return kit


def _until_signalled() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas before gRPC starts its threads.

    Model-sized buffers freed by one of many gRPC threads otherwise stay mapped in that
    thread's arena; measured on the 25 M-parameter, 8-site benchmark: 6.8x the model size of
    peak server memory without the cap, 4.3x with it.
    """
    import contextlib
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX



@server_app.command("start")
def server_start(
    kit_dir: Annotated[Path, typer.Argument(help="the server's startup kit")],
    port: Annotated[int | None, typer.Option(help="override the kit's port (0: any free)")] = None,
    streamed_fold: Annotated[bool, typer.Option(
        help="fold training uploads into the round as their chunks arrive (default); "
             "--no-streamed-fold receives each whole first (see the README's benchmark)"
    )] = True,
    receive_window_mib: Annotated[int, typer.Option(
        min=0, max=1024,
        help="each site's upload window in MiB (0: gRPC's default); larger speeds up uploads "
             "from distant sites at up to that much server memory per waiting site"
    )] = 0,
) -> None:
    """Start the federation server; it runs submitted jobs until stopped (Ctrl-C, SIGTERM)."""
    from fedcare.server.admin import AdminService
    from fedcare.server.service import FederationServer

    _limit_malloc_arenas()
    try:
        kit = _kit(kit_dir, "server")
        if kit.crl is None:
            raise ConfigError(f"kit {kit_dir}: config.yaml names no crl; a server without a "
                              "revocation list could not refuse a revoked participant")
        workspace = kit.dir / (kit.config.workspace or "workspace")
        workspace.mkdir(parents=True, exist_ok=True)
        revoked = RevocationList(kit.crl, kit.read_ca(), number_file=workspace / "crl-number")
        revoked.revoked()  # a missing or forged CRL stops the start, named
        tracking = kit.config.tracking
        if tracking.tensorboard is not None:  # relative to the kit, as the workspace is
            tracking = tracking.model_copy(
                update={"tensorboard": str(kit.dir / tracking.tensorboard)})
        server = FederationServer(
            _tls(kit), workspace,
            host=kit.config.server_host, port=kit.config.server_port if port is None else port,
            revoked=revoked, streamed_fold=streamed_fold, code=kit.config.code,
            receive_window_bytes=receive_window_mib * 1024 * 1024,
            tracking=tracking, project=kit.config.federation,
            add_services=lambda srv, g: pb_grpc.add_AdminServicer_to_server(AdminService(srv), g))
    except FedcareError as exc:
        raise fail(exc) from None
    stop = _until_signalled()
    server.start()
    # One parseable line for scripts and tests waiting on readiness.
    print(f"fedcare server ready on {kit.config.server_host}:{server.port}", flush=True)
    stop.wait()
    server.stop()


@site_app.command("start")
def site_start(
    kit_dir: Annotated[Path, typer.Argument(help="this site's startup kit")],
    server: Annotated[str | None, typer.Option(help="override host:port of the server")] = None,
) -> None:
    """Connect this site to the server and serve its tasks until stopped."""
    import fedcare
    from fedcare.core.identity import SiteIdentity
    from fedcare.core.site_profile import PolicySummary
    from fedcare.site.ledger import LEDGER_FILE, UploadLedger
    from fedcare.site.privacy_ledger import PRIVACY_LEDGER_FILE
    from fedcare.site.runtime import SiteRuntime
    from fedcare.transport.grpc.client import SiteConnection, fetch_package

    # Measured on bench/transport.py, 25 M parameters x 2 sites, 10 rounds: a site's peak
    # memory above its idle size 4.2x the model without the cap, 3.6x with it, same speed.
    _limit_malloc_arenas()
    try:
        kit = _kit(kit_dir, "site")
        # Held until this process ends: two processes serving one site would take each
        # other's tasks; the server refuses a second one too, but this says so at once.
        lock = LockFile(kit.dir / "site.lock", lambda holder: ConfigError(
            f"site kit {kit.dir} is in use by another process (pid {holder}, lock "
            f"{kit.dir / 'site.lock'}); stop that process first"))
        cfg = kit.config
        data_dir = Path(cfg.data_dir) if cfg.data_dir else None
        address = server or f"{cfg.server_host}:{cfg.server_port}"
        tls = _tls(kit)
        try:  # the privacy ledger is opened, and the policies checked, before anything runs
            runtime = SiteRuntime(
                cfg.name, data_dir=data_dir, code=cfg.code, policy=cfg.policy,
                fetch_package=lambda package: fetch_package(address, tls, package),
                ca_pem=tls.ca, packages_dir=kit.dir / "packages", privacy=cfg.privacy,
                privacy_ledger=kit.dir / PRIVACY_LEDGER_FILE,
                identity=SiteIdentity(cfg.name, tls.cert, tls.key, tls.ca))
        except ConfigError as exc:
            raise ConfigError(f"kit config {kit.dir / 'config.yaml'}: {exc.message}") from None
        ledger = UploadLedger(kit.dir / LEDGER_FILE)  # what left the site: site uploads KIT
        connection = SiteConnection(cfg.name, address, tls, runtime.handle,
                                    on_upload=ledger.record, version=fedcare.__version__,
                                    policy=PolicySummary.of(cfg.policy, cfg.privacy))
    except FedcareError as exc:
        raise fail(exc) from None
    stop = _until_signalled()
    print(f"fedcare site {cfg.name} connecting to {address}", flush=True)
    try:
        connection.run(stop)
    except TransportError as exc:
        raise fail(exc) from None
    finally:
        ledger.close()
        lock.release()
    log.info("site %s stopped by its operator", cfg.name)


def _stub(kit_dir: Path, server: str | None) -> pb_grpc.AdminStub:
    from fedcare.transport.grpc.chunks import ADMIN_REPLY_LIMIT
    from fedcare.transport.grpc.client import secure_channel

    kit = _kit(kit_dir, "admin")
    address = server or f"{kit.config.server_host}:{kit.config.server_port}"
    return pb_grpc.AdminStub(secure_channel(address, _tls(kit),
                                            max_receive_bytes=ADMIN_REPLY_LIMIT))


def _call(kit_dir: Path, server: str | None, method: str, request: Any) -> Any:
    try:
        return getattr(_stub(kit_dir, server), method)(request, timeout=60)
    except grpc.RpcError as exc:
        raise fail(RuntimeError(f"{method.lower()}: {exc.details()}")) from None
    except FedcareError as exc:
        raise fail(exc) from None


ServerOpt = Annotated[str | None, typer.Option(help="override host:port of the server")]


@admin_app.callback()
def admin_main(
    ctx: typer.Context,
    kit_dir: Annotated[Path, typer.Argument(help="your admin startup kit")],
) -> None:
    """fedcare admin KIT COMMAND: act on the federation with your admin kit."""
    ctx.obj = kit_dir


@admin_app.command("submit")
def admin_submit(ctx: typer.Context, job: Annotated[str, typer.Argument(
        help="signed job package (.fcjob, from fedcare job pack), job file "
             "(.yaml/.toml/.json) or module:function")],
        param: Annotated[list[str], typer.Option(help="job parameter key=value")] = [],  # noqa: B006
        server: ServerOpt = None) -> None:
    """Submit a job: a signed package, or a job installed at the server and every site.

    Each runs only where that host's code policy allows it (a package: by its signer or id;
    an installed job: built in or listed); a refusal names the host and the reason.
    """
    from fedcare.cli.main import _parse_params

    if job.endswith(".fcjob"):
        if param:
            raise fail("a package's params are signed with it; pack it again to change them")
        try:
            package = Path(job).read_bytes()
        except OSError as exc:
            raise fail(f"cannot read package {job}: {exc.strerror}") from None
        reply = _call(ctx.obj, server, "Submit", pb.SubmitRequest(package=package))
        print(reply.job_id)
        return
    try:
        spec = read_job_file(Path(job)) if Path(job).is_file() else JobFile(entry_point=job)
        params = {**spec.params, **_parse_params(param)}
    except (FedcareError, ValueError) as exc:
        raise fail(exc) from None
    reply = _call(ctx.obj, server, "Submit", pb.SubmitRequest(
        entry_point=spec.entry_point, params_json=json.dumps(params)))
    print(reply.job_id)


def _text(value: object) -> str:
    return "" if value is None else one_line(value)


def _sites(job: dict[str, Any]) -> str:
    """The job's summary ("finished with 3 of 4 sites", who is missing), or while it runs
    the sites that failed so far, each with its count and last reason."""
    failed = job.get("failed_sites") or {}
    if job.get("summary"):
        return _text(job["summary"])
    return _text("; ".join(f"{site}: {info.get('count')}x, last round {info.get('round_num')} "
                           f"{info.get('kind')}: {info.get('message')}"
                           for site, info in sorted(failed.items())))


def _round(job: dict[str, Any]) -> str:
    return f"{_text(job.get('round_num'))}/{_text(job.get('num_rounds'))}"


def _params(job: dict[str, Any]) -> str:
    return json.dumps(job.get("params") or {}, ensure_ascii=False)  # one line, compact


#: The columns of ``admin status``: header, the cell made from one job dict (as the server
#: sends it), and extra ``Table.add_column`` options. Append here to show more of a job.
JOB_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str], dict[str, Any]]] = [
    ("entry point", lambda j: _text(j.get("entry_point")), {"overflow": "fold"}),
    ("params", _params, {"overflow": "fold"}),
    ("status", lambda j: _text(j.get("status")), {}),
    ("round", _round, {}),
    ("submitted by", lambda j: _text(j.get("submitted_by")), {"overflow": "fold"}),
    ("sites", _sites, {"overflow": "fold"}),
    ("error", lambda j: _text(j.get("error")), {"overflow": "fold"}),
]


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    """The ``admin status`` table of the server's job dicts; keys it does not know are ignored.

    The job id column is as wide as the longest id and never wraps: ids are whole at any
    console width, to be copied into ``watch``, ``abort`` or ``download``.
    """
    table = Table(title="jobs")
    ids = [_text(j.get("job_id")) for j in jobs]
    table.add_column("job", no_wrap=True, overflow="fold",
                     min_width=max((len(i) for i in ids), default=3))
    for header, _, options in JOB_COLUMNS:
        table.add_column(header, **options)
    for job_id, job in zip(ids, jobs, strict=True):
        # Text, not str: brackets in params or an error message are not rich markup.
        table.add_row(Text(job_id), *(Text(cell(job)) for _, cell, _ in JOB_COLUMNS))
    return table


@admin_app.command("status")
def admin_status(ctx: typer.Context, server: ServerOpt = None) -> None:
    """Jobs and their progress: id, entry point, parameters, status, round, who, error."""
    jobs = json.loads(_call(ctx.obj, server, "Status", pb.Empty()).json)["jobs"]
    console.print(jobs_table(jobs))


@admin_app.command("sites")
def admin_sites(ctx: typer.Context, server: ServerOpt = None) -> None:
    """Sites connected now, and each visible site's organisation, connection, last message,
    version and policy (a site admin sees its own site only, a viewer no site by name)."""
    reply = json.loads(_call(ctx.obj, server, "Sites", pb.Empty()).json)
    sites, count = reply["connected"], reply.get("count", len(reply["connected"]))
    shown = ", ".join(sites) or "-"
    console.print(f"{count} site(s) connected: {shown}" if len(sites) == count
                  else f"{count} site(s) connected; yours: {shown}", highlight=False,
                  markup=False)
    presence = reply.get("presence") or {}
    for site, info in sorted(presence.items()):  # only the sites this role may see
        console.print(_site_line(site, info), highlight=False, markup=False, soft_wrap=True)


def _site_line(site: str, info: dict[str, Any]) -> str:
    """One site of ``Sites``' presence for people: organisation, connection, last message,
    and what it stated (version, policy summary)."""
    from fedcare.core.site_profile import describe_policy

    since = info.get("since_s")
    since_text = (time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
                  if isinstance(since, int | float) else "")
    org = f" ({info['org']})" if info.get("org") else ""
    if not info.get("connected"):
        return f"  {site}{org}: not connected{since_text}"
    age = info.get("last_message_age_s")
    age_text = f", last message {age:.0f} s ago" if isinstance(age, int | float) else ""
    policy = describe_policy(info.get("policy")) or "not stated"
    return (f"  {site}{org}: connected{since_text}{age_text}, fedcare "
            f"{info.get('version') or 'unknown'}; policy: {policy}")


@admin_app.command("abort")
def admin_abort(ctx: typer.Context, job_id: str, server: ServerOpt = None) -> None:
    """Stop a job; its last checkpoint stays."""
    console.print(json.loads(_call(ctx.obj, server, "Abort", pb.JobRef(job_id=job_id)).json))


@admin_app.command("download")
def admin_download(ctx: typer.Context, job_id: str, out: Annotated[Path, typer.Option(
        help="folder to write {job_id}-model.npz and {job_id}-metrics.json into "
             "(created if missing)")] = Path("."),
        server: ServerOpt = None) -> None:
    """Download a job's global model and per-round metrics.

    Writes {job_id}-model.npz (the global model, numpy .npz) and
    {job_id}-metrics.json (one record per round) into --out,
    replacing files of those names.
    """
    import numpy as np

    from fedcare.core.message import TrainResult
    from fedcare.server.admin import JOB_ID
    from fedcare.transport.codec import decode

    if not JOB_ID.fullmatch(job_id):  # it names the files written: nothing outside --out
        raise fail(ValueError(f"{one_line(job_id, 80)!r} is not a job id"))
    try:
        stub = _stub(ctx.obj, server)
    except FedcareError as exc:
        raise fail(exc) from None
    try:
        data = b"".join(chunk.data for chunk in stub.Download(pb.JobRef(job_id=job_id)))
        metrics = stub.Metrics(pb.JobRef(job_id=job_id)).json
    except grpc.RpcError as exc:
        raise fail(RuntimeError(f"download: {exc.details()}")) from None
    reply = decode(data)
    assert reply.result is not None and isinstance(reply.result, TrainResult)  # type: ignore[union-attr]
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"{job_id}-model.npz", **dict(reply.result.weights))  # type: ignore[union-attr]
    (out / f"{job_id}-metrics.json").write_text(metrics)
    console.print(f"wrote {out / f'{job_id}-model.npz'} and {out / f'{job_id}-metrics.json'}")


@admin_app.command("watch")
def admin_watch(ctx: typer.Context, job_id: str, server: ServerOpt = None) -> None:
    """Follow a job live until it ends: rounds, metrics and every site failure as it happens.

    Exits 0 when the job finished (the last line says with how many of its sites), 1 when it
    failed or was aborted.
    """
    try:
        stub = _stub(ctx.obj, server)
    except FedcareError as exc:
        raise fail(exc) from None
    state: dict[str, Any] = {}
    try:
        for update in stub.Watch(pb.JobRef(job_id=job_id)):
            state = json.loads(update.json)
            for failure in state.get("new_failures", []):
                console.print(f"[yellow]site {escape(failure['site_id'])} failed[/yellow] round "
                              f"{failure['round_num']} {escape(failure['kind'])}: "
                              f"{escape(failure['message'])}",
                              markup=True, highlight=False)
            metrics = " ".join(f"{k}={v:.4f}" for k, v in state["eval_metrics"].items())
            console.print(f"{state['job_id']} {state['status']} round "
                          f"{state['round_num']}/{state['num_rounds']} {metrics}",
                          highlight=False, markup=False)
            if state.get("summary") and state["status"] in ("queued", "running"):
                console.print(f"  {state['summary']}", highlight=False, markup=False)
    except grpc.RpcError as exc:
        raise fail(RuntimeError(f"watch: {exc.details()}")) from None
    status = state.get("status")
    if status == "finished":
        console.print(f"{job_id}: {state.get('summary') or 'finished'}", highlight=False,
                      markup=False)
        return
    console.print(f"[red]{escape(job_id)}: {status}[/red]: {escape(state.get('error') or '')}",
                  markup=True,
                  highlight=False)
    raise typer.Exit(1)
