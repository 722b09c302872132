"""Running a user's job: the sync (Syncer.attempt), then one transaction that records the
outcome, counts it in the job's sweep and ends the job or schedules its retry.

The worker pool's threads run queued jobs this way (app/worker.py). An admin's "sync now" (the
admin API, the CLI's ``sync``) takes the user's own job and runs it the same way: a worker never
syncs a user while an admin's sync of that user runs, nor the reverse, so the same photo is not
uploaded twice; and a sync now cut short by a crash is finished by a worker, as any job is.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import replace

from . import jira_budget
from .database import describe_error
from .directory import DirectoryEntry
from .outcomes import FAILED
from .queue import SWEEP, Job
from .rules import UNKNOWN, Unknown
from .states import UserState
from .store import UNAVAILABLE as DATABASE_UNAVAILABLE
from .sync_result import SyncResult, Verdict
from .usernames import loggable

log = logging.getLogger(__name__)
BUSY_POLL_SECONDS = 0.2  # how often a sync now looks whether a worker's run of the user ended


def jira_order(job: Job):
    """Where the job's Jira calls wait for their slots: a sweep's behind any login's
    (app/jira_budget.py)."""
    return jira_budget.in_background() if job.priority >= SWEEP else nullcontext()


def attempt(
    services, job: Job, entry: DirectoryEntry | None = None, state: UserState | None | Unknown = UNKNOWN
) -> Verdict:
    with jira_order(job):
        return services.syncer.attempt(
            job.username,
            force=job.force,
            jira_user=job.jira_user,
            attempt=job.attempts,
            entry=entry,
            source=job.source,
            state=state,
        )


def record(services, done: list[tuple[Job, Verdict]]) -> list[SyncResult]:
    """One transaction for the jobs' syncs: it records each user's outcome, counts it in the
    job's sweep and ends the job (or schedules its retry). A crash can therefore never leave an
    outcome recorded with its job still open, or the reverse; if that transaction cannot be
    written, the jobs keep their leases until they expire and run again (an upload made
    meanwhile is found by its pending mark, app/sync.py). A sweep's batch is recorded at its
    end, in one transaction instead of one per user: the database work per user is what, after
    Jira's own latency, sets a sweep's pace. The results, as logged."""
    if not done:
        return []
    syncer, queue = services.syncer, services.queue
    try:
        with services.store.transaction(wait=services.store.user_wait) as tx:
            syncer.record([verdict for _, verdict in done], tx)
            # a failed attempt counts: the job retries apart
            services.sweeps.record_many([(j.sweep_id, v.result) for j, v in done if j.sweep_id is not None], tx)
            queue.complete([j for j, v in done if v.result.outcome != FAILED], tx)
            for job, result in ((j, v.result) for j, v in done if v.result.outcome == FAILED):
                if not queue.fail(job, result.reason or "failed", tx):
                    user = loggable(job.username)
                    log.error("giving up on %s after %d attempts: %s", user, job.attempts, result.reason)
    except Exception as exc:  # noqa: BLE001 - the jobs keep their leases and run again
        return [syncer.finish(syncer.unrecorded(verdict, exc), recorded=False) for _, verdict in done]
    results = []
    for job, verdict in done:  # (finish deletes old avatars: Jira calls too)
        with jira_order(job):
            results.append(syncer.finish(verdict, recorded=True))
    return results


def sync_now(
    services,
    username: str,
    force: bool = False,
    dry_run: bool = False,
    source: str = "admin",
    wait: float | None = None,
) -> SyncResult:
    """An admin's sync of one user, run in this thread, its outcome returned. A dry run uploads
    nothing and holds no job. Otherwise the user's job is taken (LoginQueue.take); while a
    worker runs it, this waits up to ``wait`` (default jira.timeout) for that run to end, then
    answers failed (retryable): the job runs once more after the worker's run, in the background.
    (A sync whose outcome could not be recorded holds the job too, until its lease lapses; the
    answer cannot tell the two apart, so it names both, and when the lease lapses.)"""
    if dry_run:
        return services.syncer.dry_run(username, force=force, source=source)
    queue = services.queue
    deadline = time.monotonic() + (services.settings.jira.timeout if wait is None else wait)
    held_until = None
    try:
        job = queue.take(username, force, source)
        if job is None and queue.release_dead_leases():  # its holder was killed (kill -9): free at once
            job = queue.take(username, force, source)
        while job is None and time.monotonic() < deadline:
            time.sleep(BUSY_POLL_SECONDS)
            held_until = queue.held_until(username)
            if held_until is None:
                job = queue.take(username, force, source)
        if job is None and held_until is None:
            held_until = queue.held_until(username)
    except DATABASE_UNAVAILABLE as exc:
        reason = f"database: {describe_error(exc)}"
        return SyncResult(username, FAILED, reason, retryable=True, source=source)
    if job is None:
        log.warning("sync now of %s: another run holds the user's job; it runs again after", loggable(username))
        lapses = f" (its lease lapses at {held_until:%H:%M:%S} UTC)" if held_until else ""
        reason = (
            "another run holds this user's job: a worker syncing the user, or an earlier sync whose outcome"
            f" could not be recorded{lapses}; this sync runs after it, in the background"
        )
        return SyncResult(username, FAILED, reason, retryable=True, source=source)
    job = replace(job, username=username, source=source)  # as the admin wrote it, whatever job it merged into
    with queue.leases.held([job.id]):
        return record(services, [(job, attempt(services, job))])[0]
