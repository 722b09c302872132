"""The dashboard in a real headless Chromium (Debian's), driven by Playwright: what an admin
sees and clicks, over the real service (cheroot serving create_app, worker threads running),
real slapd and the Jira emulator. Screenshots are kept in $AVATAR_SYNC_ARTIFACTS
(default test-artifacts/)."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from cheroot import wsgi

from app import create_app, job_run
from app.worker import WorkerPool
from tests import photos
from tests.helpers import make_settings, slapd_directory

try:
    from playwright.sync_api import expect
except ImportError:  # skipped below
    expect = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADMIN = "browser-admin-token-0123456789"
ARTIFACTS = Path(os.environ.get("AVATAR_SYNC_ARTIFACTS", "test-artifacts"))
# As the machine's notes advise: without the background-networking flags Chromium keeps trying
# to reach Google's hosts, which this closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # a local machine without the test extra
        sync_playwright = None
    if sync_playwright is None or not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Playwright and Debian's chromium are required in CI (.ci/run installs them)")
        pytest.skip("playwright or chromium not installed")
    return sync_playwright


class Served:
    """A WSGI app on a loopback port, in background threads."""

    def __init__(self, app):
        self.server = wsgi.Server(("127.0.0.1", 0), app, numthreads=8, shutdown_timeout=1)
        self.server.expiration_interval = 0.05
        self.server.prepare()
        self.url = f"http://127.0.0.1:{self.server.bind_addr[1]}"
        threading.Thread(target=self.server.serve, daemon=True).start()

    def stop(self):
        self.server.stop()


@pytest.fixture
def service(tmp_path, slapd, ldap_ou, jira):
    for name in ("alice", "bob", "carol"):
        slapd.add_user(ldap_ou, name, jpeg_photo=photos.photo())
        jira.state.add_user(name)
    slapd.add_user(ldap_ou, "nophoto")               # a problem: no_photo
    jira.state.add_user("nophoto")
    slapd.add_user(ldap_ou, "ghost", jpeg_photo=photos.photo())  # a problem: not_in_jira
    settings = make_settings(tmp_path, jira.url, [slapd_directory(slapd, ldap_ou)],
                             webhook={"secret": "browser-webhook-secret-0123"}, admin={"token": ADMIN})
    app = create_app(settings)
    services = app.extensions["avatar_sync"]
    assert job_run.sync_now(services, "alice").outcome == "updated"  # a picture to show
    pool = WorkerPool(services, 2, 0.2).start()
    served = Served(app)
    yield served, services
    served.stop()
    pool.stop()
    services.close()


def test_dashboard_in_a_real_browser(service, jira):
    served, services = service
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with _playwright()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(http_credentials={"username": "admin", "password": ADMIN,
                                                            "origin": served.url})
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(served.url + "/")
            page.wait_for_selector("#checks li.check")
            assert page.locator("#status").inner_text() == "ready"
            assert "crop center · prefer first · photo removed: keep · no photo server" in page.locator(
                "#controls").inner_text()
            assert page.locator("#checks .light.ok").count() == 3  # the directory, Jira, the database
            expect(page.locator("#q-wait")).to_be_hidden()  # workers run: no login waits for one

            # a dry run: the progress bar reaches 100 % and the problems fill in
            writes = jira.state.writes()
            page.click("#start-dry-run")
            expect(page.locator("#sweep-status")).to_have_text("finished", timeout=30_000)
            expect(page.locator("#sweep-percent")).to_have_text("100 %")
            total = services.sweeps.latest()[0]["total"]
            expect(page.locator("#sweep-progress")).to_have_js_property("value", total)
            expect(page.locator("#sweep-progress")).to_have_js_property("max", total)
            page.wait_for_selector("#problems tr.problem")
            problems = page.locator("#problems tbody").inner_text()
            assert "nophoto" in problems and "no_photo" in problems and "ghost" in problems
            page.fill("#problem-filter", "no_photo")
            assert page.locator("#problems tr.problem").count() == 1
            assert jira.state.writes() == writes  # a dry run writes nothing
            page.screenshot(path=str(ARTIFACTS / "dashboard-after-dry-run.png"), full_page=True)

            # find a user: the thumbnail of the picture in Jira loads through the service
            page.fill("#search-name", "ali")
            page.click("#search button")
            page.wait_for_selector("#users tr.user")
            thumb = page.locator("#users tr.user img.thumb").first  # the picture in Jira
            expect(thumb).to_have_js_property("complete", True)
            assert thumb.evaluate("img => img.naturalWidth") > 0  # loaded, not a broken image
            assert "updated" in page.locator("#users tr.user").inner_text()
            next_upload = page.locator("#users tr.user img.thumb").nth(1)  # the preview, beside Jira's
            expect(next_upload).to_have_js_property("complete", True)
            assert next_upload.evaluate("img => img.naturalWidth") == 200  # the 300x200 photo made square
            page.locator("#users tr.user button", has_text="force").click()
            expect(page.locator("#answer")).to_have_text("alice: updated (forced)")
            # opted out from the dashboard: kept apart from syncs until let back in
            page.locator("#users tr.user button.exclusion").click()
            expect(page.locator("#answer")).to_have_text("alice: excluded (opted out by an admin)")
            expect(page.locator("#users tr.user td.excluded")).to_have_text("opted out")
            assert job_run.sync_now(services, "alice", force=True).outcome == "excluded"
            page.locator("#users tr.user button.exclusion", has_text="include again").click()
            expect(page.locator("#answer")).to_have_text("alice: not excluded")
            page.screenshot(path=str(ARTIFACTS / "dashboard-user.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()


def test_a_forged_cross_site_form_is_refused(service, jira):
    """A page on another origin posts a form at the service; the browser adds the admin's
    Basic credentials on its own. Nothing may happen."""
    served, services = service
    writes = jira.state.writes()
    target = served.url + "/admin/sweeps"
    attacker = Served(lambda environ, start_response: (
        start_response("200 OK", [("Content-Type", "text/html")]),
        [f'<form id="f" method="post" action="{target}" enctype="text/plain">'
         f'<input name=\'{{"dry_run": false, "x": "\' value=\'"}}\'></form>'
         '<script>document.getElementById("f").submit()</script>'.encode()])[1])
    try:
        with _playwright()() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                context = browser.new_context(http_credentials={"username": "admin", "password": ADMIN})
                page = context.new_page()
                with page.expect_response(target) as answer:
                    page.goto(attacker.url + "/")
                assert answer.value.status == 403
                assert "cross-site request refused" in page.content()  # authenticated, then refused
            finally:
                browser.close()
    finally:
        attacker.stop()
    assert services.sweeps.latest() == [] and jira.state.writes() == writes
