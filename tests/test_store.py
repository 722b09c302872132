"""The store, on SQLite and on the local PostgreSQL alike."""
from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy

from app.queue import LoginQueue
from app.store import Store, utcnow

@pytest.fixture
def store(database_url):
    s = Store(database_url)
    yield s
    s.dispose()


def test_success_then_outcome(store):
    user = f"u-{uuid.uuid4().hex[:8]}"
    assert store.get(user) is None
    store.remember_created(user, "10500")
    store.record_success(user, outcome="updated", photo_sha256="ab" * 32, avatar_id="10500", directory="ad")
    state = store.get(user)
    assert (state.photo_sha256, state.avatar_id, state.created_avatar_ids) == ("ab" * 32, "10500", ["10500"])
    assert state.last_success_at is not None and state.last_success_at.tzinfo is not None
    store.record_outcome(user, "failed", "Jira down")
    state = store.get(user)
    assert state.last_outcome == "failed" and state.last_error == "Jira down"
    assert state.photo_sha256 == "ab" * 32  # a failure never forgets what Jira has


def test_forget_created_and_delete(store):
    user = f"u-{uuid.uuid4().hex[:8]}"
    for avatar_id in ("1", "2", "3"):
        store.remember_created(user, avatar_id)
    store.forget_created(user, ["1", "3"])
    assert store.get(user).created_avatar_ids == ["2"]
    store.delete(user)
    assert store.get(user) is None


def test_concurrent_updates_lose_nothing(store):
    user = f"u-{uuid.uuid4().hex[:8]}"
    errors = []

    def add(i):
        try:
            store.remember_created(user, str(i))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(store.get(user).created_avatar_ids, key=int) == [str(i) for i in range(20)]


def test_older_database_gains_new_columns(database_url):
    """An upgrade adds the columns a newer version needs to an existing database."""
    engine = sqlalchemy.create_engine(Store(database_url).url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS user_state")
        conn.exec_driver_sql("CREATE TABLE user_state (username VARCHAR(255) PRIMARY KEY, photo_sha256 VARCHAR(64), "
                             "avatar_id VARCHAR(32), created_avatar_ids TEXT NOT NULL, attempts INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO user_state VALUES ('old', 'ab', '10500', '[\"10500\"]', 1)")
    engine.dispose()
    store = Store(database_url)
    assert store.get("old").avatar_id == "10500" and store.get("old").pending_avatar_id is None
    store.remember_created("old", "10600", "cd")
    assert store.get("old").pending_sha256 == "cd"
    store.dispose()


def test_usernames_are_one_user_whatever_their_case(store):
    user = f"JDoe-{uuid.uuid4().hex[:6]}"
    store.record_success(user, outcome="updated", photo_sha256="ab", avatar_id="1", directory="ad")
    assert store.get(user.lower()).avatar_id == "1"
    assert list(store.get_many([user.upper()])) == [user.lower()]
    store.delete(user.lower())
    assert store.get(user) is None


def test_prepared_statements_write_and_read_what_core_does(store):
    """Prepared runs Core statements on the DB-API cursor: values must round-trip exactly as
    through Core (SQLite keeps datetimes as text, compared as text: one format or wrong order)."""
    from datetime import datetime, timezone

    from sqlalchemy import bindparam, select

    from app.prepared import Prepared
    from app.queue import jobs
    whole_second = datetime(2026, 11, 28, 3, 0, 0, tzinfo=timezone.utc)  # no microseconds
    with store.write() as conn:
        conn.execute(jobs.delete())
        insert = Prepared(jobs.insert().values(
            username=bindparam("u"), priority=0, state="pending", force=bindparam("f"), again=False,
            source="login", attempts=0, next_try_at=bindparam("at"), created_at=bindparam("at"),
            updated_at=bindparam("at")), conn.dialect)
        insert.run(conn, {"u": "a", "f": True, "at": whole_second})
        insert.run_many(conn, [{"u": "b", "f": False, "at": whole_second.replace(microsecond=500)}])
        conn.execute(jobs.insert().values(username="core", priority=0, state="done", force=True, again=False,
                                          source="login", attempts=0, next_try_at=whole_second,
                                          created_at=whole_second, updated_at=whole_second))
    with store.engine.connect() as conn:
        stored = dict(conn.exec_driver_sql("SELECT username, next_try_at FROM jobs").all())
        assert stored["a"] == stored["core"]  # the very same text on SQLite
        conn.execute(jobs.delete().where(jobs.c.username == "core"))
        core = conn.execute(select(jobs.c.username, jobs.c.force, jobs.c.next_try_at)
                            .where(jobs.c.next_try_at <= whole_second)).all()
        assert [(u, bool(f)) for u, f, _ in core] == [("a", True)]  # b is later, by 500 µs
        due = Prepared(select(jobs.c.username, jobs.c.next_try_at).where(jobs.c.next_try_at <= bindparam("now"))
                       .order_by(jobs.c.username), conn.dialect)
        rows = due.all(conn, {"now": whole_second.replace(microsecond=500)})
    assert [r["username"] for r in rows] == ["a", "b"]
    assert rows[0]["next_try_at"].replace(tzinfo=None) == whole_second.replace(tzinfo=None)
    with pytest.raises(ValueError, match="expanding"):
        Prepared(select(jobs).where(jobs.c.id.in_(bindparam("ids", expanding=True))), conn.dialect)


def test_a_prepared_statement_refuses_a_call_missing_a_parameter(store):
    from sqlalchemy import bindparam

    from app.prepared import Prepared
    from app.store import user_state
    with store.engine.connect() as conn:
        stmt = Prepared(user_state.update().where(user_state.c.username == bindparam("u"))
                        .values(last_error=bindparam("e")), conn.dialect)
        stmt.run(conn, {"u": "nobody", "e": "x"})
        with pytest.raises(ValueError, match="differ"):
            stmt.run(conn, {"u": "nobody"})  # would have set last_error to NULL


def _first_use(url, barrier, errors):
    barrier.wait()
    try:
        Store(url).last_success("nobody")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(exc).__name__}: {exc}"[:300])


