"""The store, on SQLite and on the local PostgreSQL alike."""
from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import select

from app import states
from app.queue import LoginQueue, deliveries, jobs
from app.states import user_state
from app.store import Store
from app.tables import utcnow


@pytest.fixture
def store(database_url):
    s = Store(database_url)
    yield s
    s.dispose()


def set_fields(store, user, **fields):
    with store.transaction() as tx:
        states.update(tx, user, lambda state: state.__dict__.update(fields))


def test_an_update_writes_the_whole_state_and_counts_attempts(store):
    user = f"u-{uuid.uuid4().hex[:8]}"
    assert store.get(user) is None
    store.remember_created(user, "10500")
    set_fields(store, user, photo_sha256="ab" * 32, avatar_id="10500", last_outcome="updated",
               last_success_at=utcnow())
    state = store.get(user)
    assert (state.photo_sha256, state.avatar_id, state.created_avatar_ids) == ("ab" * 32, "10500", ["10500"])
    assert state.last_success_at.tzinfo is not None and state.last_attempt_at.tzinfo is not None
    set_fields(store, user, last_outcome="failed", last_error="Jira down")
    state = store.get(user)
    assert state.last_outcome == "failed" and state.last_error == "Jira down"
    assert state.photo_sha256 == "ab" * 32  # what the change did not touch stays


def test_remembering_an_avatar_appends_it_once_and_leaves_the_rest_of_the_row(store):
    """The pending mark is one statement that appends in SQL: a new row is what update() would
    insert, a known id is not added twice (nor taken for a prefix of another), and the
    columns it does not own stay as they were."""
    user = f"u-{uuid.uuid4().hex[:8]}"
    store.remember_created(user, "7", "aa")  # Jira made avatar 7 of photo aa; not selected yet
    state = store.get(user)
    assert (state.created_avatar_ids, state.pending_avatar_id, state.pending_sha256) == (["7"], "7", "aa")
    assert state.excluded is False and state.last_attempt_at.tzinfo is not None
    set_fields(store, user, photo_sha256="bb", avatar_id="9", last_outcome="updated", marker="m")
    for avatar_id, photo in (("10", "cc"), ("10", "cc"), ("1", "dd")):
        store.remember_created(user, avatar_id, photo)
    state = store.get(user)
    assert state.created_avatar_ids == ["7", "10", "1"]
    assert (state.pending_avatar_id, state.pending_sha256) == ("1", "dd")
    assert (state.photo_sha256, state.avatar_id, state.last_outcome, state.marker) == ("bb", "9", "updated", "m")
    with store.read() as conn:
        attempts = conn.execute(select(user_state.c.attempts).where(user_state.c.username == user)).scalar_one()
    assert attempts == 5  # each write counts, as update() counts them


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


def test_updates_racing_to_create_a_users_row_each_keep_their_change(store):
    """Transactions that each find no row for a new user all insert it at once: one insert
    wins, the others change the row it made (on PostgreSQL; SQLite's one writer serialises
    them), so every change and every attempt is kept."""
    user = f"r-{uuid.uuid4().hex[:8]}"
    barrier, errors = threading.Barrier(8), []

    def change(i):
        try:
            if store.sqlite:  # its transactions take the write lock at BEGIN, one at a time
                barrier.wait(timeout=10)
            with store.transaction() as tx:
                if not store.sqlite:  # all inside, each about to find no row
                    barrier.wait(timeout=10)
                states.update(tx, user, lambda s: s.created_avatar_ids.append(str(i)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=change, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(store.get(user).created_avatar_ids, key=int) == [str(i) for i in range(8)]
    with store.read() as conn:
        attempts = conn.execute(select(user_state.c.attempts).where(user_state.c.username == user)).scalar_one()
    assert attempts == 8


def test_many_updates_in_one_transaction_write_each_users_change(store):
    """A worker records a sweep batch's outcomes together: users with a row and without, and
    a user named twice, each get their change, as one update() at a time would give them."""
    known, new = f"k-{uuid.uuid4().hex[:8]}", f"N-{uuid.uuid4().hex[:8]}"
    store.remember_created(known, "1")
    with store.transaction() as tx:
        states.update_many(tx, [
            (known, lambda s: setattr(s, "last_outcome", "updated")),
            (new, lambda s: setattr(s, "avatar_id", "7")),
            (known.upper(), lambda s: s.created_avatar_ids.append("2")),
        ])
    assert (store.get(known).last_outcome, store.get(known).created_avatar_ids) == ("updated", ["1", "2"])
    assert store.get(new).avatar_id == "7" and store.get(new.lower()).last_attempt_at is not None
    with store.read() as conn:
        attempts = dict(conn.execute(select(user_state.c.username, user_state.c.attempts)
                                     .where(user_state.c.username.in_([known, new.lower()]))).all())
    assert attempts == {known: 3, new.lower(): 1}  # the remember, then two changes; one for the new


def test_usernames_are_one_user_whatever_their_case(store):
    user = f"JDoe-{uuid.uuid4().hex[:6]}"
    set_fields(store, user, avatar_id="1")
    assert store.get(user.lower()).avatar_id == "1"
    assert list(store.get_many([user.upper()])) == [user.lower()]
    store.delete(user.lower())
    assert store.get(user) is None


def _first_use(url, barrier, errors):
    barrier.wait()
    try:
        Store(url).last_success("nobody")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(exc).__name__}: {exc}"[:300])


def test_processes_starting_together_create_the_schema_once(database_url):
    """gunicorn's workers start together on a fresh database: none may fail creating tables."""
    from contextlib import nullcontext

    from tests.helpers import pg_schema
    # PostgreSQL: a schema of its own, still empty
    with pg_schema() if database_url.startswith("postgresql") else nullcontext(database_url) as url:
        found = _start_together(url)
    assert found == []


def test_a_new_connection_waits_for_a_writer_before_switching_to_wal(tmp_path):
    """SQLite fails the switch to WAL at once, without its busy handler, while another
    connection writes to a file not yet in WAL: the flake of processes starting together."""
    import sqlite3
    import time

    from app.database import sqlite_setup
    path = tmp_path / "state.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x)")  # a rollback-journal file, as SQLite makes it
    writer.execute("BEGIN IMMEDIATE")
    ended = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    ended.start()
    started = time.monotonic()
    conn = sqlite3.connect(path, timeout=5)
    sqlite_setup(conn)
    ended.join()
    assert time.monotonic() - started >= 0.25  # it waited for the writer, and then switched
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    writer.close()


