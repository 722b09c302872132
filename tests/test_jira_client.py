"""JiraClient against the emulator, and the emulator's fidelity where a client could cheat."""
from __future__ import annotations

import time

import pytest
import requests
from urllib3.exceptions import InsecureRequestWarning

from app.config import JiraSettings
from app.images import normalize
from app.jira import JiraAuthError, JiraClient, JiraError, avatar_from_urls
from tests import photos
from tests.helpers import JIRA_PASSWORD, JIRA_USER


def client(jira, sleeps=None, **kw) -> JiraClient:
    settings = JiraSettings(url=jira.url, username=kw.pop("username", JIRA_USER),
                            password=kw.pop("password", JIRA_PASSWORD), **kw)
    return JiraClient(settings, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_upload_crop_select_round_trip(jira):
    jira.state.add_user("jdoe")
    c = client(jira)
    png = normalize(photos.photo(300, 200), 256)
    avatar_id = c.upload_avatar("jdoe", png, 200)
    c.select_avatar("jdoe", avatar_id)
    user = c.get_user("jdoe")
    assert user.avatar_id == avatar_id and user.avatar_is_custom
    assert avatar_id in c.custom_avatars("jdoe")
    assert c.delete_avatar("jdoe", avatar_id) is True
    assert c.delete_avatar("jdoe", avatar_id) is False  # already gone is fine


def test_small_square_takes_the_no_crop_shortcut(jira):
    jira.state.add_user("jdoe")
    avatar_id = client(jira).upload_avatar("jdoe", normalize(photos.photo(40, 40), 256), 40)
    assert jira.state.count("POST /user/avatar") == 0  # created by the temporary upload itself
    assert jira.state.avatars[avatar_id].owner == jira.state.users["jdoe"].key


def test_system_avatar_is_not_custom(jira):
    jira.state.add_user("jdoe")
    user = client(jira).get_user("jdoe")
    assert user.avatar_id == "10122" and not user.avatar_is_custom
    assert client(jira).get_user("nobody") is None


def test_avatar_from_urls():
    custom = {"48x48": "https://j/secure/useravatar?ownerId=JIRAUSER1&avatarId=10500"}
    assert avatar_from_urls(custom) == ("10500", True)
    assert avatar_from_urls({"16x16": "https://j/secure/useravatar?size=xsmall&avatarId=10122"}) == ("10122", False)
    assert avatar_from_urls({}) == (None, False)


def test_emulator_holds_the_temporary_image_in_the_http_session(jira):
    """Without the cookie jar the crop-confirm fails, as on real Jira (§1.3)."""
    jira.state.add_user("jdoe")
    auth = (JIRA_USER, JIRA_PASSWORD)
    headers = {"X-Atlassian-Token": "no-check"}
    png = normalize(photos.photo(300, 300), 256)
    r = requests.post(f"{jira.url}/rest/api/2/user/avatar/temporary", auth=auth, data=png,
                      params={"username": "jdoe", "filename": "a.png", "size": len(png)},
                      headers={**headers, "Content-Type": "image/png"}, timeout=5)
    assert r.status_code == 201 and r.json()["needsCropping"] is True
    r = requests.post(f"{jira.url}/rest/api/2/user/avatar", auth=auth, headers=headers, timeout=5,
                      params={"username": "jdoe"}, json={"cropperOffsetX": 0, "cropperOffsetY": 0, "cropperWidth": 256})
    assert r.status_code == 500


@pytest.mark.parametrize("headers,status", [({"Content-Type": "image/png"}, 403),  # no XSRF token
                                            ({"X-Atlassian-Token": "no-check", "Content-Type": "image/jpg"}, 400),
                                            ({"X-Atlassian-Token": "no-check", "Content-Type": "image/webp"}, 400)])
def test_emulator_checks_xsrf_and_content_type(jira, headers, status):
    jira.state.add_user("jdoe")
    r = requests.post(f"{jira.url}/rest/api/2/user/avatar/temporary", auth=(JIRA_USER, JIRA_PASSWORD),
                      params={"username": "jdoe", "filename": "a.png"}, data=b"x" * 10, headers=headers, timeout=5)
    assert r.status_code == status


def test_429_is_retried_after_retry_after(jira):
    jira.state.add_user("jdoe")
    jira.state.inject(429, path="/rest/api/2/user", count=2, retry_after=3)
    sleeps = []
    assert client(jira, sleeps, max_retries=3).get_user("jdoe").name == "jdoe"
    assert sleeps == [3.0, 3.0]


def test_503_retries_with_backoff_then_gives_up(jira):
    jira.state.add_user("jdoe")
    jira.state.inject(503, path="/rest/api/2/user", count=10)
    sleeps = []
    with pytest.raises(JiraError) as info:
        client(jira, sleeps, max_retries=3).get_user("jdoe")
    assert info.value.retryable and info.value.status == 503
    assert len(sleeps) == 3 and sleeps[0] < sleeps[2]
    assert jira.state.count("GET /user") == 4


def test_bad_password_is_not_retried_and_blocks_further_calls(jira):
    jira.state.add_user("jdoe")
    c = client(jira, password="wrong")
    with pytest.raises(JiraAuthError, match="refused the credentials"):
        c.get_user("jdoe")
    with pytest.raises(JiraAuthError):
        c.get_user("jdoe")
    assert jira.state.failed_logins[JIRA_USER] == 1  # the second call never reached Jira


def test_captcha_is_reported_and_not_retried(jira):
    jira.state.add_user("jdoe")
    jira.state.failed_logins[JIRA_USER] = 5
    with pytest.raises(JiraAuthError, match="CAPTCHA"):
        client(jira).get_user("jdoe")
    assert jira.state.count("GET /user") == 1


def test_personal_access_token(jira):
    jira.state.add_account("pat-owner", "", admin=True, token="s3cr3t-token")
    jira.state.add_user("jdoe")
    c = JiraClient(JiraSettings(url=jira.url, token="s3cr3t-token"))
    assert c.get_user("jdoe").name == "jdoe" and c.is_admin()


def test_not_admin(jira):
    jira.state.add_account("plain", "pw", admin=False)
    jira.state.add_user("jdoe")
    c = client(jira, username="plain", password="pw")
    assert c.is_admin() is False
    with pytest.raises(JiraAuthError, match="Jira Administrators"):
        c.upload_avatar("jdoe", normalize(photos.photo(), 256), 200)


def test_every_call_has_a_timeout(jira):
    jira.state.add_user("jdoe")
    jira.state.latency = 0.45
    with pytest.raises(JiraError, match="did not answer"):
        client(jira, timeout=0.2, max_retries=0).get_user("jdoe")


def test_each_thread_keeps_its_own_jira_session(jira):
    """Jira holds one temporary image per HTTP session: threads sharing a session would
    confirm each other's uploads (§1.3)."""
    from concurrent.futures import ThreadPoolExecutor
    names = [f"u{i}" for i in range(8)]
    for n in names:
        jira.state.add_user(n)
    c = client(jira, max_concurrency=8)
    colours = {n: (30 * i, 255 - 30 * i, 100) for i, n in enumerate(names)}  # each user's own picture

    def upload(name):
        png = normalize(photos.solid(colours[name], 120, fmt="PNG"), 256)
        return [c.upload_avatar(name, png, 120) for _ in range(3)]

    with ThreadPoolExecutor(8) as pool:
        created = dict(zip(names, pool.map(upload, names)))
    for name, ids in created.items():
        for avatar_id in ids:
            assert jira.state.avatars[avatar_id].image.convert("RGB").getpixel((60, 60)) == colours[name]
    assert len(jira.state.sessions) <= 8  # one per thread (a pool thread may serve two users), kept across calls


def test_a_lost_session_is_started_afresh_once(jira):
    """Jira forgetting the session between upload and crop-confirm (expired, another node)
    answers the confirm 500; the client uploads again in a new session, sending no stale cookie."""
    jira.state.add_user("jdoe")
    c = client(jira)
    c.get_user("jdoe")  # a session exists before the upload, as in a running service
    real = c._http.request

    def request(method, url, **kw):
        resp = real(method, url, **kw)
        if url.endswith("/user/avatar/temporary") and jira.state.count("POST /user/avatar/temporary") == 1:
            jira.state.sessions.clear()  # Jira restarted right after the first upload
        return resp

    c._http.request = request
    avatar_id = c.upload_avatar("jdoe", normalize(photos.photo(300, 300), 256), 256)
    assert jira.state.count("POST /user/avatar/temporary") == 2
    assert jira.state.avatars[avatar_id].owner == jira.state.users["jdoe"].key


def test_a_redirect_is_reported_not_followed():
    """A jira.url that Jira redirects (http -> https, a missing context path) must say so."""
    import http.server
    import threading

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "https://jira.example.com" + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        c = JiraClient(JiraSettings(url=f"http://127.0.0.1:{server.server_port}", username="u", password="p"))
        with pytest.raises(JiraError, match="redirect to 'https://jira.example.com/rest/api/2/user") as err:
            c.get_user("jdoe")
        assert err.value.retryable is False
    finally:
        server.shutdown()
        server.server_close()


def test_https_trusts_jira_ca_file_and_refuses_an_unknown_ca(tmp_path):
    from tests.jira_emulator import EmulatorServer
    from tests.rig.slapd import make_certificates
    tls = tmp_path / "tls"
    make_certificates(tls)
    with EmulatorServer(tls=(str(tls / "server.pem"), str(tls / "server.key"))) as jira:
        jira.state.add_account(JIRA_USER, JIRA_PASSWORD, admin=True)
        jira.state.add_user("jdoe")
        trusted = client(jira, ca_file=str(tls / "ca.pem"))
        assert trusted.get_user("jdoe").name == "jdoe"
        with pytest.raises(JiraError, match="CERTIFICATE_VERIFY_FAILED"):
            client(jira, max_retries=0).get_user("jdoe")  # the system's CAs do not know this one
        with pytest.warns(InsecureRequestWarning):  # the operator's opt-out works, and is flagged
            assert client(jira, verify_tls=False).get_user("jdoe").name == "jdoe"


def _answer_jdoe(handler) -> None:
    """What Jira would answer GET /user?username=jdoe with, from a stand-in proxy."""
    import json
    body = json.dumps({"name": "jdoe", "key": "JIRAUSER1", "avatarUrls": {}}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_calls_go_through_the_environments_proxy_unless_no_proxy(monkeypatch):
    """HTTP_PROXY / HTTPS_PROXY / NO_PROXY are read once, as requests did for this client."""
    import http.server
    import threading

    seen = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)  # a proxy is sent the absolute URL
            _answer_jdoe(self)

        def log_message(self, *args):
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
        settings = JiraSettings(url="http://jira.invalid:8080", username="u", password="p", max_retries=0)
        assert JiraClient(settings).get_user("jdoe").key == "JIRAUSER1"
        assert seen == ["http://jira.invalid:8080/rest/api/2/user?username=jdoe"]
        monkeypatch.setenv("NO_PROXY", "jira.invalid")
        with pytest.raises(JiraError, match="cannot reach Jira"):
            JiraClient(settings).get_user("jdoe")  # straight to a host that does not exist
        assert len(seen) == 1
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_proxy_credentials_in_the_environment_reach_the_proxy(monkeypatch, caplog):
    """HTTP_PROXY=http://user:pass@proxy: the proxy demands them (407 without), and they
    appear in no error message or log line."""
    import base64
    import http.server
    import threading

    seen = []
    expected = "Basic " + base64.b64encode(b"proxy-user:p@ss:w0rd").decode()

    class AuthenticatingProxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Proxy-Authorization"))
            if self.headers.get("Proxy-Authorization") != expected:
                self.send_response(407)
                self.send_header("Proxy-Authenticate", 'Basic realm="proxy"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            _answer_jdoe(self)

        def log_message(self, *args):
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AuthenticatingProxy)
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    settings = JiraSettings(url="http://jira.invalid:8080", username="u", password="p", max_retries=0)
    try:
        for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://proxy-user:p%40ss%3Aw0rd@127.0.0.1:{proxy.server_port}")
        assert JiraClient(settings).get_user("jdoe").key == "JIRAUSER1"
        assert seen == [expected]
        monkeypatch.setenv("HTTP_PROXY", f"http://proxy-user:wrong-secret@127.0.0.1:{proxy.server_port}")
        with pytest.raises(JiraError) as refused:
            JiraClient(settings).get_user("jdoe")
        assert "407" in str(refused.value) and "wrong-secret" not in str(refused.value) + caplog.text
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_password_with_accents_is_sent_as_jira_decodes_it(jira):
    """Jira decodes Basic credentials as ISO-8859-1; a character beyond it must not stop the
    service from starting (it is sent in UTF-8, and Jira's answer says what it thinks)."""
    jira.state.add_account("dépôt", "pässwörd", admin=True)
    jira.state.add_user("jdoe")
    assert client(jira, username="dépôt", password="pässwörd").get_user("jdoe").name == "jdoe"
    with pytest.raises(JiraAuthError):
        client(jira, username="dépôt", password="p€ss").myself()


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_jira_that_drips_its_answer_is_cut_off_at_the_calls_deadline(part):
    """One byte every 0.1 s never trips a per-read timeout of 0.4 s; the call's deadline does,
    whether the status line and headers drip or the body."""
    import http.server
    import threading
    import time

    class Dripping(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"name": "jdoe", "key": "K", "avatarUrls": {}}'
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: {'p' * 40}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            slow, fast = (head, body) if part == "headers" else (body, head)
            try:
                if part == "body":
                    self.wfile.write(fast)
                for byte in slow:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
                if part == "headers":
                    self.wfile.write(fast)
            except OSError:
                return

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dripping)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        settings = JiraSettings(url=f"http://127.0.0.1:{server.server_port}", username="u", password="p",
                                connect_timeout=0.2, timeout=0.4, max_retries=0)
        started = time.monotonic()
        with pytest.raises(JiraError, match="did not answer"):
            JiraClient(settings).get_user("jdoe")
        assert time.monotonic() - started < 1.2  # the 0.6 s deadline, not the 5-10 s the drip takes
    finally:
        server.shutdown()
        server.server_close()