def test_processes_starting_together_create_the_schema_once(database_url):
    """gunicorn's workers start together on a fresh database: none may fail creating tables."""
    import multiprocessing
    schema = None
    if database_url.startswith("postgresql"):  # a schema of its own, still empty
        from tests.conftest import PG_URL
        schema = f"avsync_{uuid.uuid4().hex[:10]}"
        admin = sqlalchemy.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        database_url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(database_url, barrier, errors)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    found = []
    while not errors.empty():
        found.append(errors.get())
    if schema:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
    assert found == []


# -- per-thread connections for the hot statements (app/thread_conns.py), SQLite only --------

def _hot_conn(store):
    with store.hot_read() as conn:
        return conn.connection


def test_hot_connections_are_one_per_thread_and_renewed_after_dispose(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/state.db")
    mine = _hot_conn(store)
    assert _hot_conn(store) is mine
    other = []
    thread = threading.Thread(target=lambda: other.append(_hot_conn(store)))
    thread.start()
    thread.join()
    assert other[0] is not mine
    store.dispose()
    with pytest.raises(Exception, match="closed"):
        mine.execute("SELECT 1")
    assert store.last_success("nobody") is None  # a fresh connection
    store.dispose()


def test_a_failed_hot_write_leaves_nothing_and_no_open_transaction(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/state.db")
    queue = LoginQueue(store)
    with pytest.raises(RuntimeError), store.hot_write() as conn:
        queue._statement(conn, "delivery").rows(conn, {"id": "d1", "received_at": utcnow()})
        raise RuntimeError("the request died half-way")
    assert not _hot_conn(store).in_transaction
    assert queue.enqueue("jdoe", delivery_id="d1")  # d1 was rolled back with the rest
    assert queue.job_for("jdoe")["state"] == "pending"
    store.dispose()


def test_a_forked_child_opens_its_own_hot_connection_and_leaves_the_parents(tmp_path):
    import multiprocessing
    store = Store(f"sqlite:///{tmp_path}/state.db")
    queue = LoginQueue(store)
    assert queue.enqueue("parent-before")
    parents = _hot_conn(store)
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    child = ctx.Process(target=_child_enqueues, args=(store, queue, parents, errors))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and errors.empty(), errors.get() if not errors.empty() else child.exitcode
    assert queue.enqueue("parent-after")  # the child closed nothing of ours
    assert _hot_conn(store) is parents
    assert {queue.job_for(n)["state"] for n in ("parent-before", "child", "parent-after")} == {"pending"}
    store.dispose()


def _child_enqueues(store, queue, parents, errors):
    try:
        assert queue.enqueue("child")
        assert _hot_conn(store) is not parents
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(exc).__name__}: {exc}"[:300])
