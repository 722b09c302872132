"""The login path's use of PostgreSQL (its debounce read, its queue write) when the database
just failed it: answered at once, not tried (SQLite's failures are bounded by the store's own
waits: app/store.py).

While PostgreSQL cannot be reached, each try costs seconds (app/database.py's timeouts), and
the caller is a web thread answering Jira: the login listener gives up after 5 s, and Jira 9
and before send their own webhooks synchronously, holding Jira's thread for as long. So after a
use failed, the next ones within a few seconds fail at once (the webhook answers 503 with
Retry-After, as it does for the failure itself), and then a single caller tries again while
the others keep failing at once, until one succeeds. Per process: each finds out for itself.
(A login answered from the debounce's memory needs no database and is answered as ever.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class DatabaseDown(Exception):
    """Not tried: the database failed moments ago."""


class KnownDown:
    """``with known_down:`` around a use. ``failures``: the exceptions that mean the database
    cannot be used (store.UNAVAILABLE); any other leaves the state as it was."""

    def __init__(
        self, seconds: float, failures: tuple[type[BaseException], ...], clock: Callable[[], float] = time.monotonic
    ):
        self.seconds, self.failures, self._clock = seconds, failures, clock
        self._until = 0.0  # 0: not known to be down (the one thing a healthy write looks at)
        self._failed_at = 0.0
        self._trier: int | None = None  # the thread trying the database again, if one is
        self._lock = threading.Lock()

    def __enter__(self) -> KnownDown:
        if self._until:  # read without the lock: a healthy use takes none
            with self._lock:
                now = self._clock()
                if not self._until:  # it came back meanwhile
                    return self
                if now < self._until or self._trier is not None:
                    raise DatabaseDown(f"the database failed {now - self._failed_at:.0f} s ago; not tried again yet")
                self._trier = threading.get_ident()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self._until:
                with self._lock:
                    self._until, self._trier = 0.0, None
        elif issubclass(exc_type, self.failures) and not issubclass(exc_type, DatabaseDown):
            with self._lock:
                self._failed_at = self._clock()
                self._until, self._trier = self._failed_at + self.seconds, None
        elif self._trier == threading.get_ident():  # it failed for another reason: let another try
            with self._lock:
                self._trier = None
