"""How many calls Jira gets at once and per second: jira.max_concurrency and
jira.max_requests_per_second, per process (the default) or for the whole cluster.

``jira.limits_scope = "cluster"`` (PostgreSQL only) shares them between every process of every
replica, so adding replicas never exceeds what the Jira admin allowed:
- concurrency: a call holds one of ``max_concurrency`` transaction-level advisory locks
  (pg_try_advisory_xact_lock(class, slot)) in a transaction of its own, open for the call and
  then rolled back. A replica that dies drops its connections, and PostgreSQL releases their
  locks at once: no lease to wait for. Not a session's lock: behind PgBouncer in transaction
  mode, a lock and its unlock in autocommit went to different server sessions (the slot held
  for good) and another client's try on the first one took the same slot again. Advisory
  locks belong to the whole database, so the class is the installation's schema's own: two
  installations in one database (staging and production, each in its schema) never share slots.
- rate: one row, jira_budget, holds when the next call may start, in PostgreSQL's clock (the
  replicas' clocks never disagree). A caller moves it one interval on and waits its turn.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TypeVar

from sqlalchemy import Column, Float, String, Table, text

from . import database_deadline
from .database import describe_error, make_engine
from .store import UNAVAILABLE, Store
from .tables import metadata

log = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_SECONDS = 120.0  # a call waits this long for a slot, then fails (and is retried later)

jira_budget = Table(
    "jira_budget",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("next_at", Float, nullable=False),  # epoch seconds, PostgreSQL's clock
)

_TAKE_TURN = text(
    "INSERT INTO jira_budget (name, next_at) VALUES ('rate', extract(epoch from clock_timestamp()) + :interval) "
    "ON CONFLICT (name) DO UPDATE SET next_at = "
    "greatest(jira_budget.next_at, extract(epoch from clock_timestamp())) + :interval "
    "RETURNING next_at - :interval - extract(epoch from clock_timestamp())"
)


class BudgetUnavailable(Exception):
    """No call slot within WAIT_SECONDS, or the database that keeps the budget is down."""


_background = threading.local()


@contextmanager
def in_background() -> Iterator[None]:
    """The Jira calls this thread makes inside wait for their slot behind the process's other
    calls: a sweep's, so that a login's calls take one of the next slots freed although a
    sweep keeps twice as many threads as slots, all of them waiting for one."""
    was, _background.on = getattr(_background, "on", False), True
    try:
        yield
    finally:
        _background.on = was  # (nested in the runner's own: still in the background after)


def carried(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` for another thread (a pool's) to run, in the background if this thread is."""
    if not getattr(_background, "on", False):
        return fn

    def in_the_background(*args, **kwargs) -> T:
        with in_background():
            return fn(*args, **kwargs)

    return in_the_background


