"""PerProcess: a value made on first use in each process.

gunicorn forks its workers from a master that has built the services: a pooled connection, a
socket, a lock held by another thread or a started thread must never cross that fork. Every
such thing the service keeps (the database engine, LDAP connections, Jira's HTTP pool and call
budget, the deadline watchdog, SQLite's lock file) is held in a PerProcess, so a child makes its
own the first time it needs one and never touches what it inherited.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# This process's id, kept up to date by a fork hook: os.getpid() is a system call, and get() runs
# several times per Jira call and per statement (1% of a sweep's CPU when it asked every time).
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """os.getpid(), without the system call."""
    return _pid


class PerProcess(Generic[T]):
    def __init__(self, make: Callable[[], T], *, inherited: Callable[[T], None] | None = None):
        """``make()`` builds the value; ``inherited(value)``, if given, is called in a child on
        the parent's value before it is replaced (to let go of it without closing what the
        parent still uses)."""
        self._make, self._inherited = make, inherited
        self._value: T | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def get(self, make: Callable[[], T] | None = None) -> T:
        """``make``: builds the value this time, if it must be built, instead of the usual."""
        if self._pid != _pid:
            with self._lock:
                if self._pid != _pid:
                    if self._value is not None and self._inherited is not None:
                        self._inherited(self._value)
                    self._value = (make or self._make)()
                    self._pid = _pid
        return self._value  # type: ignore[return-value]

    def peek(self) -> T | None:
        """This process's value if it made one, else None (nothing is made)."""
        return self._value if self._pid == _pid else None

    def reset(self) -> None:
        """Forget this process's value: the next get() makes a new one."""
        with self._lock:
            self._value, self._pid = None, None
