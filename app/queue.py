"""LoginQueue: a durable work queue in the database, one row per user.

- One row per user: a second event before the first is done merges into it (the higher
  priority wins; an event arriving while the job runs marks it to run once more).
- Priorities: login work (0) before sweep work (10), so logins stay immediate during a sweep.
- A claim takes a lease; a worker that dies leaves its lease to expire and the job is taken
  again (on its own host, at once: release_dead_leases). Claims are atomic across processes:
  BEGIN IMMEDIATE on SQLite, FOR UPDATE SKIP LOCKED on PostgreSQL.
- A failed attempt is retried with exponential back-off and jitter; after the last attempt the
  row stays, state ``failed``, with its reason, until the next event for that user.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from . import lease_holders, per_process, queue_sql
from .jira import JiraUser
from .leases import LeaseKeeper
from .queue_sql import FAILED, LOGIN, PENDING, RUNNING, SWEEP, deliveries, jobs
from .queue_sql import MANUAL as MANUAL  # the priorities and tables, for the queue's users
from .queue_sql import USER_EVENT as USER_EVENT
from .store import Store
from .tables import aware, user_key, utcnow

URGENT_RECHECK = 0.1  # seconds a worker trusts "no login is waiting" (see urgent_waiting)


@dataclass(frozen=True)
class Job:
    id: int
    username: str
    priority: int
    force: bool
    source: str
    attempts: int
    sweep_id: int | None
    jira_user: JiraUser | None = None


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    base_seconds: float = 5.0
    max_seconds: float = 3600.0
    lease_seconds: float = 120.0

    def delay(self, attempts: int) -> float:
        """Exponential back-off with jitter after ``attempts`` failed tries."""
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(0, attempts - 1))
        return random.uniform(ceiling / 2, ceiling)


class LoginQueue:
    def __init__(self, store: Store, policy: RetryPolicy = RetryPolicy()):
        self.store, self.policy = store, policy
        self.wakeup = threading.Event()  # set by enqueue: this process's workers start at once
        # Whose PIDs this process may judge (release_dead_leases): those of its host name, its
        # kernel's boot and its PID namespace; two containers of one pod share a host name and a
        # database, not their PIDs.
        self._namespace = lease_holders.namespace()
        self.owner_prefix = f"{socket.gethostname()}:{self._namespace}:"
        # this process's part of its threads' owners, "pid:start:", made once in each process: the
        # start tells it from a killed process whose PID a restart in the same namespace reused
        self._process = per_process.PerProcess(
            lambda: f"{self.owner_prefix}{per_process.pid()}:{lease_holders.started(per_process.pid()) or '0'}:"
        )
        self._busy = threading.local()  # this thread's last claim found work
        self._next_expiry_check = 0.0  # time.monotonic(); see claim
        self._no_urgent_until = 0.0  # time.monotonic(); see urgent_waiting
        self.leases = LeaseKeeper(self.renew_leases, policy.lease_seconds / 3)

    # -- producers ---------------------------------------------------------------------

    def enqueue(
        self,
        username: str,
        priority: int = LOGIN,
        source: str = "login",
        force: bool = False,
        sweep_id: int | None = None,
        delivery_id: str | None = None,
        wait: float | None = None,
    ) -> bool:
        """Queue (or merge into) the user's job. False when ``delivery_id`` was seen before.
        ``wait``: how long to wait for another writer (default the store's user_wait; a webhook
        answers 503 after it).

        A login merged into a running job needs nothing more: that run is the sync it asks
        for. Any other event (user_updated...) may carry news the running attempt missed, so
        the job runs once more afterwards.
        """
        now = utcnow()
        wait = self.store.user_wait if wait is None else wait
        params = queue_sql.upsert_params(username, priority, source, force, sweep_id, now, None)
        if delivery_id is None:  # every first login's one write: one statement
            with self.store.fail_fast, self.store.one_statement(wait) as conn:
                conn.execute(queue_sql.upserts(conn.dialect.name).enqueue, params)
        else:
            with self.store.fail_fast, self.store.transaction(wait) as tx:  # the delivery, and the job, or neither
                statements = queue_sql.upserts(tx.dialect.name)
                delivery = {"id": delivery_id[:255], "received_at": now}
                if tx.execute(statements.delivery, delivery).first() is None:
                    return False
                tx.execute(statements.enqueue, params)
        if priority < SWEEP:
            self._no_urgent_until = 0.0  # this process's threads see it at their next job, not 0.1 s later
        self.wakeup.set()
        return True

    def enqueue_sweep(self, tx, sweep_id: int, users: list[tuple[str, JiraUser | None]]) -> None:
        """Queue a page of a sweep's users at low priority, inside the caller's transaction."""
        if users:
            now = utcnow()
            tx.execute(
                queue_sql.upserts(tx.dialect.name).enqueue,
                [queue_sql.upsert_params(name, SWEEP, "sweep", False, sweep_id, now, hint) for name, hint in users],
            )

    # -- consumers ---------------------------------------------------------------------

    def owner(self) -> str:
        """This thread's name on its leases: "host:namespace:pid:start:thread" (see __init__)."""
        return f"{self._process.get()}{threading.get_ident()}"

    def claim(self, limit: int = 1, min_priority: int = LOGIN) -> list[Job]:
        """Lease up to ``limit`` due jobs, highest priority first; atomic across processes.
        ``min_priority``: only jobs whose priority number is at least this (SWEEP: sweep jobs
        only; a worker adding sweep jobs to its batch must not hold back logins the other
        threads could take at once).

        An idle poll is a plain read first: it must not take the write lock that webhooks
        wait for. A thread whose last claim found work skips that read (there is likely more),
        and looks for expired leases, which only a dead worker leaves, at most once a second
        (at once again while the last look found as many as it could take).
        """
        now = utcnow()
        pending, expired = queue_sql.due(limit, min_priority)
        if not getattr(self._busy, "value", False):
            with self.store.read() as conn:
                if (
                    conn.execute(pending.with_only_columns(jobs.c.id), {"now": now}).first() is None
                    and conn.execute(expired.with_only_columns(jobs.c.id), {"now": now}).first() is None
                ):
                    return []
            look_for_expired = True
        else:
            look_for_expired = time.monotonic() >= self._next_expiry_check
        if look_for_expired:
            self._next_expiry_check = time.monotonic() + 1.0
        with self.store.transaction() as tx:
            if tx.dialect.name == "postgresql":  # replicas claim side by side
                pending, expired = (q.with_for_update(skip_locked=True) for q in (pending, expired))
            # a dead worker's job first: it waited longest
            rows = list(tx.execute(expired, {"now": now}).mappings().all()) if look_for_expired else []
            if len(rows) >= limit:  # a dead worker left more: the next claim looks again, not in a second
                self._next_expiry_check = 0.0
            if len(rows) < limit:
                rows += tx.execute(pending, {"now": now}).mappings().all()
            rows = rows[:limit]
            self._busy.value = bool(rows)
            if not rows:
                return []
            until = now + timedelta(seconds=self.policy.lease_seconds)
            tx.execute(
                queue_sql.LEASE, [{"job": r["id"], "lease_of": self.owner(), "now": now, "until": until} for r in rows]
            )
        return [_job(r, attempts=r["attempts"] + 1) for r in rows]

    def take(self, username: str, force: bool = False, source: str = "admin") -> Job | None:
        """The user's own job for this thread to run now (an admin's sync now): merged at
        MANUAL priority like an enqueue, and leased at once, so that no worker syncs the user
        meanwhile. A login or sweep job already queued for the user is the one taken: this
        sync does their work too (and counts in the sweep). None while another worker holds the
        job: the merge has marked it to run once more after that worker's run (see enqueue)."""
        now = utcnow()
        with self.store.transaction(self.store.user_wait) as tx:  # an admin waits as a webhook would
            tx.execute(
                queue_sql.upserts(tx.dialect.name).enqueue,
                queue_sql.upsert_params(username, MANUAL, source, force, None, now, None),
            )
            row = tx.execute(queue_sql.FREE_JOB, {"username": user_key(username), "now": now}).mappings().first()
            if row is None:
                return None
            until = now + timedelta(seconds=self.policy.lease_seconds)
            tx.execute(queue_sql.LEASE, {"job": row["id"], "lease_of": self.owner(), "now": now, "until": until})
        return _job(row, attempts=row["attempts"] + 1)

    def held_until(self, username: str) -> datetime | None:
        """While another thread holds the user's job, when its lease lapses unless renewed (a
        plain read: take() writes). The holder is a worker syncing the user, or a run let go of
        without the job being ended (its outcome could not be recorded): that job runs again
        once the lease lapses."""
        with self.store.read() as conn:
            until = conn.execute(queue_sql.HELD_JOB, {"username": user_key(username), "now": utcnow()}).scalar()
        return aware(until)

    def urgent_waiting(self) -> bool:
        """A job above sweep priority (a login...) is due: a worker holding a batch of sweep
        jobs takes it before its next one. A plain read, as an idle poll's; a "no" is believed
        for URGENT_RECHECK seconds by every thread of the process (asked before each sweep job,
        the read cost 3% of a sweep's CPU), unless this process enqueues a login meanwhile; a
        login that another process (a gunicorn worker) enqueued waits at most that much longer."""
        if time.monotonic() < self._no_urgent_until:
            return False
        with self.store.read() as conn:
            urgent = conn.execute(queue_sql.URGENT, {"now": utcnow()}).first() is not None
        if not urgent:
            self._no_urgent_until = time.monotonic() + URGENT_RECHECK
        return urgent

    def complete(self, done: list[Job], tx) -> None:
        """Done, in the caller's transaction: drop the rows, except those of users for whom
        another event came in meanwhile (they run again)."""
        if not done:
            return
        owner, now = self.owner(), utcnow()
        dropped = set(tx.execute(queue_sql.DROP, {"jobs": [j.id for j in done], "lease_of": owner}).scalars())
        again = [{"job": j.id, "lease_of": owner, "now": now} for j in done if j.id not in dropped]
        if again:  # usually none: one statement for the lot
            tx.execute(queue_sql.RERUN, again)

    def give_back(self, claimed: list[Job]) -> None:
        """Jobs this thread claimed but will not run (its worker is stopping): pending again at
        once for another worker, not when their leases lapse."""
        if claimed:
            now, owner = utcnow(), self.owner()
            with self.store.transaction() as tx:
                tx.execute(queue_sql.GIVE_BACK, [{"job": j.id, "lease_of": owner, "now": now} for j in claimed])
            self.wakeup.set()

    def drop_cancelled(self, job: Job) -> bool:
        """End unrun a job this thread holds whose sweep was cancelled meanwhile; False (the job
        runs as asked) when a login, an admin's sync or a user event merged into it."""
        with self.store.transaction() as tx:
            return tx.execute(queue_sql.DROP_CANCELLED, {"job": job.id, "lease_of": self.owner()}).rowcount == 1

    def fail(self, job: Job, error: str, tx) -> bool:
        """A failed attempt, in the caller's transaction: retry later with back-off, or keep
        as failed. True if it will be retried."""
        now = utcnow()
        retry = job.attempts < self.policy.max_attempts
        tx.execute(
            queue_sql.FAILED_ATTEMPT,
            {
                "job": job.id,
                "lease_of": self.owner(),
                "now": now,
                "reason": error[:2000],
                "new_state": PENDING if retry else FAILED,
                "next": now + timedelta(seconds=self.policy.delay(job.attempts)) if retry else now,
            },
        )
        # an event that arrived while this attempt ran deserves a fresh start
        tx.execute(queue_sql.FRESH, {"job": job.id, "now": now})
        return retry

    def renew_leases(self, job_ids: list[int]) -> int:
        """Extend the leases of the jobs this process's threads are running (``job_ids``, while
        this process still holds them); ``leases`` (app/leases.py) calls it, and says why. How
        many were renewed."""
        pattern = _like_prefix(self._process.get())
        until = utcnow() + timedelta(seconds=self.policy.lease_seconds)
        with self.store.one_statement() as conn:
            return conn.execute(queue_sql.RENEW, {"jobs": job_ids, "process": pattern, "until": until}).rowcount

    def release_dead_leases(self) -> int:
        """Free leases held by processes of this host and PID namespace that no longer exist
        (after a kill -9). Workers look every few seconds (WorkerPool.maintain): a read, and a
        write only when a dead process's job is found, so that it runs again at once rather
        than when its lease lapses (lease_seconds, minutes on). Where the namespace cannot be
        known (no /proc) nothing is judged: every lease lapses."""
        if self._namespace == lease_holders.UNKNOWN_NAMESPACE:
            return 0
        with self.store.read() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.lease_owner).where(
                    jobs.c.state == RUNNING, jobs.c.lease_owner.like(_like_prefix(self.owner_prefix), escape="/")
                )
            ).all()
        dead = [r for r in rows if self.holder_gone(r.lease_owner)]
        if not dead:
            return 0
        freed = 0
        with self.store.transaction() as conn:
            for r in dead:  # unless another process freed or took it since the read
                freed += conn.execute(
                    jobs.update()
                    .where(jobs.c.id == r.id, jobs.c.state == RUNNING, jobs.c.lease_owner == r.lease_owner)
                    .values(state=PENDING, lease_owner=None, lease_until=None, next_try_at=utcnow())
                ).rowcount
        return freed

    def holder_gone(self, owner: str | None) -> bool:
        """Whether a lease's holder (``owner``, as owner() wrote it) is a process of this host
        and PID namespace that no longer runs; False for anyone else's (app/lease_holders.py)."""
        return (
            owner is not None
            and self._namespace != lease_holders.UNKNOWN_NAMESPACE
            and owner.startswith(self.owner_prefix)
            and not lease_holders.alive(owner[len(self.owner_prefix) :])
        )

    # -- reading -----------------------------------------------------------------------

    def job_for(self, username: str) -> dict | None:
        with self.store.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.username == user_key(username))).mappings().first()
        if row is None:
            return None
        out = {k: row[k] for k in ("state", "priority", "source", "attempts", "last_error", "force")}
        for k in ("next_try_at", "created_at", "updated_at"):
            out[k] = aware(row[k]).isoformat() if row[k] else None
        return out

    def login_wait(self) -> float:
        """Seconds the oldest due login (or user event, or admin) job has waited unclaimed; 0
        when none waits. A live worker claims such a job within a second or a sync's length, so
        minutes mean that nothing drains the queue: no worker runs (``start_in_web = false``
        and no ``jira-avatar-sync worker``), or every one is stuck. Sweep jobs wait their turn
        by design and are left out."""
        now = utcnow()
        with self.store.read() as conn:
            oldest = conn.execute(
                select(func.min(jobs.c.next_try_at)).where(
                    jobs.c.state == PENDING, jobs.c.priority < SWEEP, jobs.c.next_try_at <= now
                )
            ).scalar()
        return max(0.0, (now - aware(oldest)).total_seconds()) if oldest is not None else 0.0

    def counts(self) -> dict[str, int]:
        with self.store.read() as conn:
            rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
        return {state: n for state, n in rows}

    def cancel_sweep(self, sweep_id: int) -> None:
        """Drop a cancelled sweep's queued work (a login merged into it stays)."""
        with self.store.transaction() as conn:
            conn.execute(
                jobs.delete().where(jobs.c.sweep_id == sweep_id, jobs.c.state != RUNNING, jobs.c.priority == SWEEP)
            )

    def forget(self, username: str) -> None:
        """user_deleted: drop any queued work for the user (a running attempt finishes)."""
        with self.store.transaction() as conn:
            conn.execute(jobs.delete().where(jobs.c.username == user_key(username), jobs.c.state != RUNNING))

    def prune_deliveries(self, older_than: timedelta = timedelta(days=2)) -> None:
        with self.store.transaction() as conn:
            conn.execute(deliveries.delete().where(deliveries.c.received_at < utcnow() - older_than))


def _job(row, attempts: int) -> Job:
    """A job row as its runner sees it (the sweep's view of the user in Jira, if it left one)."""
    hint = (
        JiraUser(row["username"], row["jira_key"], row["jira_avatar_id"], bool(row["jira_avatar_custom"]))
        if row["jira_key"]
        else None
    )
    return Job(
        row["id"],
        row["username"],
        row["priority"],
        bool(row["force"]),
        row["source"],
        attempts,
        row["sweep_id"],
        hint,
    )


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern (escape "/") for the values that start with ``prefix``: a host name's
    "_" must not stand for any character (another host's leases)."""
    return prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
