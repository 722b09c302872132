"""The HTTP doors (webhook, admin, health) through Flask's test client and the Jira emulator,
over a directory in memory (tests/memory_directory.py: no slapd needed) unless a test asks for
real slapd; the queue is drained inline with WorkerPool.run_once()."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

import pytest

from app import create_app
from app.config import ConfigError
from app.worker import WorkerPool
from tests import photos
from tests.helpers import JIRA_USER, make_settings, slapd_directory
from tests.memory_directory import MemoryDirectory
from tests.rig.ports import free_port

SECRET = "hook-secret"
ADMIN = "admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def signed(payload: dict, secret: str = SECRET) -> tuple[bytes, dict]:
    body = json.dumps(payload).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"X-Hub-Signature": f"sha256={digest}", "Content-Type": "application/json"}


def login(name: str, event: str = "user_login") -> dict:
    return {"webhookEvent": event, "timestamp": 1700000000000, "user": {"name": name, "key": "JIRAUSER1"}}


# a directory the settings accept; the service then gets the memory directory in its place
MEMORY = {"name": "memory", "urls": ["ldap://memory.invalid"], "base_dn": "dc=memory"}


@pytest.fixture
def memory():
    return MemoryDirectory()


@pytest.fixture
def service(tmp_path, jira, memory):
    """Builds the app; ``directories`` (settings of real ones) instead of the memory directory."""
    def build(directories=None, **extra):
        extra = {"webhook": {"secret": SECRET}, "admin": {"token": ADMIN}, **extra}
        settings = make_settings(tmp_path, jira.url, directories or [MEMORY], **extra)
        app = create_app(settings)
        app.services = app.extensions["avatar_sync"]
        if directories is None:  # the services' one list: the syncer, sweeps and readiness see it
            app.services.directories[:] = [memory]
        app.pool = WorkerPool(app.services)
        app.http = app.test_client()
        return app
    return build


@pytest.fixture
def web(service, memory, jira):
    app = service()
    memory.add("jdoe", photos.photo())
    jira.state.add_user("jdoe")
    yield app
    app.services.close()


def post(app, payload, **kw):
    body, headers = signed(payload)
    return app.http.post("/webhooks/jira", data=body, headers={**headers, **kw.pop("headers", {})}, **kw)


def test_signed_login_is_queued_then_synced(web, jira):
    r = post(web, login("jdoe"))
    assert r.status_code == 202 and r.get_json() == {"status": "queued", "user": "jdoe"}
    assert web.services.queue.job_for("jdoe")["state"] == "pending"
    assert web.pool.run_once()
    assert jira.state.selected_avatar("jdoe").owner is not None
    assert web.services.queue.job_for("jdoe") is None


@pytest.mark.parametrize("headers", [{}, {"X-Hub-Signature": "sha256=" + "0" * 64},
                                     {"X-Hub-Signature": "sha1=abc"}, {"Authorization": "Bearer wrong"}])
def test_bad_or_missing_signature_is_401_and_nothing_queued(web, headers):
    body = json.dumps(login("jdoe")).encode()
    r = web.http.post("/webhooks/jira", data=body, headers={"Content-Type": "application/json", **headers})
    assert r.status_code == 401
    assert web.services.queue.job_for("jdoe") is None


def test_signature_over_other_bytes_is_refused(web):
    body, headers = signed(login("jdoe"))
    r = web.http.post("/webhooks/jira", data=body.replace(b"jdoe", b"root"), headers=headers)
    assert r.status_code == 401


@pytest.mark.parametrize("how", ["query", "bearer"])
def test_token_for_senders_that_cannot_sign(web, how):
    body = json.dumps(login("jdoe")).encode()
    if how == "query":
        r = web.http.post(f"/webhooks/jira?token={SECRET}", data=body, content_type="application/json")
    else:
        r = web.http.post("/webhooks/jira", data=body, content_type="application/json",
                          headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 202


def test_bad_bodies(web):
    big = {"user": {"name": "jdoe"}, "pad": "x" * 70_000}
    assert post(web, big).status_code == 413
    body = b"this is not json"
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    r = web.http.post("/webhooks/jira", data=body, headers={"X-Hub-Signature": f"sha256={digest}"})
    assert r.status_code == 415
    r = post(web, {"webhookEvent": "user_login", "user": {"key": "JIRAUSER1"}})
    assert r.status_code == 400 and "user.name" in r.get_json()["error"]
    assert post(web, {"webhookEvent": "user_login"}).status_code == 400
    assert web.services.queue.counts() == {}


def test_webhook_door_answers_other_methods_odd_signatures_and_its_own_failures(web, monkeypatch, caplog):
    r = web.http.get("/webhooks/jira")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    body = json.dumps(login("jdoe")).encode()
    r = web.http.post("/webhooks/jira", data=body, headers={"X-Hub-Signature": "sha256=caf\u00e9" + "0" * 60})
    assert r.status_code == 401  # not a 500 from comparing non-ASCII text
    assert web.http.get("/webhooks/jira/x").status_code == 404  # other paths are Flask's

    def database_down(*a, **kw):
        raise RuntimeError("database is down")
    monkeypatch.setattr(web.services.queue, "enqueue", database_down)
    r = post(web, login("jdoe"))
    assert r.status_code == 500 and r.get_json()["status"] == "error"
    assert "database is down" not in r.get_data(as_text=True)  # details go to the log only
    assert "database is down" in caplog.text


@pytest.mark.parametrize("proxies, logged", [(1, "203.0.113.7"), (0, "127.0.0.1")])
def test_client_address_comes_from_x_forwarded_for_only_behind_trusted_proxies(service, caplog, proxies, logged):
    app = service(trusted_proxies=proxies)
    body = json.dumps(login("jdoe")).encode()
    r = app.http.post("/webhooks/jira", data=body, environ_base={"REMOTE_ADDR": "127.0.0.1"},
                      headers={"X-Forwarded-For": "203.0.113.7", "X-Hub-Signature": "sha256=" + "0" * 64})
    assert r.status_code == 401
    refusal = next(rec.getMessage() for rec in caplog.records if "webhook refused" in rec.getMessage())
    assert refusal.endswith(f"from {logged}: bad or missing signature/token")
    app.services.close()


def test_duplicate_delivery_is_not_queued_twice(web):
    headers = {"X-Atlassian-Webhook-Identifier": "delivery-1"}
    assert post(web, login("jdoe"), headers=headers).status_code == 202
    web.pool.run_once()
    r = post(web, login("jdoe", "user_updated"), headers=headers)
    assert r.status_code == 200 and r.get_json()["status"] == "ignored"
    assert web.services.queue.job_for("jdoe") is None


def test_login_storm_is_debounced_without_database_writes(web, monkeypatch):
    post(web, login("jdoe"))
    web.pool.run_once()
    monkeypatch.setattr(web.services.store, "transaction",
                        lambda **_: pytest.fail("database write on a debounced login"))
    for _ in range(5):
        r = post(web, login("jdoe"))
        assert r.status_code == 200 and r.get_json()["status"] == "debounced"


def test_debounce_reads_the_stored_time_in_a_fresh_process(web, service):
    post(web, login("jdoe"))
    web.pool.run_once()
    other_process = service()  # a new cache, same database
    assert post(other_process, login("jdoe")).get_json()["status"] == "debounced"
    # user_updated may carry a new photo: not debounced
    assert post(other_process, login("jdoe", "user_updated")).status_code == 202


def test_service_account_is_ignored_and_disabled_is_answered(web, service):
    r = post(web, login(JIRA_USER))
    assert r.status_code == 200 and r.get_json()["status"] == "ignored"
    disabled = service(photo_attributes=[])
    r = post(disabled, login("jdoe"))
    assert r.status_code == 200 and r.get_json()["status"] == "disabled"
    assert disabled.http.get("/readyz").get_json()["status"] == "disabled"
    assert web.services.queue.counts() == {}


def test_user_deleted_forgets_the_user(web):
    post(web, login("jdoe"))
    web.pool.run_once()
    assert web.services.store.get("jdoe") is not None
    assert post(web, login("jdoe", "user_deleted")).status_code == 200
    assert web.services.store.get("jdoe") is None


def test_refuses_to_start_without_a_webhook_secret(tmp_path, jira):
    settings = make_settings(tmp_path, jira.url, [MEMORY])
    with pytest.raises(ConfigError, match="webhook.secret"):
        create_app(settings)
    open_settings = make_settings(tmp_path, jira.url, [MEMORY], webhook={"allow_unauthenticated": True})
    app = create_app(open_settings)
    r = app.test_client().post("/webhooks/jira", json=login("jdoe"))
    assert r.status_code == 202


def test_admin_sync_and_user_view(web, jira):
    r = web.http.post("/admin/users/jdoe/sync", json={"force": False})
    assert r.status_code == 401
    r = web.http.post("/admin/users/jdoe/sync", json={"force": False}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = web.http.post("/admin/users/jdoe/sync", json={"force": False}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and r.get_json()["outcome"] == "updated"
    basic = base64.b64encode(f"admin:{ADMIN}".encode()).decode()
    r = web.http.get("/admin/users/jdoe", headers={"Authorization": f"Basic {basic}"})
    body = r.get_json()
    assert r.status_code == 200 and body["state"]["last_outcome"] == "updated"
    assert body["state"]["avatar_id"] == jira.state.selected_avatar("jdoe").id
    r = web.http.post("/admin/users/jdoe/sync", json={"force": "yes"}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 400
    assert web.http.get("/admin/users/nobody", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 404


def test_failed_job_is_visible_through_the_admin_api(web, jira):
    jira.state.inject(503, seconds=60)
    web.services.jira._sleep = lambda seconds: None  # the retries, without their backoff
    post(web, login("jdoe"))
    web.pool.run_once()
    body = web.http.get("/admin/users/jdoe", headers={"Authorization": f"Bearer {ADMIN}"}).get_json()
    assert body["queue"]["state"] == "pending" and body["queue"]["attempts"] == 1
    assert "503" in body["queue"]["last_error"] and body["state"]["last_outcome"] == "failed"


def test_health_and_readiness(service, slapd, ldap_ou):
    web = service([slapd_directory(slapd, ldap_ou)])
    assert web.http.get("/healthz").get_json() == {"status": "ok"}
    r = web.http.get("/readyz")
    assert r.status_code == 200 and r.get_json()["status"] == "ready"
    checks = r.get_json()["checks"]
    assert set(checks) == {"directory:openldap", "jira", "database"}
    assert all(c == {"status": "ok"} for c in checks.values())  # anonymous: the status alone
    detailed = web.http.get("/readyz", headers=ADMIN_HEADERS).get_json()["checks"]
    assert detailed["directory:openldap"]["servers"] == [slapd.url] and detailed["jira"]["account"] == JIRA_USER


def test_readiness_stays_200_while_a_dependency_is_down(service, slapd, ldap_ou):
    """A load balancer must keep sending webhooks while LDAP is down: they queue."""
    dead = f"ldap://127.0.0.1:{free_port()}"
    broken = service([slapd_directory(slapd, ldap_ou, urls=[dead])])
    r = broken.http.get("/readyz")
    assert r.status_code == 200 and r.get_json()["status"] == "degraded"
    assert r.get_json()["checks"]["directory:openldap"] == {"status": "down"}
    assert dead not in r.get_data(as_text=True)  # addresses and reasons are for admins
    detailed = broken.http.get("/readyz", headers=ADMIN_HEADERS).get_json()["checks"]
    assert detailed["directory:openldap"]["status"] == "down" and detailed["directory:openldap"]["reason"]
    assert detailed["directory:openldap"]["since"] and detailed["jira"]["status"] == "ok"
    assert post(broken, login("jdoe")).status_code == 202  # accepted durably all the same
    assert broken.http.get("/healthz").status_code == 200


def test_readiness_is_503_only_when_the_database_cannot_take_a_write(web, tmp_path):
    import sqlite3
    holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        r = web.http.get("/readyz")
        assert r.status_code == 503 and r.get_json()["status"] == "unavailable"
        assert r.get_json()["checks"]["database"] == {"status": "down"}
        # this process had not used the database yet: its first use (the schema check, and
        # WAL on a new file) waits the probe's 2 s too, not the 30 s a write may wait
        assert time.monotonic() - started < 10
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    web.services.readiness._probed_at = float("-inf")  # the next probe, without waiting 5 s
    assert web.http.get("/readyz").status_code == 200


def test_a_fresh_process_meeting_a_held_write_lock_answers_within_its_waits(service, tmp_path):
    """A restart while another process holds the write lock: the first webhook and the first
    probe each wait what they would wait anyway (5 s, 2 s), not the schema check's 30 s."""
    import sqlite3
    earlier = service()
    assert post(earlier, login("before")).status_code == 202  # the database exists, in WAL
    earlier.services.close()
    fresh = service()
    holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        assert post(fresh, login("during")).status_code == 503
        assert fresh.http.get("/readyz").status_code == 503
        assert time.monotonic() - started < 15
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert post(fresh, login("after")).status_code == 202
    fresh.services.close()


