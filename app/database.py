"""Connecting to the database, and saying where it is: the engine for a URL (SQLite with WAL
and our own BEGIN, the state file owner-only; PostgreSQL through psycopg 3), and one-line
descriptions of the location and of a database error for people and logs (never a password,
never SQLAlchemy's statement dump)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError

from . import database_deadline

SQLITE_BUSY_MS = 30000


def sqlite_setup(dbapi_conn, wal_wait: float = SQLITE_BUSY_MS / 1000) -> None:
    """Every new SQLite connection."""
    dbapi_conn.isolation_level = None  # autocommit: BEGIN is emitted by us (the "begin" event)
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    _switch_to_wal(cur, wal_wait)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _switch_to_wal(cur, wait: float) -> None:
    """WAL mode, waiting for a writer as any statement would. SQLite does not call its busy
    handler for this switch: while another connection holds a write lock on a database not
    yet in WAL (processes starting together on a new file, one already creating the tables),
    the pragma fails at once with 'database is locked'. (A database once in WAL stays so, and
    the switch is then immediate.)"""
    deadline = time.monotonic() + wait
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def set_busy_timeout(conn, seconds: float) -> None:
    """How long this SQLite connection's next statements wait for another process's write
    lock (set only when it changes: the webhook waits less than the workers)."""
    ms = int(seconds * 1000)
    info = conn.connection.info
    if info.get("busy_ms", SQLITE_BUSY_MS) != ms:
        conn.connection.dbapi_connection.execute(f"PRAGMA busy_timeout={ms}")
        info["busy_ms"] = ms


def _create_private(path: Path) -> None:
    """The state file and its directory, readable by the service's user alone (the state
    names every user; SQLite gives its -wal and -shm files the database file's mode)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def describe_error(exc: Exception) -> str:
    """A database error in one line: the driver's own words, without SQLAlchemy's statement
    dump and link (which would fill logs and answers, and can carry row values)."""
    inner = getattr(exc, "orig", None) or exc
    return (str(inner).strip().splitlines() or [type(inner).__name__])[0][:300]


def describe_location(url: str) -> str:
    """Where the state lives, for people: the SQLite file, or PostgreSQL's host and database
    (never the password)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return (
            f"SQLite file {parsed.database}"
            if parsed.database not in (None, "", ":memory:")
            else "SQLite in memory (nothing is kept)"
        )
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
    return f"PostgreSQL {where}" + (f" as {parsed.username}" if parsed.username else "")


# libpq's settings where the database URL gives none of its own (any of them can be set there,
# as ?connect_timeout=10 say). A database that stops answering (a network partition, the dead
# address of a failover) fails a new connection within connect_timeout, and a statement on a
# connection it stranded within tcp_user_timeout (milliseconds; the query sent and never
# acknowledged) or the keepalives (the query acknowledged, its answer never coming): seconds,
# where TCP alone waits 15 minutes to 2 hours, holding a web thread or a worker. Text comes
# back as str whatever the database's encoding: psycopg hands an SQL_ASCII database's over
# as bytes, which SQLAlchemy's own first query cannot read.
KEEPALIVES = {"idle": "10", "interval": "5", "count": "3"}  # seconds, seconds, probes: both ends
TCP_USER_TIMEOUT_MS = "15000"
POSTGRES_DEFAULTS = {
    "connect_timeout": "5",
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    "keepalives": "1",
    **{f"keepalives_{name}": value for name, value in KEEPALIVES.items()},
    "client_encoding": "utf8",
}


def make_engine(url: str, wal_wait: float = SQLITE_BUSY_MS / 1000, **pool) -> Engine:
    """``wal_wait``: SQLite only, how long a new connection waits to switch a new file to WAL.
    ``pool``: PostgreSQL only, overrides of the pool's settings (the Jira budget's own)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_private(Path(parsed.database))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            sqlite_setup(dbapi_conn, wal_wait)

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            immediate = conn.get_execution_options().get("sqlite_immediate")
            # on the DB-API connection: an exec_driver_sql costs a whole execution context
            conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, the 'postgres' extra
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.update_query_dict({k: v for k, v in POSTGRES_DEFAULTS.items() if k not in parsed.query})
    # No server-side prepared statements (psycopg makes them of a statement run 5 times on a
    # connection): behind PgBouncer in transaction mode, the usual pooler in front of replicas,
    # the next transaction lands on another server session, where that name is missing or
    # another client's ("prepared statement "_pg3_0" already exists"), and SQLAlchemy's
    # rollback on checkin discards them anyway (docs/performance.md: what they saved).
    engine = create_engine(
        parsed,
        **{"pool_size": 5, "max_overflow": 10, "pool_timeout": 30, "connect_args": {"prepare_threshold": None}, **pool},
    )
    database_deadline.watch(engine)  # first: the listeners below send statements
    _server_probes_the_session(engine)
    _ping_when_idle(engine)
    return engine


# The server's side of the same, for each of the service's sessions. A replica cut off without
# a word (its network gone, its VM frozen) keeps its sessions on the server until the server's
# keepalives notice, by the OS's defaults after 2 hours: their locks with them, a user's row
# (every replica's sync of that user waiting on it) or a cluster Jira slot. Set per session:
# they need no superuser and no server configuration, and a proxy such as PgBouncer, which
# refuses startup options, passes a SET on.
SERVER_PROBES = {f"tcp_keepalives_{name}": value for name, value in KEEPALIVES.items()}
SERVER_USER_TIMEOUT = ("tcp_user_timeout", TCP_USER_TIMEOUT_MS)  # PostgreSQL 12 and later


def _server_probes_the_session(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _probe(dbapi_conn, _record) -> None:
        settings = list(SERVER_PROBES.items())
        if dbapi_conn.info.server_version >= 120000:
            settings.append(SERVER_USER_TIMEOUT)
        calls = ", ".join(f"set_config('{name}', '{value}', false)" for name, value in settings)
        dbapi_conn.execute(f"SELECT {calls}")
        dbapi_conn.commit()  # a setting made in a transaction rolled back would be undone


PING_IDLE_SECONDS = 2.0


def _ping_when_idle(engine: Engine) -> None:
    """A pooled connection idle for PING_IDLE_SECONDS is pinged before use, and replaced if the
    server dropped it (a restart, an idle timeout). SQLAlchemy's pool_pre_ping pings at every
    checkout: on PostgreSQL that was a third of a webhook's database CPU, for connections used a
    moment ago. One in use when the server goes away still fails once; SQLAlchemy then drops
    the whole pool, and every caller is one that retries (a 503, a job, a sweep resumed)."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, record, _proxy) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_IDLE_SECONDS:
            return
        try:
            dbapi_conn.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception as exc:  # noqa: BLE001 - any failure: use another connection
            raise DisconnectionError(f"a pooled connection was dropped: {exc}") from None
