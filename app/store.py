"""The database (SQLAlchemy Core): what the service knows of each user.

SQLite by default (WAL, so readers never wait for the one writer), PostgreSQL when several
replicas share the state. The engine is created lazily and again after a fork: a pooled
connection must never be shared between gunicorn workers.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import (Column, DateTime, Index, Integer, MetaData, String, Table, Text, bindparam, func,
                        inspect, literal, select, text)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from .database import SQLITE_BUSY_MS, make_engine, sqlite_setup
from .prepared import Prepared
from .thread_conns import HotConnection, ThreadConnections

metadata = MetaData()
SCHEMA_LOCK_KEY = 0x61766174  # pg_advisory_xact_lock key while the schema is created ('avat')

user_state = Table(
    "user_state", metadata,
    Column("username", String(255), primary_key=True),
    Column("photo_sha256", String(64)),        # of the raw directory bytes, set after Jira confirmed
    Column("avatar_id", String(32)),           # the avatar this service selected
    Column("created_avatar_ids", Text, nullable=False, default="[]"),  # ours, not yet deleted
    # Uploaded for this photo but not yet confirmed selected: a re-run after a crash finishes
    # the job with it instead of uploading the same photo twice.
    Column("pending_avatar_id", String(32)),
    Column("pending_sha256", String(64)),
    Column("directory", String(255)),
    Column("marker", String(255)),             # the entry's change marker when last settled
    Column("last_outcome", String(32)),
    Column("last_error", Text),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_success_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_source", String(16)),         # login, created, updated, sweep, admin
    Column("last_duration_ms", Integer),
    Index("user_state_last_attempt", "last_attempt_at"),  # the dashboard's recent syncs
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; they were stored in UTC."""
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def user_key(username: str) -> str:
    """How a user is keyed in every table. LDAP matches names case-insensitively and Jira
    looks usernames up the same way, so 'JDoe' in AD and 'jdoe' in Jira are one user."""
    return username.lower()