def _start_together(database_url: str) -> list[str]:
    import multiprocessing
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
    return found


# -- transactions -------------------------------------------------------------------------

def test_a_failed_transaction_leaves_nothing_and_no_open_transaction(database_url):
    store = Store(database_url)
    queue = LoginQueue(store)
    with store.transaction() as tx:
        tx.execute(jobs.delete().where(jobs.c.username == "jdoe"))
        tx.execute(deliveries.delete().where(deliveries.c.id == "d1"))
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.execute(deliveries.insert().values(id="d1", received_at=utcnow()))
        raise RuntimeError("the request died half-way")
    assert queue.enqueue("jdoe", delivery_id="d1")  # d1 was rolled back with the rest
    assert queue.job_for("jdoe")["state"] == "pending"
    store.dispose()


def test_a_transaction_after_a_one_statement_write_is_still_all_or_nothing(store):
    """A login's queue write runs in autocommit on PostgreSQL (Store.one_statement); the pooled
    connection it used must come back to the next transaction() transactional again."""
    queue = LoginQueue(store)
    for _ in range(3):
        assert queue.enqueue("first-login")  # one statement
        with pytest.raises(RuntimeError), store.transaction() as tx:
            states.update(tx, "ghost", lambda state: None)
            raise RuntimeError("the request died half-way")
        assert store.get("ghost") is None
    assert queue.job_for("first-login")["state"] == "pending"


def test_a_forked_child_opens_its_own_connections_and_leaves_the_parents(tmp_path):
    import multiprocessing
    store = Store(f"sqlite:///{tmp_path}/state.db")
    queue = LoginQueue(store)
    assert queue.enqueue("parent-before")
    parents = store.engine
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    child = ctx.Process(target=_child_enqueues, args=(store, queue, parents, errors))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and errors.empty(), errors.get() if not errors.empty() else child.exitcode
    assert queue.enqueue("parent-after")  # the child closed nothing of ours
    assert store.engine is parents
    assert {queue.job_for(n)["state"] for n in ("parent-before", "child", "parent-after")} == {"pending"}
    store.dispose()


def _child_enqueues(store, queue, parents, errors):
    try:
        assert queue.enqueue("child")
        assert store.engine is not parents
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(exc).__name__}: {exc}"[:300])


def test_photo_server_tags_are_stored_in_the_callers_transaction_and_replaced(store):
    from sqlalchemy import select

    from app.http_photos import HttpPhotos, http_photos
    with store.transaction() as tx:
        HttpPhotos.remember(tx, [("JDoe", '"a"', "sha-a", 100), ("ann", '"n"', "sha-n", 4)])
    with store.transaction() as tx:
        HttpPhotos.remember(tx, [("jdoe", '"b"', "sha-b", 200)])
        tx.rollback()  # a batch whose outcomes are not written keeps no tag either
    with store.transaction() as tx:
        HttpPhotos.remember(tx, [("jdoe", '"c"', "sha-c", 300)])
    with store.read() as conn:
        rows = {r.username: (r.etag, r.photo_sha256, r.pixels) for r in conn.execute(select(http_photos))}
    assert rows == {"jdoe": ('"c"', "sha-c", 300), "ann": ('"n"', "sha-n", 4)}
