"""SQLite connections of each thread's own, outside SQLAlchemy's pool, for the hot statements:
the webhook's debounce read and queue insert, and a queued job's claim, state read and update.

Why: for one short statement, SQLAlchemy's pool checkout and check-in (with its rollback
reset), its Connection and its transaction events cost more CPU than SQLite's own work, and
on the insert that time is spent holding the write lock that every other writer waits for.
The statements still come from Prepared, rendered by SQLAlchemy with its own bind and result
processors, so what is written and read is exactly what Core would write and read.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable

# Connections a parent process opened before a fork: never used, and never closed, in the child
# (closing one there could act on locks that belong to the parent).
_left_by_parent: list[sqlite3.Connection] = []


class HotConnection:
    """What Prepared needs of a SQLAlchemy Connection: the dialect and a DB-API connection."""
    __slots__ = ("connection", "dialect")

    def __init__(self, connection: sqlite3.Connection, dialect):
        self.connection, self.dialect = connection, dialect


class ThreadConnections:
    def __init__(self, path: str, setup: Callable[[sqlite3.Connection], None]):
        self.path, self.setup = path, setup
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._generation = 0  # close_all() ends every thread's connection

    def get(self) -> sqlite3.Connection:
        """This thread's connection, in autocommit mode: BEGIN and COMMIT are the caller's."""
        local, pid = self._local, os.getpid()
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == pid and local.generation == self._generation:
            return conn
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self.setup(conn)
        with self._lock:
            self._forget_parents()
            self._open.append(conn)
            local.conn, local.pid, local.generation = conn, pid, self._generation
        return conn

    def close_all(self) -> None:
        with self._lock:
            self._forget_parents()
            self._generation += 1
            for conn in self._open:
                conn.close()
            self._open = []

    def _forget_parents(self) -> None:
        if self._pid != os.getpid():  # forked: what is open belongs to the parent
            _left_by_parent.extend(self._open)
            self._open, self._pid = [], os.getpid()
