"""How many calls Jira gets at once and per second: jira.max_concurrency and
jira.max_requests_per_second, per process (the default) or for the whole cluster.

``jira.limits_scope = "cluster"`` (PostgreSQL only) shares them between every process of every
replica, so adding replicas never exceeds what the Jira admin allowed:
- concurrency: a call holds one of ``max_concurrency`` session-level advisory locks
  (pg_try_advisory_lock(class, slot)) on a connection of its own. A replica that dies drops its
  connections, and PostgreSQL releases their locks at once: no lease to wait for.
- rate: one row, jira_budget, holds when the next call may start, in PostgreSQL's clock (the
  replicas' clocks never disagree). A caller moves it one interval on and waits its turn.
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from sqlalchemy import Column, Float, String, Table, func, select, text

from .database import describe_error
from .store import UNAVAILABLE, Store, metadata

SLOT_CLASS = 0x6A697261  # pg advisory lock class of the concurrency slots ('jira')
WAIT_SECONDS = 120.0  # a call waits this long for a slot, then fails (and is retried later)

jira_budget = Table(
    "jira_budget", metadata,
    Column("name", String(32), primary_key=True),
    Column("next_at", Float, nullable=False),  # epoch seconds, PostgreSQL's clock
)

_TAKE_TURN = text(
    "INSERT INTO jira_budget (name, next_at) VALUES ('rate', extract(epoch from clock_timestamp()) + :interval) "
    "ON CONFLICT (name) DO UPDATE SET next_at = "
    "greatest(jira_budget.next_at, extract(epoch from clock_timestamp())) + :interval "
    "RETURNING next_at - :interval - extract(epoch from clock_timestamp())")


class BudgetUnavailable(Exception):
    """No call slot within WAIT_SECONDS, or the database that keeps the budget is down."""


class ProcessBudget:
    """Per process: a semaphore and an even spacing of starts."""

    def __init__(self, max_concurrency: int, per_second: float):
        self._gate = threading.BoundedSemaphore(max_concurrency)
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    @contextmanager
    def call(self) -> Iterator[None]:
        if self.interval:
            with self._lock:
                now = time.monotonic()
                at = max(now, self._next)
                self._next = at + self.interval
            if at > now:
                time.sleep(at - now)
        with self._gate:
            yield


class ClusterBudget:
    """For every process of every replica, through PostgreSQL."""

    def __init__(self, store: Store, max_concurrency: int, per_second: float):
        self.store, self.slots = store, max_concurrency
        self.interval = 1.0 / per_second if per_second > 0 else 0.0

    @contextmanager
    def call(self) -> Iterator[None]:
        with ExitStack() as held:
            try:
                if self.interval:
                    with self.store.transaction() as tx:
                        wait = tx.execute(_TAKE_TURN, {"interval": self.interval}).scalar_one()
                    if wait > 0:
                        time.sleep(wait)
                # held for the call: if this process dies, PostgreSQL drops the slot with it
                conn = held.enter_context(self.store.read())
                slot = self._take_slot(conn)
            except UNAVAILABLE as exc:
                raise BudgetUnavailable(f"the cluster's Jira budget cannot be read: {describe_error(exc)}") from None
            held.callback(self._give_back, conn, slot)
            yield

    @staticmethod
    def _give_back(conn, slot: int) -> None:
        try:
            conn.execute(select(func.pg_advisory_unlock(SLOT_CLASS, slot)))
            conn.commit()
        except UNAVAILABLE:  # the connection is gone, and its lock with it
            pass

    def _take_slot(self, conn) -> int:
        deadline = time.monotonic() + WAIT_SECONDS
        pause = 0.002
        while True:
            for slot in random.sample(range(self.slots), self.slots):
                if conn.execute(select(func.pg_try_advisory_lock(SLOT_CLASS, slot))).scalar():
                    conn.commit()  # the lock is the session's; end the statement's transaction
                    return slot
            conn.commit()
            if time.monotonic() > deadline:
                raise BudgetUnavailable(f"no Jira call slot free within {WAIT_SECONDS:g}s "
                                   f"({self.slots} for the whole cluster)")
            time.sleep(pause)
            pause = min(0.05, pause * 2)