def test_a_call_that_finds_no_slot_in_time_fails_and_is_retried_later(monkeypatch):
    """The per-process budget (and the semaphore a CLI sweep's processes share) waits for a
    Jira slot at most WAIT_SECONDS, then says so, instead of holding the thread for ever."""
    from app import jira_budget

    monkeypatch.setattr(jira_budget, "WAIT_SECONDS", 0.05)
    budget = jira_budget.ProcessBudget(1, 0)
    with budget.call():
        with pytest.raises(jira_budget.BudgetUnavailable, match="no Jira call slot free within 0.05s"):
            with budget.call():
                pass
    with budget.call():  # the slot came back
        pass


def test_a_logins_call_waits_for_a_slot_behind_one_sweep_call_at_most():
    """A sweep keeps twice as many threads as Jira slots, all waiting for one; a login's call
    (not in the background) waits behind the one sweep call at the gate, not behind all of
    them: five sweep calls queued before it, it still gets one of the next two slots freed."""
    import threading
    from contextlib import nullcontext

    from app import jira_budget

    budget = jira_budget.ProcessBudget(1, 0)
    order: list[str] = []
    give_back = threading.Semaphore(0)  # each holder keeps its slot until told

    def call(name: str, background: bool) -> None:
        with jira_budget.in_background() if background else nullcontext(), budget.call():
            order.append(name)
            give_back.acquire()

    def start(name: str, background: bool) -> threading.Thread:
        thread = threading.Thread(target=call, args=(name, background))
        thread.start()
        time.sleep(0.1)  # queued before the next one
        return thread
    threads = [start("holder", False), *(start(f"sweep-{i}", True) for i in range(5)), start("login", False)]
    for _ in threads:
        give_back.release()
        time.sleep(0.05)
    for thread in threads:
        thread.join(5)
    assert order[0] == "holder" and order.index("login") <= 2, order