@dataclass
class UserState:
    username: str
    photo_sha256: str | None = None
    avatar_id: str | None = None
    created_avatar_ids: list[str] = field(default_factory=list)
    pending_avatar_id: str | None = None
    pending_sha256: str | None = None
    directory: str | None = None
    marker: str | None = None
    last_outcome: str | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None  # last sync that ended in a settled outcome (not failed)
    last_source: str | None = None
    last_duration_ms: int | None = None

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("last_attempt_at", "last_success_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


WRITE_WAIT_SECONDS = 5.0  # how long a writer waits for another one before giving up (StoreBusy)


class StoreBusy(Exception):
    """Another writer held the database longer than WRITE_WAIT_SECONDS."""


# What "the database cannot be used now" looks like (locked, full, unreachable, busy): the
# doors answer 503, a sync reports 'database: ...', a worker waits; never a traceback.
UNAVAILABLE = (SQLAlchemyError, sqlite3.Error, StoreBusy)


class Store:
    def __init__(self, database_url: str):
        self.url = database_url
        self._engine: Engine | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._thread_write_lock = threading.Lock()
        self._built: dict = {}
        self._lock_file: int | None = None
        self._lock_file_pid: int | None = None
        database = make_url(database_url).database if database_url.startswith("sqlite") else None
        self._lock_path = f"{database}.lock" if database and database != ":memory:" else None
        # the hot statements on SQLite (app/thread_conns.py says why); None: the pool's
        self._hot = ThreadConnections(database, _hot_setup) if self._lock_path else None

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    if self._engine is not None:
                        self._engine.dispose(close=False)  # the parent's connections stay the parent's
                    self._engine = make_engine(self.url)
                    self._create_schema(self._engine)
                    self._pid = os.getpid()
        return self._engine

    def _create_schema(self, engine: Engine) -> None:
        """Tables, and columns a newer version added. Serialised across processes: gunicorn's
        workers start together, and on SQLite two racing CREATE TABLEs fail one of them with
        'database is locked' at once (a read upgrading to a write gets no busy wait)."""
        sqlite_file = engine.dialect.name == "sqlite" and self._lock_path is not None
        with self._file_lock() if sqlite_file else nullcontext(), engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # the same race, between replicas too
                conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            metadata.create_all(conn)
            _add_missing_columns(conn)

    def dispose(self) -> None:
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None
        if self._hot is not None:
            self._hot.close_all()

    @contextmanager
    def write(self):
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)
        so a read-modify-write never fails half-way with 'database is locked'.

        SQLite writers also queue on a thread lock plus flock() on a lock file first: when two
        processes want the database, SQLite's own busy handler sleeps 1, 2, 5 ... 100 ms
        between tries, while a blocked flock() wakes the moment the holder lets go."""
        engine = self.engine
        if engine.dialect.name != "sqlite" or self._lock_path is None:
            with engine.connect() as conn, conn.begin():
                yield conn
            return
        with self._write_lock():
            with engine.connect() as conn:
                conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    yield conn

    @contextmanager
    def hot_write(self):
        """write() for statements that are all Prepared (the webhook's insert, a job's claim and
        the user's update): on SQLite, on this thread's own connection, outside the pool; the
        same locks, the same BEGIN."""
        dialect = self.engine.dialect
        if self._hot is None:
            with self.write() as conn:
                yield conn
            return
        conn = self._hot.get()
        with self._write_lock():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield HotConnection(conn, dialect)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT can leave it open
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def hot_read(self):
        """A connection for Prepared reads (the login debounce, a user's state), as hot_write's."""
        dialect = self.engine.dialect
        if self._hot is None:
            with self.engine.connect() as conn:
                yield conn
            return
        yield HotConnection(self._hot.get(), dialect)  # autocommit: the SELECT is its own transaction

    @contextmanager
    def _write_lock(self):
        """The one SQLite writer: this process's thread lock, then the flock across processes,
        each waited for at most WRITE_WAIT_SECONDS (a webhook must answer, 503 if need be)."""
        if not self._thread_write_lock.acquire(timeout=WRITE_WAIT_SECONDS):
            raise StoreBusy(f"another writer of this process held the database for {WRITE_WAIT_SECONDS:g}s")
        try:
            with self._file_lock():
                yield
        finally:
            self._thread_write_lock.release()

    @contextmanager
    def _file_lock(self):
        """flock() on the lock file beside the SQLite database: one writer across processes.
        Blocking when free; when held, tried again every half millisecond until the deadline
        (a blocking flock() cannot be given one)."""
        fd = self._lock_fd()
        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + WRITE_WAIT_SECONDS
                elif now > deadline:
                    raise StoreBusy(f"another process held the database for {WRITE_WAIT_SECONDS:g}s") from None
                time.sleep(0.0005)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd(), fcntl.LOCK_UN)

    def _lock_fd(self) -> int:
        if self._lock_file is None or self._lock_file_pid != os.getpid():
            # flock belongs to the open file: each process needs its own open, after fork
            self._lock_file = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_file_pid = os.getpid()
        return self._lock_file

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def check_writable(self, timeout: float = 2.0) -> None:
        """Raise unless a write could start now: SQLite's write lock can be had within
        ``timeout``; PostgreSQL is not a read-only standby. Writes nothing."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                raw = conn.connection.dbapi_connection  # autocommit: BEGIN is ours (see sqlite_setup)
                raw.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
                try:
                    raw.execute("BEGIN IMMEDIATE")
                    raw.execute("ROLLBACK")
                finally:
                    raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            elif conn.execute(text("SHOW transaction_read_only")).scalar() == "on":
                raise RuntimeError("PostgreSQL is read-only here (a standby?)")

    # -- user state --------------------------------------------------------------------

    def get(self, username: str) -> UserState | None:
        with self.hot_read() as conn:
            row = self._statements(conn)["get"].first(conn, {"p_username": user_key(username)})
        return None if row is None else _state(row)

    def last_success(self, username: str) -> datetime | None:
        """Only the time of the user's last settled sync: the login debounce's one read."""
        with self.hot_read() as conn:
            row = self._statements(conn)["last_success"].first(conn, {"p_username": user_key(username)})
        return aware(row["last_success_at"]) if row else None

    def get_many(self, usernames) -> dict[str, UserState]:
        """States of many users in one query (a sweep reads a page at a time), by user_key."""
        names = [user_key(n) for n in usernames]
        if not names:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(user_state).where(user_state.c.username.in_(names))).mappings().all()
        return {row["username"]: _state(row) for row in rows}

    def recent(self, limit: int = 20) -> list[UserState]:
        """The users whose sync ended last, newest first (the dashboard's list)."""
        query = select(user_state).where(user_state.c.last_outcome.is_not(None)) \
            .order_by(user_state.c.last_attempt_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_state(row) for row in conn.execute(query).mappings()]

    def search(self, prefix: str, limit: int = 20) -> list[UserState]:
        """Users whose name starts with ``prefix`` (case-insensitive), by name."""
        escaped = user_key(prefix).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = select(user_state).where(user_state.c.username.like(escaped + "%", escape="\\")) \
            .order_by(user_state.c.username).limit(limit)
        with self.engine.connect() as conn:
            return [_state(row) for row in conn.execute(query).mappings()]

    def last_success_at(self) -> datetime | None:
        with self.engine.connect() as conn:
            return aware(conn.execute(select(func.max(user_state.c.last_success_at))).scalar())

    def counts_by_outcome(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return dict(conn.execute(select(user_state.c.last_outcome, func.count())
                                     .group_by(user_state.c.last_outcome)).all())

    def remember_created(self, username: str, avatar_id: str | None, photo_sha256: str | None = None) -> None:
        """Note an avatar this service created, before selecting it, so it is never orphaned
        (``avatar_id`` None: an upload of that photo is about to start)."""
        def change(state: UserState):
            if avatar_id is not None and avatar_id not in state.created_avatar_ids:
                state.created_avatar_ids.append(avatar_id)
            state.pending_avatar_id, state.pending_sha256 = avatar_id, photo_sha256
        self._update(username, change)

    def record_success(self, username: str, *, outcome: str, photo_sha256: str, avatar_id: str,
                       directory: str, marker: str | None = None, also=None, source: str | None = None,
                       duration_ms: int | None = None) -> None:
        """Jira confirmed ``avatar_id`` as the user's picture for the photo hashing to ``photo_sha256``.
        ``also(conn)``: more to write in the same transaction."""
        def change(state: UserState):
            state.photo_sha256, state.avatar_id, state.directory = photo_sha256, avatar_id, directory
            state.marker = marker
            state.last_outcome, state.last_error = outcome, None
            state.last_success_at = state.last_attempt_at
            state.pending_avatar_id = state.pending_sha256 = None
            if avatar_id not in state.created_avatar_ids:
                state.created_avatar_ids.append(avatar_id)
            state.last_source, state.last_duration_ms = source, duration_ms
        self._update(username, change, also)

    def forget_created(self, username: str, avatar_ids) -> None:
        gone = set(avatar_ids)
        self._update(username, lambda s: setattr(
            s, "created_avatar_ids", [a for a in s.created_avatar_ids if a not in gone]))

    def record_outcome(self, username: str, outcome: str, error: str | None = None,
                       directory: str | None = None, success: bool = False, marker: str | None = None,
                       also=None, source: str | None = None, duration_ms: int | None = None) -> None:
        """``success``: a settled outcome; only then is ``marker`` kept (a failure proves nothing)."""
        def change(state: UserState):
            state.last_outcome, state.last_error = outcome, error
            if directory:
                state.directory = directory
            if success:
                state.last_success_at = state.last_attempt_at
                state.marker = marker
            state.last_source, state.last_duration_ms = source, duration_ms
        self._update(username, change, also)

    def delete(self, username: str) -> None:
        with self.write() as conn:
            conn.execute(user_state.delete().where(user_state.c.username == user_key(username)))

    def _update(self, username: str, change, also=None) -> None:
        """Read-modify-write one user's row in a transaction, the row locked against others."""
        now = utcnow()
        with self.hot_write() as conn:
            statements = self._statements(conn)
            # Make sure the row exists first: FOR UPDATE cannot lock a row that is not there yet.
            key = user_key(username)
            statements["ensure"].run(conn, {"p_username": key})
            state = _state(statements["lock_row"].first(conn, {"p_username": key}))
            state.last_attempt_at = now
            change(state)
            values = {f"p_{k}": v for k, v in state.__dict__.items()}
            values["p_created_avatar_ids"] = json.dumps(state.created_avatar_ids)
            statements["save"].run(conn, values)
            if also:
                also(conn)

    def _statements(self, conn) -> dict[str, Prepared]:
        """Built once per dialect: composing the statements costs more than running them."""
        dialect = conn.dialect
        built = self._built.get(dialect.name)
        if built is None:
            name = bindparam("p_username")
            insert = (pg_insert if dialect.name == "postgresql" else sqlite_insert)(user_state)
            ensure = insert.values(username=name, created_avatar_ids="[]", attempts=0) \
                .on_conflict_do_nothing(index_elements=["username"])
            get = select(user_state).where(user_state.c.username == name)
            lock_row = get.with_for_update() if dialect.name == "postgresql" else get
            fields = [c.name for c in user_state.columns if c.name not in ("username", "attempts")]
            save = user_state.update().where(user_state.c.username == name).values(
                {**{f: bindparam(f"p_{f}") for f in fields}, "attempts": user_state.c.attempts + 1})
            last_success = select(user_state.c.last_success_at).where(user_state.c.username == name)
            built = self._built[dialect.name] = {
                key: Prepared(stmt, dialect) for key, stmt in
                (("ensure", ensure), ("get", get), ("lock_row", lock_row), ("save", save),
                 ("last_success", last_success))}
        return built


def _hot_setup(dbapi_conn) -> None:
    """The hot connections (the webhook's, a job's claim) wait for SQLite's own lock no longer
    than for the flock: a database locked from outside answers 503, not a hung webhook."""
    sqlite_setup(dbapi_conn)
    dbapi_conn.execute(f"PRAGMA busy_timeout={int(WRITE_WAIT_SECONDS * 1000)}")


def _state(row) -> UserState:
    data = dict(row)
    data.pop("attempts", None)
    data["created_avatar_ids"] = json.loads(data["created_avatar_ids"] or "[]")
    for k in ("last_attempt_at", "last_success_at"):
        data[k] = aware(data[k])
    return UserState(**data)


def _add_missing_columns(conn) -> None:
    """Additive schema upgrade: columns added in a newer version appear in an older database.

    Every column added after the first release is nullable or has a default, so this is all
    the migration the schema has needed so far; anything else will need a real migration.
    """
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(conn.dialect)}"
            default = getattr(column.default, "arg", None)
            if default is not None and not callable(default):
                value = literal(default, column.type).compile(
                    dialect=conn.dialect, compile_kwargs={"literal_binds": True})
                ddl += f" DEFAULT {value} NOT NULL"
            conn.exec_driver_sql(ddl)
        for index in table.indexes:  # create_all makes indexes only with new tables
            index.create(conn, checkfirst=True)
