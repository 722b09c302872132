"""Jira slots shared by several processes: a replica's gunicorn workers (app/gunicorn_conf.py)
and a command-line sweep with its helpers (app/sweep_helpers.py).

The parent makes one semaphore of ``jira.max_concurrency`` before its children start, so that
Jira sees no more calls at once from all of them than from one process. A semaphore has no
owner: a child that dies holding slots (killed, out of memory) would take them with it. Each
child therefore counts the slots it holds in memory the parent can read, and the parent gives a
dead child's slots back (give_back). With ``limits_scope = "cluster"`` there is nothing to share
here: every process takes its slots from PostgreSQL (app/jira_budget.py).
"""

from __future__ import annotations

import threading
from typing import Any

from .config import Settings


def make_gate(settings: Settings, context) -> Any | None:
    """The semaphore the processes share, from a multiprocessing ``context`` (None: the
    cluster's budget does it)."""
    if settings.jira.limits_scope == "cluster":
        return None
    return context.BoundedSemaphore(settings.jira.max_concurrency)


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
