"""The dashboard web app: server-rendered pages over one admin's view of the federation.

Every page is built from admin API calls (:class:`~fedcare.dashboard.client.AdminApi`); the
server filters what they return by the admin's role and refuses what the role may not do. The
app shows only the actions the role has, and checks every state-changing request
(:mod:`fedcare.dashboard.security`) before it asks the server.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile

from fedcare.dashboard.charts import learning_curves
from fedcare.dashboard.client import AdminApi, AdminCallError, JsonDict, may
from fedcare.dashboard.heatmap import heatmaps
from fedcare.dashboard.jobs import ago, duration, failures_of, job_sites, site_rows, size, when
from fedcare.dashboard.prometheus import CONTENT_TYPE, exposition
from fedcare.dashboard.security import COOKIE, Gate, Session, csrf_matches
from fedcare.server.admin import JOB_ID

HERE = Path(__file__).resolve().parent
#: The largest job package the submit form takes (the CLI has no limit; a form should).
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
#: What a submit form may carry besides the package (its CSRF token, part headers).
FORM_OVERHEAD_BYTES = 64 * 1024
#: What a live update sends of an ``Admin.Watch`` document.
LIVE_FIELDS = ("job_id", "status", "round_num", "num_rounds", "eval_metrics", "new_failures",
               "summary", "error")


class Refused(Exception):
    """A request the dashboard itself turns down, with the HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def create_app(api: AdminApi, gate: Gate) -> FastAPI:
    """The app for one admin (``api``) behind one start-up token (``gate``)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(may=lambda action: may(api.role, action), when=when,
                                 size=size, ago=ago)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        session: Session | None = getattr(request.state, "session", None)
        return templates.TemplateResponse(request, name, {
            "admin": api.name, "role": api.role, "server": api.server,
            "csrf": session.csrf_token if session else "", **context}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if not gate.host_allowed(request.headers.get("host")):
            return Response("unknown host; open the address the dashboard printed",
                            status_code=400, media_type="text/plain")
        if request.url.path.startswith("/static/"):
            return await call_next(request)
        token = request.query_params.get("token")
        if token is not None and request.method == "GET":
            if not gate.token_matches(token):
                return Response("wrong token", status_code=403, media_type="text/plain")
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, gate.open_session().session_id, httponly=True,
                                samesite="strict", path="/")
            return response
        session = gate.session(request.cookies.get(COOKIE))
        bearer = (request.url.path == "/metrics"
                  and gate.bearer_matches(request.headers.get("authorization")))
        if session is None and not bearer:
            return Response("not signed in: open the link with ?token=... that "
                            "`fedcare dashboard` printed", status_code=401,
                            media_type="text/plain")
        request.state.session = session
        return await call_next(request)

    @app.exception_handler(AdminCallError)
    async def admin_error(request: Request, exc: AdminCallError) -> Response:
        return page(request, "error.html", exc.http_status, message=str(exc))

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        return page(request, "error.html", exc.status, message=exc.reason)

    async def call(function: Callable[..., Any], *args: object) -> Any:
        """An admin call, off the event loop (gRPC blocks)."""
        return await anyio.to_thread.run_sync(function, *args)

    def job_id_of(job_id: str) -> str:
        if not JOB_ID.fullmatch(job_id):
            raise Refused(400, f"{job_id[:80]!r} is not a job id")
        return job_id

    async def checked_form(request: Request, action: str) -> Mapping[str, Any]:
        """The form of a POST that may do ``action``; refused unless it comes from a page of
        this session (Origin, CSRF token) and the role has the action."""
        if not gate.origin_allowed(request.headers.get("origin"), request.headers.get("referer")):
            raise Refused(403, "refused: the request did not come from a dashboard page")
        form = await request.form(max_part_size=MAX_PACKAGE_BYTES)
        session = request.state.session
        sent = form.get("csrf")
        if session is None or not csrf_matches(session, sent if isinstance(sent, str) else None):
            raise Refused(403, "refused: missing or wrong CSRF token; reload the page")
        if not may(api.role, action):
            raise Refused(403, f"refused: role {api.role or 'none'} may not "
                               f"{action.lower()}")
        return form

    async def find_job(job_id: str) -> JsonDict:
        jobs: list[JsonDict] = await call(api.status)
        job = next((j for j in jobs if j.get("job_id") == job_id), None)
        if job is None:
            raise Refused(404, f"no job {job_id}")
        return job

    @app.get("/", response_class=HTMLResponse)
    async def federation(request: Request) -> Response:
        sites: JsonDict = await call(api.sites)
        jobs: list[JsonDict] = await call(api.status)
        states: dict[str, int] = {}
        for job in jobs:
            states[str(job.get("status"))] = states.get(str(job.get("status")), 0) + 1
        return page(request, "federation.html", sites=site_rows(sites, jobs),
                    count=sites.get("count", 0), states=states, checked=time.time(),
                    received_bytes=sites.get("received_bytes"),
                    sent_bytes=sites.get("sent_bytes"))

    @app.get("/jobs", response_class=HTMLResponse)
    async def jobs_page(request: Request) -> Response:
        jobs: list[JsonDict] = await call(api.status)
        jobs.sort(key=lambda j: float(j.get("created_s") or 0), reverse=True)  # type: ignore[arg-type]
        return page(request, "jobs.html", jobs=jobs, json=json)

    @app.post("/jobs")
    async def submit(request: Request) -> Response:
        too_large = Refused(413, f"a job package over {size(MAX_PACKAGE_BYTES)} is not taken "
                                 "here; submit it with `fedcare admin KIT submit`")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_PACKAGE_BYTES + FORM_OVERHEAD_BYTES:
            raise too_large  # before the body is spooled to disk
        form = await checked_form(request, "Submit")
        upload = form.get("package")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise Refused(400, "choose a signed job package (.fcjob) to submit")
        package = await upload.read(MAX_PACKAGE_BYTES + 1)  # max_part_size bounds fields only
        if len(package) > MAX_PACKAGE_BYTES:
            raise too_large
        job_id = await call(api.submit_package, package)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job_page(request: Request, job_id: str) -> Response:
        job = await find_job(job_id_of(job_id))
        rounds: list[JsonDict] = await call(api.metrics, job_id)
        matrix = await call(api.result, job_id, "cross_site")
        return page(request, "job.html", job=job, rounds=rounds, json=json,
                    charts=learning_curves(rounds), failures=failures_of(job, rounds),
                    sites=job_sites(job, rounds), took_s=duration(rounds),
                    tables=heatmaps(matrix) if matrix else [],
                    live=job.get("status") in ("queued", "running"))

    @app.get("/jobs/{job_id}/charts", response_class=HTMLResponse)
    async def charts_fragment(request: Request, job_id: str) -> Response:
        rounds: list[JsonDict] = await call(api.metrics, job_id_of(job_id))
        return page(request, "_charts.html", charts=learning_curves(rounds))

    @app.get("/jobs/{job_id}/events")
    async def events(request: Request, job_id: str) -> Response:
        stream = api.watch(job_id_of(job_id))

        async def updates() -> AsyncIterator[str]:
            watched = iter(stream)
            try:
                while True:
                    update = await anyio.to_thread.run_sync(next, watched, None,
                                                            abandon_on_cancel=True)
                    if update is None:
                        break
                    shown = {k: update.get(k) for k in LIVE_FIELDS}
                    yield f"event: update\ndata: {json.dumps(shown)}\n\n"
                yield "event: end\ndata: {}\n\n"
            except AdminCallError as exc:
                yield f"event: failure\ndata: {json.dumps({'message': str(exc)})}\n\n"
            finally:
                stream.cancel()

        return StreamingResponse(updates(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @app.post("/jobs/{job_id}/abort")
    async def abort(request: Request, job_id: str) -> Response:
        await checked_form(request, "Abort")
        await call(api.abort, job_id_of(job_id))
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.get("/jobs/{job_id}/model")
    async def model(request: Request, job_id: str) -> Response:
        if not may(api.role, "Download"):
            raise Refused(403, f"role {api.role or 'none'} may not download models")
        data: bytes = await call(api.model_npz, job_id_of(job_id))
        return Response(data, media_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{job_id}-model.npz"'})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(await call(exposition, api), media_type=CONTENT_TYPE)

    @app.middleware("http")
    async def headers(request: Request,
                      call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; style-src 'self'; script-src 'self'; "
                                    "img-src 'self' data:; frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    return app
