"""PostgreSQL that stops answering without a word (a network partition, a failover's dead
address), or that keeps its text in another encoding: the service's store says so in seconds,
holds no thread on it, and works again once the database answers."""
from __future__ import annotations

import threading
import time
import uuid
from contextlib import ExitStack, nullcontext

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app import database, database_deadline, states
from app.database import describe_error, make_engine
from app.store import UNAVAILABLE, Store
from tests.helpers import ADMIN, Service, add_users, pg_database, synced, wait_until
from tests.rig.ports import free_port
from tests.rig.tcp_forward import Forwarder, partitioned


def _ping(store: Store, results: dict, name: str) -> None:
    started = time.monotonic()
    try:
        store.ping()
        results[name] = ("answered", 0.0)
    except UNAVAILABLE as exc:
        results[name] = (describe_error(exc), time.monotonic() - started)


def test_a_partitioned_database_fails_statements_and_connects_in_seconds_then_serves_again(pg_url):
    """Without libpq's timeouts a statement on a stranded connection waits for TCP's
    retransmissions (15 minutes) and a new connection for its SYN retries (2 minutes): a web
    thread, a worker or a readiness probe held that long."""
    target = make_url(pg_url)
    with Forwarder(target.host or "127.0.0.1", target.port or 5432) as forwarder:
        url = target.set(port=forwarder.port).render_as_string(hide_password=False)
        pooled, fresh = Store(url), Store(url)
        pooled.ping()  # the schema made, a connection in the pool
        fresh.ping()
        fresh.dispose()  # its next use connects anew
        results: dict[str, tuple[str, float]] = {}
        with partitioned(forwarder.port):
            threads = [threading.Thread(target=_ping, args=(store, results, name), daemon=True)
                       for name, store in (("pooled", pooled), ("fresh", fresh))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            assert not any(t.is_alive() for t in threads), f"a statement or a connect still waits: {results}"
        for name, (error, seconds) in results.items():
            assert error != "answered" and seconds < 45, (name, error, seconds)
        assert "timeout" in results["fresh"][0].lower(), results
        for store in (pooled, fresh):  # the stranded connection is not handed out again for good
            wait_until(lambda s=store: _answers(s), 30, "the store to work again")
            store.dispose()


@pytest.mark.parametrize("connection, bound, within", [("pooled", 1, 2), ("pinged", 1, 2), ("new", 1, 3.5)])
def test_a_web_request_waits_on_a_frozen_database_seconds_and_a_worker_until_it_answers(
        pg_url, monkeypatch, connection, bound, within):
    """A database that stops answering while its host still acknowledges every packet: TCP's
    timeouts never fire. A web request's use fails after its bound (the connection shut, the
    reason said), whether its connection was in the pool, idle long enough to be pinged at
    checkout, or made anew (libpq's connect_timeout lowered to the time left, 2 s at least,
    where the service's default is 5 s); a worker's use, which nobody waits on, is left to
    finish when the database answers."""
    target = make_url(pg_url)
    monkeypatch.setattr(database, "PING_IDLE_SECONDS", 0.0 if connection == "pinged" else 3600.0)
    with Forwarder(target.host or "127.0.0.1", target.port or 5432) as forwarder:
        store = Store(target.set(port=forwarder.port).render_as_string(hide_password=False))
        with store.read(), store.read() if connection != "new" else nullcontext():
            pass  # the pool: the worker's connection, and the request's unless it makes one
        results: dict[str, tuple[str, float]] = {}

        def request(environ, start_response):
            _ping(store, results, "request")
            return []
        with forwarder.frozen():
            worker = threading.Thread(target=_ping, args=(store, results, "worker"), daemon=True)
            worker.start()
            web = threading.Thread(target=database_deadline.BoundedUses(request, bound), args=({}, None), daemon=True)
            web.start()
            web.join(within + 3)
            assert not web.is_alive() and worker.is_alive(), results
        worker.join(10)
        error, seconds = results["request"]
        assert error == f"the database did not answer within {bound} s" and seconds < within, results
        assert results["worker"][0] == "answered"
        wait_until(lambda: _answers(store), 10, "the store to work again")
        store.dispose()


def test_a_session_cut_off_from_the_database_loses_its_locks_in_seconds(pg_url):
    """A replica whose network goes (or whose VM freezes) while it holds a cluster Jira slot (an
    advisory lock) or a user's row: the server keeps its session, and those
    locks, until its keepalives notice, 2 hours by the OS's defaults. The service's sessions
    ask the server to probe them every few seconds."""
    engine, other = make_engine(pg_url), make_engine(pg_url)
    key = uuid.uuid4().int % 2**31
    conn = engine.connect()
    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
    backend = conn.connection.dbapi_connection.info.backend_pid
    with other.connect() as probe:
        idle = probe.execute(text("SELECT setting FROM pg_settings WHERE name = 'tcp_keepalives_idle'")).scalar()
        client_port = probe.execute(text("SELECT client_port FROM pg_stat_activity WHERE pid = :p"),
                                    {"p": backend}).scalar()
    assert client_port, "the session is not on TCP"

    def lock_is_free() -> bool:
        with other.connect() as probe:
            if probe.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                probe.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                return True
            return False
    assert not lock_is_free()
    try:
        with partitioned(client_port, make_url(pg_url).port or 5432):  # this one connection's, both ways
            wait_until(lock_is_free, 75, f"the server to drop the cut-off session (keepalives after {idle} s idle)")
    finally:
        conn.invalidate()
        engine.dispose()
        other.dispose()


@pytest.mark.parametrize("fault", ["partitioned", "frozen"])
def test_the_service_answers_through_a_database_fault_and_keeps_what_it_accepted(
        tmp_path, fresh_pg_url, slapd, ldap_ou, jira, fault):
    """The real service under gunicorn on PostgreSQL, the database cut off (a partition) or
    frozen (its process stopped, its storage stalled: the host still acknowledges every packet,
    so no timeout of TCP's ever fires, and a web thread waited until the database came back; a
    web worker has two). A login is answered 503 with Retry-After within seconds (Jira's DC
    webhooks are not retried: the next login or the sweep brings that user in step), and the
    logins right after it at once, without trying the database (each try costs seconds, which
    Jira's listener does not wait); an admin read is answered 503; /readyz says unavailable,
    where it went on repeating its last "ready" while its probe waited; once the database
    answers again logins are queued and synced; what was accepted before is kept. One web
    worker: each process learns that the database is down for itself."""
    add_users(slapd, ldap_ou, jira, ["before", "during"])
    target = make_url(fresh_pg_url)
    with Forwarder(target.host or "127.0.0.1", target.port or 5432) as forwarder:
        url = target.set(port=forwarder.port).render_as_string(hide_password=False)
        svc = Service(tmp_path, slapd, ldap_ou, jira.url, database_url=url, workers=1)
        svc.start()
        try:
            assert svc.login("before").status_code in (200, 202)
            wait_until(lambda: synced(jira, "before"), 30, "the first login to be synced")
            assert requests.get(svc.url + "/readyz", timeout=10).json()["status"] == "ready"
            with partitioned(forwarder.port) if fault == "partitioned" else forwarder.frozen():
                started = time.monotonic()
                answer = svc.login("during", timeout=30)
                assert answer.status_code == 503 and "Retry-After" in answer.headers, answer.text
                assert time.monotonic() - started < 15
                later = [svc.login(f"during{i}", timeout=5) for i in range(5)]
                assert [a.status_code for a in later] == [503] * 5 and all("Retry-After" in a.headers for a in later)
                assert svc.log.read_text().count("not tried again yet") == 5
                assert svc.http.get(f"{svc.url}/admin/users/before", timeout=30,
                                    headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 503
                wait_until(lambda: requests.get(svc.url + "/readyz", timeout=30).json()["status"] == "unavailable",
                           45, "/readyz to say unavailable")
            wait_until(lambda: svc.login("during").status_code in (200, 202), 60, "a login to be accepted again")
            wait_until(lambda: synced(jira, "during"), 60, "the login after the fault to be synced")
            assert svc.user("before").json()["state"]["last_outcome"] == "updated"
            assert jira.state.created_for("before") == 1 and jira.state.created_for("during") == 1
            assert "Traceback" not in svc.log.read_text()
        finally:
            svc.stop()


def _answers(store: Store) -> bool:
    try:
        store.ping()
        return True
    except UNAVAILABLE:
        return False


def test_a_database_in_sql_ascii_is_read_and_written_as_text(pg_url):
    """An old database created with ENCODING 'SQL_ASCII' (or by an initdb without a locale):
    psycopg hands its text over as bytes unless the client asks for UTF-8, and the service
    failed at its first connection with a TypeError from SQLAlchemy's version check."""
    with pg_database("avsync_ascii", "ENCODING 'SQL_ASCII' TEMPLATE template0 LOCALE 'C'") as url:
        store = Store(url)
        with store.transaction() as tx:
            states.update(tx, "jürgen.müller", lambda state: setattr(state, "last_error", "Bild fehlt: ß"))
        assert store.get("jürgen.müller").last_error == "Bild fehlt: ß"
        store.dispose()


@pytest.mark.parametrize("when", ["taking a slot", "taking a slot on a new connection", "giving a slot back"])
def test_a_web_request_waits_on_the_cluster_jira_budget_of_a_frozen_database_seconds(pg_url, when):
    """limits_scope = "cluster": a web request's Jira call (the dashboard's picture of a user, an
    admin's dry run) takes its slot on a connection of the budget's own, held for the call, and
    gives it back after. On a frozen database each of those statements waited until it answered
    again, and held a web thread meanwhile; now each is bounded as the store's uses are, and the
    call fails as for a budget that cannot be read. The slot's connection leaves the pool."""
    from app.jira_budget import BudgetUnavailable, ClusterBudget

    target = make_url(pg_url)
    with Forwarder(target.host or "127.0.0.1", target.port or 5432) as forwarder:
        store = Store(target.set(port=forwarder.port).render_as_string(hide_password=False))
        budget = ClusterBudget(store, max_concurrency=1, per_second=0)
        if when != "taking a slot on a new connection":
            with budget.call():  # the pool: one slot connection
                pass
        results: dict[str, tuple[str, float]] = {}
        frozen = ExitStack()

        def request(environ, start_response):
            started = time.monotonic()
            try:
                if when == "giving a slot back":
                    with budget.call():
                        frozen.enter_context(forwarder.frozen())
                else:
                    frozen.enter_context(forwarder.frozen())
                    with budget.call():
                        pass
                results["request"] = ("called", time.monotonic() - started)
            except BudgetUnavailable as exc:
                results["request"] = (str(exc), time.monotonic() - started)
            return []
        try:
            web = threading.Thread(target=database_deadline.BoundedUses(request, 1), args=({}, None), daemon=True)
            web.start()
            web.join(8)
            assert not web.is_alive(), f"the web request still waits, {when}"
        finally:
            frozen.close()
        outcome, seconds = results["request"]
        if when == "giving a slot back":
            assert outcome == "called" and seconds < 3.5, results  # the call was made; its end is not held
        else:
            assert outcome.endswith("the database did not answer within 1 s") and seconds < 3.5, results
        with budget.call():  # the stranded connection is not handed out again
            pass
        budget._slots_engine.dispose()
        store.dispose()


def test_a_scrape_while_the_database_freezes_answers_with_the_database_down(tmp_path, pg_url, jira):
    """Prometheus's alerts on a dependency down need the scrape itself to answer. The readiness
    probe had just found the database well when it froze: reading the database's gauges then
    ended in a 503 after the web bound, and the scrape (the process's counters with it) was
    lost. Now the scrape answers without the database's gauges and with the database down."""
    from app import create_app
    from tests.helpers import make_settings

    target = make_url(pg_url)
    with Forwarder(target.host or "127.0.0.1", target.port or 5432) as forwarder:
        url = target.set(port=forwarder.port).render_as_string(hide_password=False)
        directory = {"name": "closed", "urls": [f"ldap://127.0.0.1:{free_port()}"], "base_dn": "dc=closed"}
        app = create_app(make_settings(tmp_path, jira.url, [directory], database_url=url,
                                          webhook={"secret": "s"}))
        try:
            http = app.test_client()
            assert 'jira_avatar_sync_dependency_up{dependency="database"} 1.0' in http.get("/metrics").text
            with forwarder.frozen():
                started = time.monotonic()
                scrape = http.get("/metrics")
                assert scrape.status_code == 200 and time.monotonic() - started < 8, scrape.text
            assert 'jira_avatar_sync_dependency_up{dependency="database"} 0.0' in scrape.text
            assert "jira_avatar_sync_build_info" in scrape.text and "jira_avatar_sync_queue_jobs" not in scrape.text
        finally:
            app.extensions["avatar_sync"].close()