def test_user_without_photo_is_debounced_too(web, memory, jira):
    memory.add("nophoto")
    jira.state.add_user("nophoto")
    assert post(web, login("nophoto")).status_code == 202
    web.pool.run_once()
    assert post(web, login("nophoto")).get_json()["status"] == "debounced"


def test_failed_sync_is_not_debounced(web, jira):
    jira.state.inject(503, seconds=60)
    web.services.jira._sleep = lambda seconds: None  # the retries, without their backoff
    post(web, login("jdoe"))
    web.pool.run_once()
    assert post(web, login("jdoe")).status_code == 202


def test_metrics_read_the_shared_database(web, service, jira):
    post(web, login("jdoe"))
    text = web.http.get("/metrics").get_data(as_text=True)
    assert 'jira_avatar_sync_queue_jobs{state="pending"} 1.0' in text
    web.pool.run_once()
    other_process = service()  # same database, fresh process state: same figures
    text = other_process.http.get("/metrics").get_data(as_text=True)
    assert 'jira_avatar_sync_users{outcome="updated"} 1.0' in text
    assert 'jira_avatar_sync_queue_jobs{state="pending"} 0.0' in text
    assert "jira_avatar_sync_sweep_running 0.0" in text
    locked = service(metrics={"require_admin": True})
    assert locked.http.get("/metrics").status_code == 401
    assert locked.http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def basic_auth(token: str = ADMIN) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{token}".encode()).decode()}


