"""The objects one process works with, built from Settings. Building opens nothing:
directories, database and Jira connect lazily, after gunicorn has forked."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import cached_property

from .config import Settings
from .directory import UserDirectory, build_directories
from .jira import JiraClient
from .jira_budget import ClusterBudget
from .queue import LoginQueue, RetryPolicy
from .readiness import Readiness
from .store import Store
from .sweep import Sweeps
from .sweep_run import run_in_background
from .sync import Syncer


@dataclass
class Services:
    settings: Settings
    store: Store
    directories: list[UserDirectory]
    jira: JiraClient
    syncer: Syncer
    queue: LoginQueue
    sweeps: Sweeps = field(init=False, repr=False)
    # the sweep runners this process started (a WorkerPool's, the admin API's); set at the
    # process's exit, ``stopping`` has them let go of their lease for another process at once
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    runners: list[threading.Thread] = field(default_factory=list, repr=False)
    # a pool's thread and an admin request may start runners at once: neither may drop the other's
    _runners_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.sweeps = Sweeps(self)

    def start_runner(self) -> None:
        """Run a sweep whose lease is free on a thread of this process now, until stop_runners():
        the one way a sweep starts running (a WorkerPool's look for one, the admin API's start)."""
        runner = run_in_background(self, self.stopping)
        if runner is not None:
            with self._runners_lock:
                self.runners[:] = [*(r for r in self.runners if r.is_alive()), runner]

    def stop_runners(self, timeout: float) -> None:
        """Have the runners in ``runners`` let go of their sweeps, waiting ``timeout`` in all."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        with self._runners_lock:
            runners = list(self.runners)
        for runner in runners:
            runner.join(max(0.0, deadline - time.monotonic()))

    @property
    def exclusions(self):
        """Who keeps their own picture (app/exclusions.py), as the syncer sees it."""
        return self.syncer.exclusions

    @cached_property
    def readiness(self) -> Readiness:
        """Made on first use (a request), never in create_app."""
        return Readiness(self)

    def close(self) -> None:
        for directory in self.directories:
            directory.close()
        self.store.dispose()


def build_services(settings: Settings, jira_gate=None) -> Services:
    """``jira_gate``: the Jira budget, when processes share one (app/shared_slots.py)."""
    store = Store(settings.database_url)
    directories = build_directories(settings)
    j = settings.jira
    jira = JiraClient(
        j,
        budget=(lambda: ClusterBudget(store, j.max_concurrency, j.max_requests_per_second))
        if j.limits_scope == "cluster"
        else None,  # each process's own slots (JiraClient's default), or shared ones (below)
    )
    if jira_gate is not None:
        jira.share_slots(jira_gate)
    w = settings.worker
    queue = LoginQueue(store, RetryPolicy(w.max_attempts, w.retry_base_seconds, w.retry_max_seconds, w.lease_seconds))
    return Services(settings, store, directories, jira, Syncer(settings, directories, jira, store), queue)
