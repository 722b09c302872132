"""The Jira budget shared by several processes: a replica's gunicorn workers
(app/gunicorn_conf.py) and a command-line sweep with its helpers (app/sweep_helpers.py).

The parent makes one semaphore of ``jira.max_concurrency`` before its children start, so that
Jira sees no more calls at once from all of them than from one process, and one clock of call
starts spaced for ``jira.max_requests_per_second``, so that Jira sees no more calls a second
either (a share of the rate per process would leave an idle process's share unused). A semaphore has no
owner: a child that dies holding slots (killed, out of memory) would take them with it. Each
child therefore counts the slots it holds in memory the parent can read, and the parent gives a
dead child's slots back (give_back). With ``limits_scope = "cluster"`` there is nothing to share
here: every process takes its slots from PostgreSQL (app/jira_budget.py).
"""

from __future__ import annotations

import threading
from typing import Any

from .config import Settings

PACE_LOCK_WAIT = 5.0  # the pace's lock is held for a few instructions: longer means its holder died in them


def make_gate(settings: Settings, context) -> SharedBudget | None:
    """The budget the processes share, from a multiprocessing ``context`` (None: the cluster's
    budget does it)."""
    if settings.jira.limits_scope == "cluster":
        return None
    return SharedBudget(settings.jira.max_concurrency, settings.jira.max_requests_per_second > 0, context)


class SharedBudget:
    """A semaphore of Jira call slots (acquire, release) and, if ``paced``, the time the next
    call may start (start_at), in memory every process that inherits it or is spawned with it
    sees. time.monotonic() is one clock for every process of the machine."""

    def __init__(self, max_concurrency: int, paced: bool, context):
        self._slots = context.BoundedSemaphore(max_concurrency)
        self._pace = (context.RawValue("d", 0.0), context.Lock()) if paced else None
        self.limits = (max_concurrency, paced)  # a reload keeps the budget while these stay (the rate
        # itself is each process's to space its calls by)

    @property
    def paced(self) -> bool:
        return self._pace is not None

    def acquire(self, timeout: float | None = None) -> bool:
        return self._slots.acquire(timeout=timeout)

    def release(self) -> None:
        self._slots.release()

    def free(self) -> int:
        """Slots no process holds now."""
        return self._slots.get_value()

    def start_at(self, now: float, interval: float) -> float | None:
        """When a call that could start at ``now`` may start, ``interval`` after the one before
        it in any process; None when the clock could not be had (its lock's holder died)."""
        assert self._pace is not None
        next_at, lock = self._pace
        if not lock.acquire(timeout=PACE_LOCK_WAIT):
            return None
        try:
            at = max(now, next_at.value)
            next_at.value = at + interval
        finally:
            lock.release()
        return at


def make_count(context) -> Any:
    """Where a child counts the slots it holds (a shared int the parent reads)."""
    return context.RawValue("i", 0)


def give_back(gate, held) -> int:
    """A child died: give the slots it held back to ``gate``; how many there were."""
    n = held.value
    held.value = 0
    for _ in range(n):
        gate.release()
    return n


class CountedGate:
    """A child's view of the shared gate: the slots it holds counted in ``held``. Counted after a
    slot is taken and before it is given back, so a death between the two steps can leave one
    slot unreturned, never one too many."""

    def __init__(self, gate, held):
        self._gate, self._held, self._lock = gate, held, threading.Lock()

    def acquire(self, timeout: float | None = None) -> bool:
        if not self._gate.acquire(timeout=timeout):
            return False
        with self._lock:
            self._held.value += 1
        return True

    def release(self) -> None:
        with self._lock:
            self._held.value -= 1
        self._gate.release()

    @property
    def paced(self) -> bool:
        return self._gate.paced

    def start_at(self, now: float, interval: float) -> float | None:
        return self._gate.start_at(now, interval)
