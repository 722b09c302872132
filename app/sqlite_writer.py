"""The one SQLite writer: a process's writers queue on a thread lock, processes on flock() of a
lock file beside the database, before BEGIN IMMEDIATE.

Why: SQLite's own busy handler sleeps 1, 2, 5 ... 100 ms between tries when another process
holds the write lock, so with two gunicorn workers writing, a webhook's one insert waited up to
tens of milliseconds for a lock that had been free for most of that time (first logins, p99
33 ms without this, 7 ms with it: docs/performance.md). A waiter here wakes within half a
millisecond of the lock coming free. PostgreSQL needs none of it.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .per_process import PerProcess


class WriterBusy(Exception):
    """Another writer held the database longer than the caller would wait."""


class WriterLock:
    def __init__(self, database_path: str | None):
        """``database_path`` None: a database in memory, this process's alone."""
        self.path = f"{database_path}.lock" if database_path else None
        self._thread_lock = threading.Lock()
        # flock belongs to the open file: each process needs its own open, after a fork
        self._fd = PerProcess(lambda: os.open(self.path or "", os.O_RDWR | os.O_CREAT, 0o600))

    @contextmanager
    def hold(self, wait: float) -> Iterator[None]:
        """This process's turn, then the database's, each waited for at most ``wait`` seconds."""
        if not self._thread_lock.acquire(timeout=wait):
            raise WriterBusy(f"another writer of this process held the database for {wait:g}s")
        try:
            if self.path is None:
                yield
                return
            fd = self._fd.get()
            deadline = None
            while True:  # a blocking flock() cannot be given a deadline: poll every 0.5 ms
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    now = time.monotonic()
                    deadline = deadline or now + wait
                    if now > deadline:
                        raise WriterBusy(f"another process held the database for {wait:g}s") from None
                    time.sleep(0.0005)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()