def test_a_thread_stays_in_the_background_after_a_nested_in_background_and_its_pools_follow_it():
    """The sweep's runner runs in the background as a whole; an inner in_background() ending
    must not bring its later calls forward. Its pools' threads follow it (carried)."""
    from app import jira_budget

    with jira_budget.in_background():
        with jira_budget.in_background():
            pass
        carried = jira_budget.carried(lambda: getattr(jira_budget._background, "on", False))
    assert carried is not None and jira_budget.carried(len) is len
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(carried).result() is True


def _paced_calls(budget, n: int, starts) -> None:
    """A forked process's calls: ``n`` through ``budget``, each start noted in ``starts``."""
    for _ in range(n):
        with budget.call():
            with starts.get_lock():
                starts[int(starts[0]) + 1] = time.monotonic()
                starts[0] += 1


def test_processes_sharing_a_budget_keep_to_max_requests_per_second_together():
    """A replica's gunicorn workers (and a CLI sweep's processes) space their Jira calls on one
    clock: two processes at 50 calls a second each would start 100 a second; together they
    start 50, whichever of them has the work."""
    import multiprocessing

    from app import jira_budget, shared_slots

    fork = multiprocessing.get_context("fork")
    shared = shared_slots.SharedBudget(4, True, fork)
    starts = fork.Array("d", 1 + 20)  # [count, start times...]
    children = [fork.Process(target=_paced_calls, args=(jira_budget.ProcessBudget(4, 50, gate=shared), 10, starts))
                for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(10)
    times = sorted(starts[1:])
    assert starts[0] == 20 and all(child.exitcode == 0 for child in children)
    # 19 intervals of 20 ms from the first start to the last (apart: 9, each process's own);
    # a start can be late by a wake-up's jitter, never early
    assert times[-1] - times[0] >= 19 * 0.02 * 0.9, times


def test_a_process_that_cannot_have_the_shared_pace_paces_its_own_calls(monkeypatch, caplog):
    """The shared pace's lock held by a process that died holding it (killed between two
    instructions): after PACE_LOCK_WAIT the process says so, once, and spaces its own calls."""
    import logging
    import multiprocessing

    from app import jira_budget, shared_slots

    monkeypatch.setattr(shared_slots, "PACE_LOCK_WAIT", 0.05)
    shared = shared_slots.SharedBudget(2, True, multiprocessing.get_context("fork"))
    shared._pace[1].acquire()  # as the dead process left it
    budget = jira_budget.ProcessBudget(2, 20, gate=shared)
    starts = []
    with caplog.at_level(logging.ERROR, logger="app.jira_budget"):
        for _ in range(4):
            with budget.call():
                starts.append(time.monotonic())
    assert [r.getMessage() for r in caplog.records] == [
        "a process died while it held the Jira call pace shared by this replica's processes: "
        "this process paces its own calls until it restarts"
    ]
    assert starts[-1] - starts[0] >= 3 * 0.05 * 0.9, starts


def test_the_cluster_budget_takes_and_gives_back_slots_and_drops_a_connection_postgresql_killed(pg_url):
    """The cluster-wide budget's two statements run on the driver's connection: a slot taken is
    a PostgreSQL advisory lock until the call ends, and a slot connection that PostgreSQL ended
    fails one call, then leaves the pool instead of failing every later call."""
    from sqlalchemy import create_engine

    from app.jira_budget import BudgetUnavailable, ClusterBudget, slot_class
    from app.store import Store

    budget = ClusterBudget(Store(pg_url), max_concurrency=1, per_second=0)
    admin = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
            held = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    f"AND classid = {slot_class(schema)} AND objid = 0")
            with budget.call():
                assert conn.exec_driver_sql(held).scalar() == 1
            assert conn.exec_driver_sql(held).scalar() == 0  # given back
            with budget._slots_engine.connect() as slot_conn:  # the one pooled slot connection
                pid = slot_conn.connection.dbapi_connection.info.backend_pid
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(BudgetUnavailable, match="cannot be read"):
            with budget.call():
                pass
        with budget.call():  # a new connection
            pass
    finally:
        budget._slots_engine.dispose()
        admin.dispose()


def test_the_cluster_budget_is_shared_within_a_schema_and_not_across_schemas(pg_url, fresh_pg_url, monkeypatch):
    """Advisory locks belong to the whole database: two installations in one database, each in
    its own schema, must not take each other's Jira slots; two processes of one installation
    must share them."""
    from app import jira_budget
    from app.store import Store

    monkeypatch.setattr(jira_budget, "WAIT_SECONDS", 0.5)
    one, same, other = (jira_budget.ClusterBudget(Store(url), max_concurrency=1, per_second=0)
                        for url in (pg_url, pg_url, fresh_pg_url))
    try:
        with one.call():
            with other.call():  # another installation's only slot is free
                pass
            with pytest.raises(jira_budget.BudgetUnavailable, match="no Jira call slot free"):
                with same.call():  # this installation's only slot is taken
                    pass
        with same.call():  # and given back
            pass
        assert one.lock_class == same.lock_class != other.lock_class
    finally:
        for budget in (one, same, other):
            budget._slots_engine.dispose()
