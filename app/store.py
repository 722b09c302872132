"""The database (SQLAlchemy Core): what the service knows of each user.

SQLite by default (WAL, so readers never wait for the one writer), PostgreSQL when several
replicas share the state. The engine is created lazily and again after a fork: a pooled
connection must never be shared between gunicorn workers. The tables are defined beside the
code that uses them (here, queue, sweep, schedule); their schema's history is Alembic's
(app/schema.py, app/migrations).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import overload

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import BindParameter, TextClause

from . import schema
from .database import make_engine, set_busy_timeout
from .per_process import PerProcess
from .schema import SchemaMismatch
from .sqlite_writer import WriterBusy, WriterLock

metadata = MetaData()
SCHEMA_LOCK_KEY = 0x61766174  # pg_advisory_xact_lock key while the schema is created ('avat')

user_state = Table(
    "user_state",
    metadata,
    Column("username", String(255), primary_key=True),
    Column("photo_sha256", String(64)),  # of the raw directory bytes, set after Jira confirmed
    Column("avatar_id", String(32)),  # the avatar this service selected
    Column("created_avatar_ids", Text, nullable=False, default="[]"),  # ours, not yet deleted
    # Uploaded for this photo but not yet confirmed selected: a re-run after a crash finishes
    # the job with it instead of uploading the same photo twice.
    Column("pending_avatar_id", String(32)),
    Column("pending_sha256", String(64)),
    Column("directory", String(255)),
    Column("marker", String(255)),  # the entry's change marker when last settled
    Column("last_outcome", String(32)),
    Column("last_error", Text),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_success_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_source", String(16)),  # login, created, updated, sweep, admin
    Column("last_duration_ms", Integer),
    Column("excluded", Boolean),  # an admin's opt-out: the user keeps their own picture (null: no)
    Index("user_state_last_attempt", "last_attempt_at"),  # the dashboard's recent syncs
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def aware(value: datetime) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; they were stored in UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


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
    excluded: bool = False  # an admin's opt-out (PUT /admin/users/<u>/exclusion)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("last_attempt_at", "last_success_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


# How long a write waits for another writer. One user's write (a webhook's queue insert, a
# sync's notes) gives up after USER_WAIT_SECONDS: a door answers 503, a sync fails and is
# retried. Bulk work (a sweep's pages, its lease, the schedule) waits WAIT_SECONDS.
USER_WAIT_SECONDS = 5.0
PROBE_WAIT_SECONDS = 2.0
WAIT_SECONDS = 30.0


StoreBusy = WriterBusy  # another writer held the database longer than the caller would wait


# What "the database cannot be used now" looks like (locked, full, unreachable, busy, a schema
# of another version): the doors answer 503, a sync reports 'database: ...', a worker waits;
# never a traceback.
UNAVAILABLE = (SQLAlchemyError, sqlite3.Error, StoreBusy, SchemaMismatch)


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
        engine = self._engine_within(wait)
        if self._writer is None:
            with engine.connect() as conn, conn.begin():
                yield conn
            return
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
        with self._engine_within(wait).connect() as conn:
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
        with self._engine_within(self.user_wait).connect() as conn:
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
            row = conn.execute(_GET, {"p_username": user_key(username)}).mappings().first()
        return None if row is None else _state(row)

    def last_success(self, username: str) -> datetime | None:
        """Only the time of the user's last settled sync: the login debounce's one read."""
        with self.read() as conn:
            value = conn.execute(_LAST_SUCCESS, {"p_username": user_key(username)}).scalar()
        return aware(value)

    def get_many(self, usernames) -> dict[str, UserState]:
        """States of many users in one query (a sweep reads a page at a time), by user_key."""
        names = [user_key(n) for n in usernames]
        if not names:
            return {}
        with self.read() as conn:
            rows = conn.execute(select(user_state).where(user_state.c.username.in_(names))).mappings().all()
        return {row["username"]: _state(row) for row in rows}

    def recent(self, limit: int = 20) -> list[UserState]:
        """The users whose sync ended last, newest first (the dashboard's list)."""
        query = (
            select(user_state)
            .where(user_state.c.last_outcome.is_not(None))
            .order_by(user_state.c.last_attempt_at.desc())
            .limit(limit)
        )
        with self.read() as conn:
            return [_state(row) for row in conn.execute(query).mappings()]

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
            return [_state(row) for row in conn.execute(query).mappings()]

    def last_success_at(self) -> datetime | None:
        with self.read() as conn:
            return aware(conn.execute(select(func.max(user_state.c.last_success_at))).scalar())

    def counts_by_outcome(self) -> dict[str, int]:
        with self.read() as conn:
            return dict(
                conn.execute(select(user_state.c.last_outcome, func.count()).group_by(user_state.c.last_outcome)).all()
            )

    def remember_created(self, username: str, avatar_id: str | None, photo_sha256: str | None = None) -> None:
        """Note an avatar this service created, before selecting it, so it is never orphaned
        (``avatar_id`` None: an upload of that photo is about to start).

        One statement, the id appended to the list in SQL (update()'s read, change and write
        was three, and on PostgreSQL BEGIN and COMMIT two round trips more: a sweep notes every
        new avatar here, between crop-confirm and select)."""
        values = {"key": user_key(username), "id": avatar_id, "sha": photo_sha256, "now": utcnow()}
        values["ids"] = json.dumps([avatar_id] if avatar_id is not None else [])
        with self.one_statement(wait=self.user_wait) as conn:
            conn.execute(_REMEMBER[conn.dialect.name], values)

    def forget_created(self, username: str, avatar_ids) -> None:
        gone = set(avatar_ids)
        with self.transaction(wait=self.user_wait) as tx:
            self.update(
                tx,
                username,
                lambda s: setattr(s, "created_avatar_ids", [a for a in s.created_avatar_ids if a not in gone]),
            )

    def set_excluded(self, username: str, excluded: bool) -> None:
        """An admin's opt-out, on or off. The change marker is forgotten, so that the next
        sweep looks at the user again instead of trusting what was settled before."""
        key = user_key(username)
        with self.transaction(wait=self.user_wait) as tx:
            tx.execute(_ensure(tx.dialect.name), {"p_username": key})
            tx.execute(user_state.update().where(user_state.c.username == key).values(excluded=excluded, marker=None))

    def delete(self, username: str) -> None:
        with self.transaction(wait=self.user_wait) as tx:
            tx.execute(user_state.delete().where(user_state.c.username == user_key(username)))

    def update(self, tx: Connection, username: str, change: Callable[[UserState], None]) -> None:
        """Read-modify-write one user's row in the caller's transaction, the row locked
        against others (FOR UPDATE on PostgreSQL; SQLite's writer holds the whole database).
        Two statements, whether the row is new or not (a sweep writes twice per new avatar)."""
        key = user_key(username)
        locked = _GET.with_for_update() if tx.dialect.name == "postgresql" else _GET
        row = tx.execute(locked, {"p_username": key}).mappings().first()
        if row is None:
            state = UserState(key, last_attempt_at=utcnow())
            change(state)
            # another transaction may have created it meanwhile (PostgreSQL): then it is updated below
            if tx.execute(_INSERT[tx.dialect.name], _values(state) | {"p_attempts": 1}).first():
                return  # (RETURNING, not rowcount: psycopg 3 gives -1 for this statement)
            row = tx.execute(locked, {"p_username": key}).mappings().one()
        state = _state(row)
        state.last_attempt_at = utcnow()
        change(state)
        tx.execute(_SAVE, _values(state))

    def update_many(self, tx: Connection, changes: list[tuple[str, Callable[[UserState], None]]]) -> None:
        """update() for many users in the caller's transaction: their rows read in one statement
        and written in one (a worker records a sweep batch's outcomes together). A user without
        a row yet, or named twice, goes through update(), as does a single user (a login's job:
        no read more than update() makes)."""
        if len(changes) == 1:
            self.update(tx, *changes[0])
            return
        keys = [user_key(username) for username, _ in changes]
        query = select(user_state).where(user_state.c.username.in_(keys)).order_by(user_state.c.username)
        if tx.dialect.name == "postgresql":
            query = query.with_for_update()  # locked in one order: two batches cannot deadlock
        stored = {row["username"]: _state(row) for row in tx.execute(query).mappings()}
        now, saves, later = utcnow(), [], []
        for key, (username, change) in zip(keys, changes, strict=True):
            state = stored.pop(key, None)
            if state is None:  # new, or already changed above
                later.append((username, change))
                continue
            state.last_attempt_at = now
            change(state)
            saves.append(_values(state))
        if saves:
            tx.execute(_SAVE, saves)
        for username, change in later:
            self.update(tx, username, change)


def _values(state: UserState) -> dict:
    values = {f"p_{k}": v for k, v in state.__dict__.items()}
    values["p_created_avatar_ids"] = json.dumps(state.created_avatar_ids)
    return values


_NAME: BindParameter[str] = bindparam("p_username")
_GET = select(user_state).where(user_state.c.username == _NAME)
_LAST_SUCCESS = select(user_state.c.last_success_at).where(user_state.c.username == _NAME)
_SAVE = (
    user_state.update()
    .where(user_state.c.username == _NAME)
    .values(
        {
            **{c.name: bindparam(f"p_{c.name}") for c in user_state.columns if c.name not in ("username", "attempts")},
            "attempts": user_state.c.attempts + 1,
        }
    )
)
_ENSURE = {
    dialect: insert(user_state)
    .values(username=_NAME, created_avatar_ids="[]", attempts=0)
    .on_conflict_do_nothing(index_elements=["username"])
    for dialect, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_INSERT = {  # a whole new row; nothing when it exists
    dialect: insert(user_state)
    .values({c.name: bindparam(f"p_{c.name}") for c in user_state.columns})
    .on_conflict_do_nothing(index_elements=["username"])
    .returning(user_state.c.username)
    for dialect, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}

# remember_created(): a new row as update() would insert it, or the row's id list with the id
# appended once (a JSON array in a text column: SQLite's json1, PostgreSQL's jsonb)
_REMEMBER_SQL = (
    "INSERT INTO user_state (username, created_avatar_ids, pending_avatar_id, pending_sha256, "
    "last_attempt_at, attempts, excluded) VALUES (:key, :ids, :id, :sha, :now, 1, false) "
    "ON CONFLICT (username) DO UPDATE SET pending_avatar_id = :id, pending_sha256 = :sha, "
    "last_attempt_at = :now, attempts = user_state.attempts + 1, created_avatar_ids = CASE "
    "WHEN {id} IS NULL OR {holds} THEN user_state.created_avatar_ids ELSE {appended} END"
)
_IDS = "coalesce(nullif(user_state.created_avatar_ids, ''), '[]')"


def _remember(id_: str, holds: str, appended: str) -> TextClause:
    sql = _REMEMBER_SQL.format(id=id_, holds=holds, appended=appended)
    return text(sql).bindparams(bindparam("now", type_=DateTime(timezone=True)))


_REMEMBER = {
    "sqlite": _remember(
        ":id",
        holds=f"EXISTS (SELECT 1 FROM json_each({_IDS}) WHERE value = :id)",
        appended=f"json_insert({_IDS}, '$[#]', :id)",
    ),
    "postgresql": _remember(
        "CAST(:id AS text)",
        holds=f"CAST({_IDS} AS jsonb) @> jsonb_build_array(CAST(:id AS text))",
        appended=f"CAST(CAST({_IDS} AS jsonb) || jsonb_build_array(CAST(:id AS text)) AS text)",
    ),
}


def _ensure(dialect: str):
    return _ENSURE[dialect]


def _state(row) -> UserState:
    data = dict(row)
    data.pop("attempts", None)
    data["created_avatar_ids"] = json.loads(data["created_avatar_ids"] or "[]")
    data["excluded"] = bool(data["excluded"])
    for k in ("last_attempt_at", "last_success_at"):
        data[k] = aware(data[k])
    return UserState(**data)