class _Order:
    """The order in which a process's calls wait for a slot of ``gate``. Calls in the background
    (in_background) go to the gate one at a time, and only while no other call waits there: a
    login's call waits behind the one sweep call already at the gate at most, not behind every
    sweep thread, and a slot given back cannot be taken by a sweep call arriving meanwhile."""

    def __init__(self, gate):
        self.gate = gate
        self._turnstile = threading.Lock()  # the one background call that may go to the gate
        self._cond = threading.Condition()
        self._waiting = 0  # calls not in the background waiting at the gate

    def take(self) -> bool:
        """A slot within WAIT_SECONDS."""
        if not getattr(_background, "on", False):
            with self._cond:
                self._waiting += 1
            try:
                return self.gate.acquire(timeout=WAIT_SECONDS)
            finally:
                with self._cond:
                    self._waiting -= 1
                    if not self._waiting:
                        self._cond.notify_all()
        deadline = time.monotonic() + WAIT_SECONDS
        if not self._turnstile.acquire(timeout=WAIT_SECONDS):
            return False
        try:
            with self._cond:
                if not self._cond.wait_for(lambda: not self._waiting, max(0.0, deadline - time.monotonic())):
                    return False
            return self.gate.acquire(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            self._turnstile.release()


class _Slots:
    """A semaphore of ``n`` tokens in a SimpleQueue: taken, waited for and given back in C.
    threading's Semaphore is Python code around a Condition, and cost 3 % of a sweep process's
    time under the GIL (a taking and a giving back per Jira call, half the threads waiting).
    A token is only given back by the caller that took it, so there is no bound to check."""

    def __init__(self, n: int):
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(n):
            self._tokens.put(None)

    def acquire(self, timeout: float | None = None) -> bool:
        try:
            self._tokens.get(timeout=timeout)
        except queue.Empty:
            return False
        return True

    def release(self) -> None:
        self._tokens.put(None)


class _Pace:
    """This process's own spacing of call starts (SharedBudget's, app/shared_slots.py, has the
    same start_at for processes that share one)."""

    def __init__(self):
        self._next = 0.0
        self._lock = threading.Lock()

    def start_at(self, now: float, interval: float) -> float:
        with self._lock:
            at = max(now, self._next)
            self._next = at + interval
        return at


class ProcessBudget:
    """Per process: a semaphore and an even spacing of starts."""

    def __init__(self, max_concurrency: int, per_second: float, gate=None):
        """``gate``: the budget shared with other processes instead of this one's own (a
        replica's gunicorn workers, a CLI sweep's helpers: app/shared_slots.py): its slots, and
        its spacing of starts where it has one."""
        self._slots = _Order(gate or _Slots(max_concurrency))
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._pace = gate if self.interval and getattr(gate, "paced", False) else _Pace()

    @contextmanager
    def call(self) -> Iterator[None]:
        if self.interval:
            wait = self._start_at() - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        if not self._slots.take():
            raise BudgetUnavailable(f"no Jira call slot free within {WAIT_SECONDS:g}s")
        try:
            yield
        finally:
            self._slots.gate.release()

    def _start_at(self) -> float:
        at = self._pace.start_at(time.monotonic(), self.interval)
        if at is None:  # the shared pace's lock went with a process that died holding it
            log.error(
                "a process died while it held the Jira call pace shared by this replica's processes: "
                "this process paces its own calls until it restarts"
            )
            self._pace = _Pace()
            at = self._pace.start_at(time.monotonic(), self.interval)
        return at


class ClusterBudget:
    """For every process of every replica, through PostgreSQL."""

    def __init__(self, store: Store, max_concurrency: int, per_second: float):
        self.store, self.slots = store, max_concurrency
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        # a process never uses more slots than there are: its extra callers wait here, not on PostgreSQL
        self._local_gate = _Order(_Slots(max_concurrency))
        # the slots' own connections, one per call in flight, each holding its slot in a
        # transaction, not pinged first (a dead one fails the call, which is retried)
        self._slots_engine = make_engine(store.url, pool_pre_ping=False, pool_size=max_concurrency, max_overflow=0)
        self._driver_error = self._slots_engine.dialect.loaded_dbapi.Error  # psycopg's, without importing it here
        self.lock_class: int | None = None  # read on the first call: nothing connects while the app is built

    @contextmanager
    def call(self) -> Iterator[None]:
        if not self._local_gate.take():
            raise BudgetUnavailable(f"no Jira call slot free within {WAIT_SECONDS:g}s")
        try:
            with ExitStack() as held:
                self._hold_a_slot(held)
                yield
        finally:
            self._local_gate.gate.release()

    def _hold_a_slot(self, held: ExitStack) -> None:
        """Wait for this call's turn and a free slot; the slot goes back when ``held`` closes."""
        try:
            if self.interval:
                with self.store.transaction() as tx:
                    wait = tx.execute(_TAKE_TURN, {"interval": self.interval}).scalar_one()
                if wait > 0:
                    time.sleep(wait)
            # held for the call: if this process dies, PostgreSQL drops the slot with it
            with database_deadline.use():  # in a web request, a new connection's making is bounded
                conn = held.enter_context(self._slots_engine.connect())
            if self.lock_class is None:
                self.lock_class = slot_class(self._run(conn, "SELECT current_schema()", {})[0])
            self._take_slot(conn)
        except (*UNAVAILABLE, self._driver_error) as exc:
            raise BudgetUnavailable(f"the cluster's Jira budget cannot be read: {describe_error(exc)}") from None
        held.callback(self._give_back, conn)

    def _run(self, conn, sql: str, params: dict):
        """The statement every call makes (the driver's BEGIN before it, its ROLLBACK after the
        call), on the driver's own connection: through SQLAlchemy's execution a pair cost a
        sweep process 0.5 ms more CPU per Jira call (docs/performance.md, "The cluster's Jira
        budget"). A driver error drops the connection from the pool, as SQLAlchemy would have.
        In a web request the statement is bounded as the store's are (app/database_deadline.py)."""
        dbapi_conn = conn.connection.dbapi_connection
        with database_deadline.use(dbapi_conn):
            try:
                return dbapi_conn.execute(sql, params).fetchone()
            except self._driver_error:
                conn.invalidate()
                raise

    def _give_back(self, conn) -> None:
        dbapi_conn = conn.connection.dbapi_connection
        with database_deadline.use(dbapi_conn):
            try:
                dbapi_conn.rollback()  # the transaction's end frees its lock
            except self._driver_error:  # the connection is gone (or shut: no answer), and its lock with it
                conn.invalidate()

    def _take_slot(self, conn) -> None:
        """Lock a free slot in ``conn``'s transaction, waiting for one; which one is no matter."""
        deadline = time.monotonic() + WAIT_SECONDS
        pause = 0.002
        while True:
            start = random.randrange(self.slots)
            row = self._run(conn, _TRY_SLOTS, {"cls": self.lock_class, "n": self.slots, "start": start})
            if row is not None and row[0] is not None:
                return
            if time.monotonic() > deadline:
                raise BudgetUnavailable(
                    f"no Jira call slot free within {WAIT_SECONDS:g}s ({self.slots} for the whole cluster)"
                )
            time.sleep(pause)
            pause = min(0.05, pause * 2)


def slot_class(schema: str) -> int:
    """The advisory lock class of the concurrency slots of the installation in ``schema``."""
    return zlib.crc32(f"jira-avatar-sync slots in {schema}".encode()) & 0x7FFFFFFF  # an int4, shown as is in pg_locks


# The first free slot, tried from a random one on, in one statement: PostgreSQL evaluates the
# filter row by row under the LIMIT, so it stops at the first lock it gets and takes no other.
# (psycopg's placeholders: %% is the modulo.)
_TRY_SLOTS = (
    "SELECT (s + %(start)s) %% %(n)s FROM generate_series(0, %(n)s - 1) AS s "
    "WHERE pg_try_advisory_xact_lock(%(cls)s, (s + %(start)s) %% %(n)s) LIMIT 1"
)
