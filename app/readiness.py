"""Whether this process can work: each directory, Jira and the database, probed at most every
few seconds, concurrently (a dead server costs one connect timeout, not one per dependency),
each with since when it has been in its state.

The database decides readiness: while it takes a write, work is accepted durably, and a
directory or Jira being down only makes the service ``degraded`` (the queue holds the work and
the workers retry it). ``unavailable`` means the database cannot be used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial

from .database import describe_location
from .directory import DirectoryUnavailable
from .jira import JiraError
from .outcomes import JobState

CACHE_SECONDS = 5.0
OK, DOWN = "ok", "down"
READY, DEGRADED, DISABLED, UNAVAILABLE = "ready", "degraded", "disabled", "unavailable"


class Readiness:
    """The last probe of each dependency, and since when it has been in that state."""

    def __init__(self, services):
        self.services = services
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._checks: dict[str, dict] = {}
        self._probed_at = float("-inf")

    def report(self, details: bool) -> dict:
        """``details``: reasons, addresses and accounts too (admins only)."""
        checks = self.current()
        if checks["database"]["status"] != OK:
            status = UNAVAILABLE
        elif self.services.settings.sync_disabled:
            status = DISABLED
        elif any(c["status"] != OK for c in checks.values()):
            status = DEGRADED
        else:
            status = READY
        shown = {name: (dict(c) if details else {"status": c["status"]}) for name, c in checks.items()}
        return {"status": status, "checks": shown}

    def current(self) -> dict[str, dict]:
        # one probe at a time; callers meanwhile get the last answer, if there is one
        stale = time.monotonic() - self._probed_at >= CACHE_SECONDS
        if stale and self._probe_lock.acquire(blocking=not self._checks):
            try:
                if time.monotonic() - self._probed_at >= CACHE_SECONDS:
                    self._probe()
            finally:
                self._probe_lock.release()
        with self._lock:
            return {name: dict(c) for name, c in self._checks.items()}

    def _probe(self) -> None:
        svc = self.services
        probes: dict[str, Callable[[], tuple[str, dict]]] = {
            f"directory:{d.name}": partial(_directory, d) for d in svc.directories
        }
        probes["jira"] = lambda: _jira(svc.jira)
        with ThreadPoolExecutor(len(probes), thread_name_prefix="readyz") as pool:
            futures = {name: pool.submit(fn) for name, fn in probes.items()}
            database = _database(svc)  # meanwhile, on this thread
            results = {name: f.result() for name, f in futures.items()}
        results["database"] = database
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock:
            for name, (status, extra) in results.items():
                before = self._checks.get(name)
                since = before["since"] if before and before["status"] == status else now
                self._checks[name] = {"status": status, "ok": status == OK, "since": since, **extra}
            self._probed_at = time.monotonic()


def _directory(directory) -> tuple[str, dict]:
    try:
        directory.check()
        return OK, {"servers": directory.servers}
    except DirectoryUnavailable as exc:
        return DOWN, {"reason": exc.reason, "servers": directory.servers}
    except Exception as exc:  # noqa: BLE001 - a probe answers, whatever went wrong
        return DOWN, {"reason": f"{type(exc).__name__}: {exc}"[:300], "servers": directory.servers}


def _jira(jira) -> tuple[str, dict]:
    try:
        me = jira.myself()
        return OK, {"url": jira.settings.url, "account": me.get("name")}
    except JiraError as exc:
        return DOWN, {"reason": str(exc), "url": jira.settings.url}
    except Exception as exc:  # noqa: BLE001 - a probe answers, whatever went wrong
        return DOWN, {"reason": f"{type(exc).__name__}: {exc}"[:300], "url": jira.settings.url}


def _database(svc) -> tuple[str, dict]:
    where = describe_location(svc.settings.database_url)
    try:
        svc.store.check_writable()
        counts = svc.queue.counts()
    except Exception as exc:  # noqa: BLE001 - any driver error means work cannot be accepted
        return DOWN, {"reason": f"{type(exc).__name__}: {exc}"[:300], "where": where}
    return OK, {
        "where": where,
        "queued": counts.get(JobState.PENDING, 0) + counts.get(JobState.RUNNING, 0),
        "failed": counts.get(JobState.FAILED, 0),
    }
