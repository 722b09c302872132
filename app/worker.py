"""WorkerPool: threads that drain the LoginQueue, each job run by app/job_run.py.

Started after fork (gunicorn's post_worker_init hook, or ``jira-avatar-sync worker``), never in
create_app(). An enqueue in the same process wakes the threads at once; other processes' work
is found by polling every ``poll_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time

from . import job_run, schedule
from .database import describe_error
from .directory import DirectoryEntry
from .queue import SWEEP, Job
from .rules import UNKNOWN, Unknown
from .states import UserState
from .store import UNAVAILABLE as DATABASE_UNAVAILABLE
from .sync_result import Verdict
from .tables import user_key

log = logging.getLogger(__name__)
MAINTENANCE_SECONDS = 3600
SWEEP_CHECK_SECONDS = 2
CLAIM_BATCH = 8  # each thread's claim; a login waits for at most one job of a batch
PREFETCH_FRESH_SECONDS = 5  # a batch's directory entries and states are read again after this


def sweep_threads(settings) -> int:
    """A process's sync threads while a sweep's users wait: twice its Jira slots. A sync holds
    at most one Jira call at a time and spends part of its time off Jira (directory, decode,
    database), so fewer threads than slots would leave slots idle; the client's gate still
    keeps the calls in flight to jira.max_concurrency."""
    return max(settings.worker.threads, 2 * settings.jira.max_concurrency)


class WorkerPool:
    def __init__(self, services, threads: int = 2, poll_seconds: float = 1.0, sweep_threads: int = 0):
        """``sweep_threads``: how many threads the pool grows to while a sweep's jobs wait (the
        ones beyond ``threads`` end once they find no job); at most ``threads`` by default."""
        self.services, self.threads, self.poll_seconds = services, threads, poll_seconds
        self.sweep_threads = max(threads, sweep_threads)
        self.queue = services.queue
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()  # any thread may add one (_grow_for_sweep)
        self._extra = 0  # threads running beyond ``threads``
        self._maintenance_lock = threading.Lock()
        self._next_maintenance = 0.0
        self._next_sweep_check = 0.0
        self.sweeps = services.sweeps
        self._local = threading.local()  # each thread's: whether its last claim was a sweep batch

    def start(self) -> WorkerPool:
        try:
            self._take_back_dead_jobs()
        except Exception:
            log.exception("could not check for dead workers' jobs")
        with self._threads_lock:
            for i in range(self.threads):
                self._start_thread(f"avatar-sync-worker-{i}", extra=False)
        log.info("%d sync worker threads started", self.threads)
        return self

    def _start_thread(self, name: str, extra: bool) -> None:
        t = threading.Thread(target=self._run, args=(extra,), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _grow_for_sweep(self) -> None:
        """A thread claimed sweep jobs: one more thread, up to ``sweep_threads`` (each new one
        that claims sweep jobs too adds the next, so the pool grows within a few claims)."""
        with self._threads_lock:
            if not self._threads or self._stop.is_set() or self.threads + self._extra >= self.sweep_threads:
                return  # not started (run_once called alone), stopping, or grown
            self._threads = [t for t in self._threads if t.is_alive()]
            self._extra += 1
            self._start_thread(f"avatar-sync-sweep-{len(self._threads)}", extra=True)

    def stop(self, timeout: float = 30.0) -> None:
        """Let running jobs finish (their leases would otherwise have to expire), give back the
        rest of each thread's batch, and have the sweeps this process runs let go of their
        leases (Services.stop_runners): other processes take up both at once. A pool stops
        when its process ends."""
        self._stop.set()
        self.queue.wakeup.set()
        self.services.stopping.set()  # the runners let go of their sweeps while the threads finish
        deadline = time.monotonic() + timeout  # for them all, not each
        with self._threads_lock:  # no thread starts once _stop is set
            threads, self._threads = self._threads, []
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.services.stop_runners(max(0.0, deadline - time.monotonic()))

    def run_once(self) -> bool:
        """Claim a few due jobs and process them in turn; False when none was due.

        A sweep's jobs are taken a few at a time, so that their directory entries are read
        in one search per directory instead of one each (the sweep process's CPU a tenth lower,
        the directory's halved), and their stored states in one query; both are read again for
        a job whose turn comes more than PREFETCH_FRESH_SECONDS later; their outcomes are
        recorded together when the batch is done (job_run.record). Logins are taken one by
        one, so that every idle thread takes one at once, and a login that comes due meanwhile
        goes before the batch's rest.
        """
        jobs = []
        # in a sweep, with no login waiting (as urgent_waiting believes for a moment): the next
        # batch in one claim. An idle thread's poll stays one claim (its cheap read first).
        if getattr(self._local, "in_sweep", False) and not self.queue.urgent_waiting():
            jobs = self.queue.claim(CLAIM_BATCH, min_priority=SWEEP)
        if not jobs:
            jobs = self.queue.claim(1)
            if jobs and jobs[0].priority >= SWEEP:
                jobs += self.queue.claim(CLAIM_BATCH - 1, min_priority=SWEEP)
        self._local.in_sweep = bool(jobs) and jobs[-1].priority >= SWEEP
        if self._local.in_sweep and self.sweep_threads > self.threads:
            self._grow_for_sweep()
        with self.queue.leases.held([job.id for job in jobs]):
            self._run_batch(jobs)
        return bool(jobs)

    def _run_batch(self, jobs: list[Job]) -> None:
        entries, states = {}, None
        if len(jobs) > 1:
            names = [j.username for j in jobs]
            entries, states = self.services.syncer.photos.prefetch(names), self.services.store.get_many(names)
        read_at = time.monotonic()
        done: list[tuple[Job, Verdict]] = []  # recorded together when the batch ends
        try:
            for i, job in enumerate(jobs):
                if i and self._stop.is_set():  # stopping: the batch's rest goes to other workers now
                    self.queue.give_back(jobs[i:])
                    break
                # jobs after the first are sweep jobs: an admin's cancel stops the batch's rest
                cancelled = i and job.sweep_id is not None and self.sweeps.cancelled(job.sweep_id)
                if cancelled and self.queue.drop_cancelled(job):
                    continue
                if i and self.queue.urgent_waiting():
                    for urgent in self.queue.claim(1):
                        self.process(urgent)
                if states is not None and time.monotonic() - read_at < PREFETCH_FRESH_SECONDS:  # else read again
                    entry, state = entries.get(job.username), states.get(user_key(job.username))
                    done.append((job, job_run.attempt(self.services, job, entry, state)))
                else:
                    done.append((job, job_run.attempt(self.services, job)))
        finally:  # what was synced is recorded, even if the loop was cut short (the database away)
            job_run.record(self.services, done)

    def process(
        self, job: Job, entry: DirectoryEntry | None = None, state: UserState | None | Unknown = UNKNOWN
    ) -> None:
        """One job: the sync, then the transaction that records it (job_run.record)."""
        with self.queue.leases.held([job.id]):
            job_run.record(self.services, [(job, job_run.attempt(self.services, job, entry, state))])

    def maintain(self) -> None:
        """Every few seconds: take back the jobs of this host's processes that died (a worker,
        an admin's CLI sync killed mid-way), run a sweep nobody runs (new, scheduled, or its
        runner died); hourly housekeeping: old webhook delivery ids and old sweep reports are
        forgotten."""
        now = time.monotonic()
        with self._maintenance_lock:
            check_sweeps = now >= self._next_sweep_check
            if check_sweeps:
                self._next_sweep_check = now + SWEEP_CHECK_SECONDS
            housekeeping = now >= self._next_maintenance
            if housekeeping:
                self._next_maintenance = now + MAINTENANCE_SECONDS
        if check_sweeps:
            self._take_back_dead_jobs()
            schedule.start_if_due(self.services)
            self.services.start_runner()
        if housekeeping:
            self.queue.prune_deliveries()
            self.sweeps.prune()

    def _take_back_dead_jobs(self) -> None:
        released = self.queue.release_dead_leases()
        if released:
            log.info("took back %d jobs from processes of this host that died", released)

    def _run(self, extra: bool = False) -> None:
        """``extra``: a thread added for a sweep (_grow_for_sweep), which ends at its first
        look that finds no job, or fails."""
        wakeup = self.queue.wakeup
        try:
            while not self._stop.is_set():
                wakeup.clear()
                found = self._look()
                if found:
                    continue
                if extra:
                    return
                if found is None:  # the error is logged: not again at once
                    self._stop.wait(self.poll_seconds)
                else:
                    wakeup.wait(self.poll_seconds)
        finally:
            if extra:
                with self._threads_lock:
                    self._extra -= 1

    def _look(self) -> bool | None:
        """One turn of a thread: True when it did a job, False when none was due, None when it
        failed (logged)."""
        try:
            self.maintain()
            return self.run_once()
        except DATABASE_UNAVAILABLE as exc:  # locked, full, down
            log.warning("worker waits, the database cannot be used now: %s", describe_error(exc))
        except Exception:
            log.exception("worker loop error")
        return None
