"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
local federation: a server, three site processes, and ``fedcare dashboard`` processes for the
project admin and for a viewer. Screenshots of every page go to ``screenshots/`` (ignored by
git)."""

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("the browser tests need Debian's chromium at /usr/bin/chromium "
                "(apt-get install chromium; .ci/run installs it)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="the browser tests need playwright (dev extra)")
pytest.importorskip("fastapi", reason="the dashboard needs the dashboard extra")

from fakeadmin import DONE, FakeAdmin  # noqa: E402
from pocfed import submit_toy, toy_federation, until  # noqa: E402

import fedcare  # noqa: E402
from fedcare.transport.grpc import fedcare_pb2 as pb  # noqa: E402

SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SITES = ["site-0", "site-1", "site-2"]
_OPEN = re.compile(r"open (http://127\.0\.0\.1:(\d+)/\?token=\S+)")
#: site-2 fails every round; the job goes on with the other two.
FAILING = {"modes": {"site-2": "raise"}, "num_sites": 3, "min_sites": 2}


@contextlib.contextmanager
def dashboard(fed, kit):
    """``fedcare dashboard KIT`` as its own process; its sign-in URL. Stopped by pid."""
    log = open(fed.log_dir / f"dashboard-{kit}.log", "a")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedcare.cli", "dashboard", str(fed.kits[kit]), "--port", "0",
         "--server", fed.address], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"dashboard exited ({proc.wait()}); see {log.name}"
            if match := _OPEN.search(line):
                yield match.group(1)
                break
        else:
            raise AssertionError("the dashboard printed no URL within 30 s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()
    assert proc.poll() is not None


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, browser):
    """One federation, the admin's and a viewer's dashboards, one browser, for the module."""
    with pytest.MonkeyPatch.context() as monkeypatch, \
            toy_federation(tmp_path_factory.mktemp("dash"), monkeypatch, SITES,
                           admins=[{"name": "vic", "role": "viewer"}]) as fed, \
            dashboard(fed, "admin") as admin_url, dashboard(fed, "vic") as viewer_url:
        yield fed, admin_url, viewer_url, browser


@contextlib.contextmanager
def served(api):
    """The dashboard app for ``api`` on uvicorn in a thread of this process; its sign-in URL."""
    import uvicorn

    from fedcare.dashboard import Gate, create_app
    from fedcare.dashboard.serve import bind, url

    sock = bind(0)
    port = sock.getsockname()[1]
    gate = Gate([f"127.0.0.1:{port}"])
    server = uvicorn.Server(uvicorn.Config(create_app(api, gate), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        until(lambda: server.started, 10, "uvicorn to start")
        yield url(port, gate.token)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_the_cross_site_matrix_is_a_heatmap_table(browser):
    """Drawn from a fake admin API's matrix: a POC job with cross-site validation needs the
    heart job's torch sites, too slow for this module's budget."""
    with served(FakeAdmin()) as link:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(link)
        page.goto(f"{link.split('?')[0]}jobs/{DONE}")
        table = page.locator("table.heatmap")
        assert table.locator("caption").inner_text() == "mse"
        empty = table.locator("td.empty")
        assert empty.inner_text() == "n/a [1]"  # and why, readable without hovering:
        assert page.locator("ol.notes li").all_inner_texts() == ["site-1 refused the task"]
        dark, light = table.locator("td.h9"), table.locator("td.h0")
        assert dark.inner_text() == "0.3" and light.inner_text() == "0.05"
        assert dark.evaluate("e => getComputedStyle(e).backgroundColor") != light.evaluate(
            "e => getComputedStyle(e).backgroundColor")
        shot(page, "job-cross-site")
        page.close()


def shot(page, name):
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def status(fed, job_id):
    jobs = json.loads(fed.admin().Status(pb.Empty(), timeout=10).json)["jobs"]
    return next(j for j in jobs if j["job_id"] == job_id)["status"]


def end(fed, job_id):
    """Abort the job if it still runs (the server runs one job at a time), wait for its end."""
    if status(fed, job_id) in ("queued", "running"):
        fed.admin().Abort(pb.JobRef(job_id=job_id), timeout=10)
    until(lambda: status(fed, job_id) not in ("queued", "running"), 30, f"{job_id} to end")


def test_pages_load_and_a_job_advances_live_with_its_failed_site(setup):
    fed, admin_url, _, browser = setup
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(admin_url)
    assert "token=" not in page.url  # swapped for the session cookie
    for site in SITES:
        assert page.locator("#sites").get_by_text(site, exact=True).is_visible()
    assert page.locator("#site-count").inner_text().startswith("3 site(s) connected")
    assert page.locator("#sites tbody tr", has_text="UTC").count() == 3  # connected since
    # what each site stated when it connected, its organisation, its last message
    assert page.locator("#sites td.version", has_text=fedcare.__version__).count() == 3
    assert page.locator("#sites td.policy", has_text="outbound: none").count() == 3
    assert page.locator("#sites td.org", has_text="(POC)").count() == 3
    assert page.locator("#sites td.last-message", has_text="ago").count() == 3
    shot(page, "federation")

    job_id = submit_toy(fed, {**FAILING, "num_rounds": 8, "train_delay_s": 0.4})
    try:
        page.get_by_role("link", name="Jobs", exact=True).click()
        assert page.get_by_role("link", name=job_id).is_visible()  # the whole id
        shot(page, "jobs")

        page.get_by_role("link", name=job_id).click()
        page.evaluate("window.notReloaded = true")
        first = int(page.locator("#round-num").inner_text())
        page.wait_for_function(  # a function, not a string: the page's CSP forbids eval
            "(first) => Number(document.getElementById('round-num').textContent) > first",
            arg=first, timeout=20_000)
        assert page.evaluate("window.notReloaded") is True  # updated in place, not reloaded
        assert page.locator("#abort").is_visible()  # a project admin may abort
        failed = page.locator("#failures tbody tr", has_text="site-2")
        failed.first.wait_for(timeout=20_000)
        assert "disk full while reading images" in failed.first.inner_text()
        page.locator("#charts svg").first.wait_for(timeout=20_000)
        shot(page, "job-running")

        page.locator("#live-state", has_text="ended").wait_for(timeout=30_000)
        assert page.locator("#status").inner_text() == "finished"
        assert page.locator("#abort").count() == 0  # gone once the job ended
        rows = page.locator("#failures tbody tr").all_inner_texts()
        assert len(rows) == len(set(rows)) >= 1, rows  # each failure once, live or not
        page.reload()
        assert page.locator("#charts figure").count() >= 2  # eval mse and train loss
        assert "site-0" in page.locator("#charts").inner_text()  # a line per site
        with page.expect_download() as download:
            page.locator("#download").click()
        assert download.value.suggested_filename == f"{job_id}-model.npz"
        shot(page, "job-finished")

        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"the page is {width} px wide at phone width"
        shot(page, "job-phone")
        page.goto(admin_url.split("?")[0])
        shot(page, "federation-phone")
    finally:
        end(fed, job_id)
        page.close()


def test_keyboard_reaches_the_navigation_with_a_visible_focus(setup):
    _, admin_url, _, browser = setup
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(admin_url)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Federation"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/jobs$"))
    page.close()


def test_a_viewer_has_no_abort_and_forged_aborts_are_refused(setup):
    fed, admin_url, viewer_url, browser = setup
    job_id = submit_toy(fed, {**FAILING, "num_rounds": 60, "train_delay_s": 0.3})
    viewer = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        viewer.goto(viewer_url)
        viewer.goto(f"{viewer_url.split('?')[0]}jobs/{job_id}")
        assert viewer.locator("#role").inner_text() == "viewer"
        assert viewer.locator("#abort").count() == 0
        assert viewer.locator("#failures").is_visible()
        shot(viewer, "job-viewer")
        # From the viewer's own page (same origin, its cookie): refused by the dashboard.
        refused = viewer.evaluate(f"""async () => {{
            const form = new FormData(); form.append('csrf', 'forged');
            const r = await fetch('/jobs/{job_id}/abort', {{method: 'POST', body: form}});
            return [r.status, await r.text()];
        }}""")
        assert refused[0] == 403 and "refused" in refused[1], refused

        # A page of another origin posting a form to the admin's dashboard: the Strict
        # cookie does not go with it, and its origin is not the dashboard's.
        admin = browser.new_context().new_page()
        admin.goto(admin_url)  # the admin is signed in, in this browser context
        base = admin_url.split("?")[0]
        admin.context.route("http://evil.test/", lambda route: route.fulfill(
            content_type="text/html",
            body=f'<form id="f" method="post" action="{base}jobs/{job_id}/abort">'
                 '<input name="csrf" value="x"></form>'
                 '<script>document.getElementById("f").submit()</script>'))
        with admin.expect_response(re.compile(r"/abort$")) as answer:
            admin.goto("http://evil.test/")
        assert answer.value.status in (401, 403)
        assert status(fed, job_id) == "running"  # nothing was aborted

        # The admin's submit form reaches the server, whose refusal of a forged package shows.
        admin.goto(f"{base}jobs")
        admin.locator("#package").set_input_files(files=[{
            "name": "forged.fcjob", "mimeType": "application/octet-stream",
            "buffer": b"not a signed package"}])
        admin.get_by_role("button", name="Submit", exact=True).click()
        assert "job refused" in admin.locator("#error").inner_text()
        shot(admin, "submit-refused")

        # The admin's own button, from the admin's page: aborted.
        admin.goto(f"{base}jobs/{job_id}")
        admin.locator("#abort").click()
        admin.wait_for_url(re.compile(f"/jobs/{job_id}$"))
        until(lambda: status(fed, job_id) == "aborted", 20, f"{job_id} aborted")
        admin.context.close()
    finally:
        end(fed, job_id)
        viewer.close()


def test_a_site_that_goes_away_shows_as_not_connected_since_then(setup):
    fed, admin_url, _, browser = setup  # the module's last test: it stops a site
    fed.sites["site-2"].send_signal(signal.SIGTERM)
    fed.sites["site-2"].wait(timeout=10)
    until(lambda: "site-2" not in json.loads(fed.admin().Sites(pb.Empty(), timeout=10).json)[
        "connected"], 20, "site-2 to be gone")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(admin_url)
    row = page.locator("#sites tbody tr", has_text="site-2")
    assert "not connected" in row.inner_text() and "UTC" in row.inner_text()
    assert page.locator("#site-count").inner_text().startswith("2 site(s) connected")
    traffic = page.locator("#traffic").inner_text()
    assert re.search(r"\d+\.\d [kMG]B in, \d+\.\d [kMG]B out", traffic), traffic
    shot(page, "federation-site-gone")
    page.close()