DASHBOARD = {**basic_auth(), "Content-Type": "application/json", "X-Avatar-Sync-Request": "1"}


def test_dashboard_page_and_its_data(web, jira):
    post(web, login("jdoe"))
    web.pool.run_once()
    assert web.http.get("/").status_code == 401  # the browser is asked for the admin token
    page = web.http.get("/", headers=basic_auth())
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert re.findall(r"<script[^>]*>\s*[^<\s]", html) == [] and " style=" not in html and "<style" not in html
    script = web.http.get(re.search(r'<script src="([^"]+)"', html).group(1))
    assert script.status_code == 200 and b"admin/dashboard.json" in script.data

    data = web.http.get("/admin/dashboard.json", headers=basic_auth()).get_json()
    assert data["status"] == "ready" and data["checks"]["jira"]["status"] == "ok" and data["disabled"] is False
    assert data["queue"] == {} and data["sweep"] is None and data["next_sweep"] is None
    (recent,) = data["recent"]
    assert recent["username"] == "jdoe" and recent["outcome"] == "updated" and recent["source"] == "login"
    assert isinstance(recent["duration_ms"], int) and recent["avatar_id"] == jira.state.selected_avatar("jdoe").id
    thumb = web.http.get(f"/admin/users/jdoe/avatar.png?v={recent['avatar_id']}", headers=basic_auth())
    assert thumb.status_code == 200 and thumb.mimetype == "image/png" and thumb.data.startswith(b"\x89PNG")
    found = web.http.get("/admin/users?search=JD", headers=basic_auth()).get_json()["users"]
    assert [u["username"] for u in found] == ["jdoe"] and found[0]["state"]["last_outcome"] == "updated"
    assert web.http.get("/admin/users?search=x%25", headers=basic_auth()).get_json()["users"] == []


