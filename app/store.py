"""The database (SQLAlchemy Core): what the service knows of each user.

SQLite by default (WAL, so readers never wait for the one writer), PostgreSQL when several
replicas share the state. The engine is created lazily and again after a fork: a pooled
connection must never be shared between gunicorn workers. The tables are defined beside the
code that uses them (app/states.py, queue, sweep, schedule); their schema's history is Alembic's
(app/schema.py, app/migrations).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from . import database_deadline, schema, states
from .database import make_engine, set_busy_timeout
from .known_down import DatabaseDown, KnownDown
from .per_process import PerProcess
from .schema import SchemaMismatch
from .sqlite_writer import WriterBusy, WriterLock
from .states import UserState, user_state
from .tables import aware, user_key

SCHEMA_LOCK_KEY = 0x61766174  # pg_advisory_xact_lock key while the schema is created ('avat')


# How long a write waits for another writer. One user's write (a webhook's queue insert, a
# sync's notes) gives up after USER_WAIT_SECONDS: a door answers 503, a sync fails and is
# retried. Bulk work (a sweep's pages, its lease, the schedule) waits WAIT_SECONDS.
USER_WAIT_SECONDS = 5.0
PROBE_WAIT_SECONDS = 2.0
WAIT_SECONDS = 30.0
FAIL_FAST_SECONDS = 5.0  # the login path's uses fail at once this long after one failed (as Retry-After)


StoreBusy = WriterBusy  # another writer held the database longer than the caller would wait


# What "the database cannot be used now" looks like (locked, full, unreachable, busy, a schema
# of another version): the doors answer 503, a sync reports 'database: ...', a worker waits;
# never a traceback.
UNAVAILABLE = (SQLAlchemyError, sqlite3.Error, StoreBusy, SchemaMismatch, DatabaseDown, database_deadline.NoAnswer)


class Store:
    """The one way into the database: ``transaction()`` to write, ``read()`` to read, both on
    SQLAlchemy's own pool and statement cache."""

    def __init__(self, database_url: str):
        self.url = database_url
        self.sqlite = make_url(database_url).get_backend_name() == "sqlite"
        self.user_wait = USER_WAIT_SECONDS  # one user's writes (tests shorten it)
        self.probe_wait = PROBE_WAIT_SECONDS  # a readiness probe's wait for the write lock
        # the parent's pooled connections stay the parent's: a child lets go of them unclosed
        self._engine = PerProcess(self._make_engine, inherited=lambda engine: engine.dispose(close=False))
        database = make_url(database_url).database if self.sqlite else None
        # SQLite writers queue here first (app/sqlite_writer.py says why); in memory: one process
        self._writer = WriterLock(database if database and database != ":memory:" else None) if self.sqlite else None
        # ``with store.fail_fast:`` around the login path's reads and writes (app/known_down.py);
        # on SQLite a failure is a lock held past the caller's wait or a full disk, each try
        # already bounded by that wait, and a lock let go is used at once
        self.fail_fast: AbstractContextManager = (
            nullcontext() if self.sqlite else KnownDown(FAIL_FAST_SECONDS, UNAVAILABLE)
        )

    @property
    def engine(self) -> Engine:
        """Made on first use in each process (never shared across a fork), after the schema is
        checked: an empty database is created at the current revision (app/schema.py)."""
        return self._engine.get()

    def _engine_within(self, wait: float) -> Engine:
        """The engine; if this process must make it first, its schema check waits for another
        writer at most ``wait`` too (a restarted service's first probe or webhook, meeting a
        held write lock, answers within its own wait, not the schema check's 30 s)."""
        return self._engine.peek() or self._engine.get(lambda: self._make_engine(wait))

    def _make_engine(self, wait: float = WAIT_SECONDS) -> Engine:
        engine = make_engine(self.url, wal_wait=wait)
        try:
            with self._schema_lock(engine, wait) as conn:
                schema.ensure(conn)
        except BaseException:
            engine.dispose()
            raise
        return engine

    @classmethod
    @contextmanager
    def _schema_lock(cls, engine: Engine, wait: float = WAIT_SECONDS) -> Iterator[Connection]:
        """A write transaction in which one process at a time (replicas included) looks at the
        schema and changes it: processes starting together must not both create it."""
        with cls._begin(engine, wait) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            yield conn

    def upgrade_schema(self) -> tuple[str | None, str]:
        """`db upgrade`: the revision before and after, on a connection of its own (the
        service's own use refuses a schema of another version)."""
        engine = make_engine(self.url)
        try:
            with self._schema_lock(engine) as conn:
                return schema.upgrade(conn)
        finally:
            engine.dispose()

    def describe_schema(self) -> str:
        """`db current`: the database's revision, and whether it is this version's."""
        engine = make_engine(self.url)
        try:
            with engine.connect() as conn:
                return schema.describe(conn)
        finally:
            engine.dispose()

    def dispose(self) -> None:
        engine = self._engine.peek()
        if engine is not None:
            engine.dispose()
        self._engine.reset()

    @contextmanager
    def transaction(self, wait: float = WAIT_SECONDS) -> Iterator[Connection]:
        """A write transaction, committed when the block ends (rolled back if it raises).

        On SQLite it takes the write lock up front (BEGIN IMMEDIATE), so a read-modify-write
        never fails half-way with 'database is locked', after queueing as the one writer
        (app/sqlite_writer.py). Any wait lasts at most ``wait`` seconds (StoreBusy, or
        SQLite's 'database is locked' for a writer from outside: a door answers 503).
        """
        if self._writer is None:
            with database_deadline.use(), self._engine_within(wait).connect() as conn, conn.begin():
                yield conn
            return
        engine = self._engine_within(wait)
        with self._writer.hold(wait), self._begin(engine, wait) as conn:
            yield conn

    @contextmanager
    def one_statement(self, wait: float = WAIT_SECONDS) -> Iterator[Connection]:
        """For a write that is a single statement: on PostgreSQL in autocommit, where the
        statement is atomic by itself and BEGIN and COMMIT would be two more round trips (a
        first login's queue write is its one write); on SQLite a transaction() like any write."""
        if self.sqlite:
            with self.transaction(wait) as conn:
                yield conn
            return
        with database_deadline.use(), self._engine_within(wait).connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    @staticmethod
    @contextmanager
    def _begin(engine: Engine, wait: float) -> Iterator[Connection]:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                set_busy_timeout(conn, wait)
                conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads; what it sees is consistent within one statement. (Reads never
        wait for a writer; the first use in a process waits ``user_wait`` at most.)"""
        with database_deadline.use(), self._engine_within(self.user_wait).connect() as conn:
            yield conn

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(select(1))

    def check_writable(self) -> None:
        """Raise unless a write could start now: SQLite's write lock can be had within
        ``probe_wait``; PostgreSQL is not a read-only standby. Writes nothing."""
        if self.sqlite:
            with self.transaction(wait=self.probe_wait):
                return
        with self.read() as conn:
            if conn.execute(text("SHOW transaction_read_only")).scalar() == "on":
                raise RuntimeError("PostgreSQL is read-only here (a standby?)")

    # -- user state ----------------------------------------------------------------------

    def get(self, username: str) -> UserState | None:
        with self.read() as conn:
            row = conn.execute(states.GET, {"p_username": user_key(username)}).mappings().first()
        return None if row is None else states.from_row(row)

    def last_success(self, username: str) -> datetime | None:
        """Only the time of the user's last settled sync: the login debounce's one read."""
        with self.read() as conn:
            value = conn.execute(states.LAST_SUCCESS, {"p_username": user_key(username)}).scalar()
        return aware(value)

    def get_many(self, usernames) -> dict[str, UserState]:
        """States of many users in one query (a sweep reads a page at a time), by user_key."""
        names = [user_key(n) for n in usernames]
        if not names:
            return {}
        with self.read() as conn:
            rows = conn.execute(select(user_state).where(user_state.c.username.in_(names))).mappings().all()
        return {row["username"]: states.from_row(row) for row in rows}

    def recent(self, limit: int = 20) -> list[UserState]:
        """The users whose sync ended last, newest first (the dashboard's list)."""
        query = (
            select(user_state)
            .where(user_state.c.last_outcome.is_not(None))
            .order_by(user_state.c.last_attempt_at.desc())
            .limit(limit)
        )
        with self.read() as conn:
            return [states.from_row(row) for row in conn.execute(query).mappings()]

    def search(self, prefix: str, limit: int = 20) -> list[UserState]:
        """Users whose name starts with ``prefix`` (case-insensitive), by name."""
        escaped = user_key(prefix).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = (
            select(user_state)
            .where(user_state.c.username.like(escaped + "%", escape="\\"))
            .order_by(user_state.c.username)
            .limit(limit)
        )
        with self.read() as conn:
            return [states.from_row(row) for row in conn.execute(query).mappings()]

    def last_success_at(self) -> datetime | None:
        with self.read() as conn:
            return aware(conn.execute(select(func.max(user_state.c.last_success_at))).scalar())

    def counts_by_outcome(self) -> dict[str, int]:
        with self.read() as conn:
            return dict(
                conn.execute(select(user_state.c.last_outcome, func.count()).group_by(user_state.c.last_outcome)).all()
            )

    def remember_created(self, username: str, avatar_id: str, photo_sha256: str | None = None) -> None:
        """Note an avatar this service created, before selecting it, so it is never orphaned.

        One statement, the id appended to the list in SQL (update()'s read, change and write
        was three, and on PostgreSQL BEGIN and COMMIT two round trips more: a sweep notes every
        new avatar here, between crop-confirm and select)."""
        with self.one_statement(wait=self.user_wait) as conn:
            states.remember_created(conn, username, avatar_id, photo_sha256)

    def forget_created(self, username: str, avatar_ids) -> None:
        gone = set(avatar_ids)
        with self.transaction(wait=self.user_wait) as tx:
            states.update(
                tx,
                username,
                lambda s: setattr(s, "created_avatar_ids", [a for a in s.created_avatar_ids if a not in gone]),
            )

    def set_excluded(self, username: str, excluded: bool) -> None:
        """An admin's opt-out, on or off. The change marker is forgotten, so that the next
        sweep looks at the user again instead of trusting what was settled before."""
        key = user_key(username)
        with self.transaction(wait=self.user_wait) as tx:
            states.ensure(tx, key)
            tx.execute(user_state.update().where(user_state.c.username == key).values(excluded=excluded, marker=None))

    def delete(self, username: str) -> None:
        with self.transaction(wait=self.user_wait) as tx:
            tx.execute(user_state.delete().where(user_state.c.username == user_key(username)))
