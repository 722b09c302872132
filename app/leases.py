"""LeaseKeeper: renews the leases of the jobs this process's threads are running.

A sync may outlast its job's lease (Jira slow and its calls retried; a sweep batch of slow
syncs), and a lapsed lease gives the job to another worker while this one still runs it: the
same photo uploaded twice. Every thread that runs a job (a WorkerPool's, an admin's sync now)
holds it through held(), and one thread per process renews the held jobs' leases every third
of a lease. Only those: a job let go of without being ended (its outcome could not be
recorded, the database away) must lapse and run again, although its process lives on.

The thread starts when a job is first held and ends when a turn finds none (so an idle process,
or a test's hundred queues, keep no thread); a forked child starts its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .database import describe_error
from .per_process import PerProcess

log = logging.getLogger(__name__)


class _Held:
    """One process's held jobs, and whether its keeper thread runs."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.keeper: threading.Thread | None = None


class LeaseKeeper:
    def __init__(self, renew: Callable[[list[int]], object], every: float):
        """``renew(job_ids)`` extends those jobs' leases; it is called every ``every`` seconds
        while any job is held."""
        self._renew, self._every = renew, every
        self._held = PerProcess(_Held)

    @contextmanager
    def held(self, job_ids: list[int]) -> Iterator[None]:
        """The block runs these jobs: their leases are renewed until it ends."""
        held = self._held.get()
        with held.lock:
            held.ids.update(job_ids)
            if job_ids and held.keeper is None:
                held.keeper = threading.Thread(target=self._keep, args=(held,), name="job-leases", daemon=True)
                held.keeper.start()
        try:
            yield
        finally:
            with held.lock:
                held.ids.difference_update(job_ids)

    def _keep(self, held: _Held) -> None:
        while True:
            time.sleep(self._every)
            with held.lock:
                ids = list(held.ids)
                if not ids:
                    held.keeper = None  # the next held() starts another
                    return
            try:
                self._renew(ids)
            except Exception as exc:  # noqa: BLE001 - the next turn tries again; a lease lasts three
                log.warning("could not renew the leases of this process's jobs: %s", describe_error(exc))