def test_a_login_no_worker_takes_shows_on_the_metrics_and_the_dashboard(web, jira):
    """The web only acknowledging and no worker running: the accepted login waits, and says so."""
    from datetime import timedelta

    from sqlalchemy import update

    from app.queue import jobs
    from app.tables import utcnow
    post(web, login("jdoe"))
    with web.services.store.transaction() as conn:  # accepted ten minutes ago, taken by nobody
        conn.execute(update(jobs).values(next_try_at=utcnow() - timedelta(minutes=10)))
    text = web.http.get("/metrics").get_data(as_text=True)
    waited = float(re.search(r"^jira_avatar_sync_queue_login_wait_seconds (\S+)$", text, re.M).group(1))
    assert 600 <= waited < 660
    assert 600 <= web.http.get("/admin/dashboard.json", headers=basic_auth()).get_json()["login_wait"] < 660
    web.pool.run_once()  # a worker at last
    assert "jira_avatar_sync_queue_login_wait_seconds 0.0" in web.http.get("/metrics").get_data(as_text=True)
    assert web.http.get("/admin/dashboard.json", headers=basic_auth()).get_json()["login_wait"] == 0


def test_browser_credentials_cannot_be_used_cross_site(web, jira):
    """Any page the admin visits could post a form here with the browser's Basic credentials."""
    form = web.http.post("/admin/users/jdoe/sync", data={"force": "true"}, headers=basic_auth())
    assert form.status_code == 403 and jira.state.writes() == 0
    empty_form = web.http.post("/admin/sweeps", data=b"", headers=basic_auth(),
                               content_type="application/x-www-form-urlencoded")
    assert empty_form.status_code == 403
    text = web.http.post("/admin/sweeps", data=b'{"dry_run": true}', headers=basic_auth(), content_type="text/plain")
    assert text.status_code == 403
    no_header = web.http.post("/admin/users/jdoe/sync", json={}, headers=basic_auth())
    assert no_header.status_code == 403 and "dashboard" in no_header.get_json()["error"]
    other_site = web.http.post("/admin/users/jdoe/sync", json={}, headers={
        **DASHBOARD, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert other_site.status_code == 403 and jira.state.writes() == 0
    other_host = web.http.post("/admin/users/jdoe/sync", json={}, headers={**DASHBOARD, "Origin": "http://evil.example"})
    assert other_host.status_code == 403 and jira.state.writes() == 0
    # behind a TLS proxy the browser's Origin says https while this process sees http
    ok = web.http.post("/admin/users/jdoe/sync", json={}, headers={**DASHBOARD, "Sec-Fetch-Site": "same-origin",
                                                                  "Origin": "https://localhost"})
    assert ok.status_code == 200 and ok.get_json()["outcome"] == "updated"
    # scripts with the token as Bearer keep working, with or without a JSON content type
    r = web.http.post("/admin/users/jdoe/sync", data=b'{"force": true}', headers=ADMIN_HEADERS,
                      content_type="application/x-www-form-urlencoded")
    assert r.status_code == 200 and r.get_json()["outcome"] == "updated"
    assert web.http.post("/admin/users/jdoe/sync", headers=ADMIN_HEADERS).status_code == 200


def test_admin_answers_name_what_is_wrong(web):
    missing = web.http.get("/admin/sweeps")
    wrong = web.http.get("/admin/sweeps", headers={"Authorization": "Bearer nope"})
    assert missing.status_code == wrong.status_code == 401
    assert "required" in missing.get_json()["error"] and "wrong" in wrong.get_json()["error"]
    r = web.http.post("/admin/users/jdoe/sync", json={"forse": True}, headers=ADMIN_HEADERS)
    assert r.status_code == 400 and "'forse'" in r.get_json()["error"]
    r = web.http.post("/admin/sweeps", json={"dry_run": "yes"}, headers=ADMIN_HEADERS)
    assert r.status_code == 400 and "dry_run" in r.get_json()["error"]
    r = web.http.post("/admin/sweeps", json=[1], headers=ADMIN_HEADERS)
    assert r.status_code == 400
    r = web.http.post("/admin/users/evil%1b%5b31m/sync", json={}, headers=ADMIN_HEADERS)
    assert r.status_code == 400 and "U+001B" in r.get_json()["error"]
    # CR/LF: the router matches no route (its path converter stops at a line break)
    assert web.http.post("/admin/users/evil%0d%0aERROR/sync", json={}, headers=ADMIN_HEADERS).status_code == 404
    assert web.http.get("/admin/users/" + "x" * 300, headers=ADMIN_HEADERS).status_code == 400
    huge = "9" * 23
    assert web.http.get(f"/admin/sweeps/{huge}", headers=ADMIN_HEADERS).status_code == 404
    assert web.http.get(f"/admin/sweeps/{huge}/problems.csv", headers=ADMIN_HEADERS).status_code == 404
    assert web.http.post(f"/admin/sweeps/{huge}/cancel", headers=ADMIN_HEADERS).status_code == 404
    assert web.http.get("/admin/sweeps/\u00b2", headers=ADMIN_HEADERS).status_code == 404
    assert web.http.get(f"/admin/sweeps?limit={huge}", headers=ADMIN_HEADERS).status_code == 200
    assert web.http.get("/admin/sweeps?limit=-1", headers=ADMIN_HEADERS).status_code == 400


def test_a_locked_database_fails_a_sync_cleanly_and_reads_go_on(web, tmp_path, jira):
    import sqlite3
    web.services.store.ping()  # the schema exists: the lock below is an ordinary writer's
    web.services.store.user_wait = 0.3  # what one user's write waits for (5 s in service)
    web.services.store.probe_wait = 0.3  # and readiness's look at the lock (2 s)
    holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        synced = web.http.post("/admin/users/jdoe/sync", json={}, headers=ADMIN_HEADERS).get_json()
        assert synced["outcome"] == "failed" and synced["reason"] == "database: database is locked"
        assert jira.state.writes() == 0  # nothing uploaded that could not be recorded
        assert web.http.get("/admin/dashboard.json", headers=ADMIN_HEADERS).status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()


PUBLIC_ENDPOINTS = {"health.healthz", "health.readyz", "metrics.metrics", "static", "dashboard.static"}


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_every_admin_route_refuses_without_the_admin_token(web, jira, token):
    """Walks Flask's URL map, so that a route added later cannot forget admin_required."""
    values = {"username": "jdoe", "sweep_id": "1", "fmt": "csv", "filename": "dashboard.js"}
    checked = 0
    for rule in web.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        url = rule.build({arg: values[arg] for arg in rule.arguments})[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = web.http.open(url, method=method, json={}, headers=headers)
            assert r.status_code == 401, (method, url, r.status_code)
            checked += 1
    assert checked >= 11 and jira.state.writes() == 0
    assert web.http.get("/metrics").status_code == 200  # public unless metrics.require_admin


def test_during_a_rotation_the_previous_secret_and_token_are_still_accepted(service, jira):
    app = service(webhook={"secret": "new-webhook-secret-123", "previous_secret": SECRET},
                  admin={"token": "new-admin-token-1234", "previous_token": ADMIN})
    body = json.dumps(login("jdoe")).encode()
    for secret in ("new-webhook-secret-123", SECRET):
        r = app.http.post("/webhooks/jira", data=body, headers=signed(login("jdoe"), secret)[1])
        assert r.status_code in (200, 202), secret
    assert post(app, login("jdoe"), headers={"X-Hub-Signature": "sha256=" + hmac.new(
        b"some-other-secret", body, hashlib.sha256).hexdigest()}).status_code == 401
    assert app.http.post(f"/webhooks/jira?token={SECRET}", data=body,
                         content_type="application/json").status_code in (200, 202)
    for token in ("new-admin-token-1234", ADMIN):
        assert app.http.get("/admin/sweeps", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert app.http.get("/admin/sweeps", headers={"Authorization": "Bearer nope"}).status_code == 401
    app.services.close()


def test_an_admin_opts_a_user_out_and_back_in(web, jira):
    url = "/admin/users/jdoe/exclusion"
    assert web.http.put(url, json={"excluded": "yes"}, headers=ADMIN_HEADERS).status_code == 400
    assert web.http.put(url, json={}, headers=ADMIN_HEADERS).get_json()["error"].startswith('give {"excluded"')
    r = web.http.put(url, json={"excluded": True}, headers=ADMIN_HEADERS)
    assert r.status_code == 200
    assert r.get_json()["exclusion"] == {"excluded": True, "excluded_by_any": True, "reason": "opted out by an admin"}
    assert web.http.get("/admin/users/jdoe", headers=ADMIN_HEADERS).get_json()["exclusion"]["excluded"] is True
    post(web, login("jdoe"))
    web.pool.run_once()
    assert web.services.store.get("jdoe").last_outcome == "excluded" and jira.state.writes() == 0
    web.http.put(url, json={"excluded": False}, headers=ADMIN_HEADERS)
    synced = web.http.post("/admin/users/jdoe/sync", json={}, headers=ADMIN_HEADERS).get_json()
    assert synced["outcome"] == "updated"


def test_a_user_listed_in_exclude_users_shows_why(service, memory, jira):
    app = service(exclude_users=["ann"])
    memory.add("ann", photos.photo())
    body = app.http.get("/admin/users/Ann", headers=ADMIN_HEADERS).get_json()  # known by nothing but the list
    assert body["exclusion"] == {"excluded": False, "excluded_by_any": True, "reason": "listed in exclude_users"}


def test_preview_renders_the_next_upload_and_writes_nothing(web, memory, jira):
    r = web.http.get("/admin/users/jdoe/preview.png", headers=ADMIN_HEADERS)
    assert r.status_code == 200 and r.mimetype == "image/png" and r.headers["Cache-Control"] == "no-store"
    c = photos.corners(r.data)  # the photo made square, as a sync makes it
    assert photos.close(c["tl"], photos.RED) and photos.close(c["br"], photos.YELLOW)
    assert jira.state.writes() == 0 and jira.state.count("GET /user") == 0
    assert web.services.store.get("jdoe") is None  # not even a state row
    memory.add("ann", None)
    memory.add("bob", b"not an image")
    assert web.http.get("/admin/users/ann/preview.png", headers=ADMIN_HEADERS).status_code == 404
    bad = web.http.get("/admin/users/bob/preview.png", headers=ADMIN_HEADERS)
    assert bad.status_code == 422 and "not a JPEG, PNG, GIF or WebP image" in bad.get_json()["error"]
    nobody = web.http.get("/admin/users/nobody/preview.png", headers=ADMIN_HEADERS)
    assert nobody.status_code == 404 and nobody.get_json()["error"] == "not in any directory"
    memory.down = "connection refused"
    assert web.http.get("/admin/users/jdoe/preview.png", headers=ADMIN_HEADERS).status_code == 503
