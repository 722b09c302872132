"""Full sweeps, their ledger: the ``sweeps`` row (status, phase, lease) and one report row per
user (``sweep_items``); starting, cancelling, reading, recording a user's outcome, pruning old
reports. Running a sweep (the scan, the comparison, the queueing) is app/sweep_run.py.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from datetime import timedelta

from cachetools import TTLCache
from sqlalchemy import Boolean, Column, DateTime, Integer, String, Table, Text, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .outcomes import SUCCESSES, SweepStatus
from .sync_result import SyncResult
from .tables import aware, metadata, user_key, utcnow

log = logging.getLogger(__name__)
RUNNING, FINISHED, FAILED_SWEEP, CANCELLED = (
    SweepStatus.RUNNING,
    SweepStatus.FINISHED,
    SweepStatus.FAILED,
    SweepStatus.CANCELLED,
)
MAX_LEASE_SECONDS = 30  # a dead runner's sweep is resumed elsewhere within this
CANCEL_RECHECK_SECONDS = 0.5  # how late a worker holding a batch of sweep jobs may see a cancel

sweeps = Table(
    "sweeps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("status", String(16), nullable=False, index=True),
    Column("phase", String(16), nullable=False),  # scanning, syncing, done
    Column("dry_run", Boolean, nullable=False),
    Column("full", Boolean, nullable=False),
    Column("trigger", String(32), nullable=False),  # api, cli, schedule
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("lease_owner", String(128)),
    Column("lease_until", DateTime(timezone=True)),
    Column("error", Text),
)

sweep_items = Table(
    "sweep_items",
    metadata,
    Column("sweep_id", Integer, primary_key=True),
    Column("username", String(255), primary_key=True),  # user_key: how jobs and states know the user
    Column("display_name", String(255)),  # as the directory (or Jira) spells it, for the report
    Column("directory", String(255)),
    Column("outcome", String(32)),  # None while queued
    Column("reason", Text),
    Column("skipped", Boolean, nullable=False, default=False),  # settled before: not read again
)


_RECORD = (
    update(sweep_items)
    .where(sweep_items.c.sweep_id == bindparam("p_sweep"), sweep_items.c.username == bindparam("p_user"))
    .values(outcome=bindparam("p_outcome"), reason=bindparam("p_reason"), directory=bindparam("p_directory"))
)


class SweepConflict(Exception):
    """A sweep is already running (``running``: its id), or sweeping is not possible now."""

    def __init__(self, message: str, running: int | None = None):
        super().__init__(message)
        self.running = running


# the running sweep (one at a time) and who holds it: Sweeps.left_by_its_runner, take_over
RUNNING_LEASE = select(sweeps.c.id, sweeps.c.lease_until, sweeps.c.lease_owner).where(sweeps.c.status == RUNNING)


class Sweeps:
    def __init__(self, services):
        self.services = services
        self.store, self.queue = services.store, services.queue
        self.lease = timedelta(seconds=min(MAX_LEASE_SECONDS, services.settings.worker.lease_seconds))
        self._seen_lock = threading.Lock()  # cachetools caches are not thread-safe
        # sweep id -> whether it was cancelled, as read at most CANCEL_RECHECK_SECONDS ago
        self._cancelled_seen: TTLCache[int, bool] = TTLCache(maxsize=64, ttl=CANCEL_RECHECK_SECONDS)
        # how many runs of sweeps ended in this process: the command line's progress line wakes
        # at an end instead of seeing it a poll later
        self._runs_ended = 0
        self._run_ended = threading.Condition()

    # -- starting, cancelling, reading -------------------------------------------------

    def start(self, dry_run: bool = False, full: bool = False, trigger: str = "api") -> int:
        if self.services.settings.sync_disabled:
            raise SweepConflict("synchronisation is disabled (photo_attributes is empty)")
        now = utcnow()
        with self.store.transaction() as conn:
            if conn.dialect.name == "postgresql":  # one starter at a time across replicas
                conn.exec_driver_sql("LOCK TABLE sweeps IN SHARE ROW EXCLUSIVE MODE")
            running = conn.execute(select(sweeps.c.id).where(sweeps.c.status == RUNNING)).first()
            if running:
                raise SweepConflict(f"sweep {running.id} is running", running=running.id)
            # lease_until = now: free for the first worker (or the CLI) to take and run
            return conn.execute(
                sweeps.insert()
                .values(
                    status=RUNNING,
                    phase="scanning",
                    dry_run=dry_run,
                    full=full,
                    trigger=trigger,
                    started_at=now,
                    lease_until=now,
                )
                .returning(sweeps.c.id)
            ).scalar_one()

    def cancel(self, sweep_id: int) -> bool:
        with self.store.transaction() as conn:
            changed = conn.execute(
                update(sweeps)
                .where(sweeps.c.id == sweep_id, sweeps.c.status == RUNNING)
                .values(status=CANCELLED, finished_at=utcnow())
            ).rowcount
        if changed:
            self.queue.cancel_sweep(sweep_id)
            with self._seen_lock:
                self._cancelled_seen[sweep_id] = True
        return bool(changed)

    def cancelled(self, sweep_id: int) -> bool:
        """Whether the sweep was cancelled, here or on any replica, as read at most
        CANCEL_RECHECK_SECONDS ago: a worker holding a batch of its jobs asks before each."""
        with self._seen_lock:
            seen = self._cancelled_seen.get(sweep_id)
        if seen is not None:
            return seen
        with self.store.read() as conn:
            cancelled = conn.execute(select(sweeps.c.status).where(sweeps.c.id == sweep_id)).scalar() == CANCELLED
        with self._seen_lock:
            self._cancelled_seen[sweep_id] = cancelled
        return cancelled

    @property
    def runs_ended(self) -> int:
        return self._runs_ended

    def run_ended(self) -> None:
        """A runner in this process stopped running a sweep (it ended, or was let go of)."""
        with self._run_ended:
            self._runs_ended += 1
            self._run_ended.notify_all()

    def wait_for_run_end(self, seen: int, timeout: float) -> None:
        """Sleep ``timeout`` seconds, or less if a runner in this process stops running a sweep
        meanwhile or stopped since ``runs_ended`` was ``seen``."""
        with self._run_ended:
            self._run_ended.wait_for(lambda: self._runs_ended != seen, timeout)

    def summary(self, sweep_id: int) -> dict | None:
        with self.store.read() as conn:
            row = conn.execute(select(sweeps).where(sweeps.c.id == sweep_id)).mappings().first()
            if row is None:
                return None
            counts = dict(
                conn.execute(
                    select(sweep_items.c.outcome, func.count())
                    .where(sweep_items.c.sweep_id == sweep_id)
                    .group_by(sweep_items.c.outcome)
                ).all()
            )
        return _summary(row, counts)

    def running(self, lapsed: bool = False) -> dict | None:
        """The running sweep's summary, if one runs. ``lapsed``: only if its runner stopped (its
        lease lapsed, or its process of this host died); the service's workers resume such a
        sweep by themselves, the command line when asked for the same kind of sweep."""
        with self.store.read() as conn:
            row = conn.execute(RUNNING_LEASE).first()
        if row is None or (lapsed and self.left_by_its_runner(row, utcnow()) is None):
            return None
        return self.summary(row.id)

    def left_by_its_runner(self, row, now):
        """For a running sweep's RUNNING_LEASE row: the condition under which another process may
        take it over (its UPDATE's guard, that nobody took it meanwhile), or None while its
        runner holds it. Free when its lease lapsed, or when its runner, a process of this host,
        died (a dead holder renews nothing, so its name on the row is guard enough)."""
        if row.lease_until is not None and aware(row.lease_until) < now:
            return sweeps.c.lease_until < now
        if self.queue.holder_gone(row.lease_owner):
            return sweeps.c.lease_owner == row.lease_owner
        return None

    def last_ended(self) -> dict | None:
        """The status and end of the sweep that ended last (finished, failed or cancelled)."""
        with self.store.read() as conn:
            row = conn.execute(
                select(sweeps.c.id, sweeps.c.status, sweeps.c.finished_at)
                .where(sweeps.c.status != RUNNING, sweeps.c.finished_at.is_not(None))
                .order_by(sweeps.c.finished_at.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        return {"id": row.id, "status": row.status, "finished_epoch": aware(row.finished_at).timestamp()}

    def latest(self, limit: int = 50) -> list[dict]:
        """The summaries of the last ``limit`` sweeps, newest first."""
        with self.store.read() as conn:
            ids = conn.execute(select(sweeps.c.id).order_by(sweeps.c.id.desc()).limit(limit)).scalars().all()
        return [s for s in map(self.summary, ids) if s is not None]  # pruned meanwhile: left out

    def problems(self, sweep_id: int, limit: int | None = None) -> list[dict]:
        """Every user whose outcome is none of updated, restored, unchanged."""
        query = (
            select(
                func.coalesce(sweep_items.c.display_name, sweep_items.c.username).label("username"),
                sweep_items.c.outcome,
                sweep_items.c.reason,
                sweep_items.c.directory,
            )
            .where(
                sweep_items.c.sweep_id == sweep_id,
                sweep_items.c.outcome.is_not(None),
                sweep_items.c.outcome.not_in(SUCCESSES),
            )
            .order_by(sweep_items.c.outcome, sweep_items.c.username)
        )
        if limit:
            query = query.limit(limit)
        with self.store.read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def problems_csv(self, sweep_id: int) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, ["username", "outcome", "reason", "directory"])
        writer.writeheader()
        writer.writerows({k: _spreadsheet_safe(v) for k, v in row.items()} for row in self.problems(sweep_id))
        return out.getvalue()

    def record(self, sweep_id: int, result: SyncResult) -> None:
        """A user of a dry run is done, in a transaction of its own (a worker's jobs go through
        record_many, in the transaction that also ends them)."""
        with self.store.transaction() as tx:
            self.record_many([(sweep_id, result)], tx)

    @staticmethod
    def record_many(done: list[tuple[int, SyncResult]], tx) -> None:
        """Queued users of sweeps are done (a failed attempt counts: the job retries apart), in
        the caller's transaction, in one statement."""
        if not done:
            return
        params = [
            {
                "p_sweep": sweep_id,
                "p_user": user_key(result.username),
                "p_outcome": result.outcome,
                "p_reason": result.reason,
                "p_directory": result.directory,
            }
            for sweep_id, result in done
        ]
        tx.execute(_RECORD, params)

    def prune(self, keep_days: int = 30, keep_last: int = 10) -> int:
        """Forget the reports of finished sweeps older than ``keep_days`` (the last few stay):
        a nightly sweep of 100,000 users would otherwise add 36 million rows a year."""
        cutoff = utcnow() - timedelta(days=keep_days)
        with self.store.transaction() as conn:
            recent = select(sweeps.c.id).order_by(sweeps.c.id.desc()).limit(keep_last).scalar_subquery()
            old = (
                conn.execute(
                    select(sweeps.c.id).where(
                        sweeps.c.status != RUNNING, sweeps.c.started_at < cutoff, sweeps.c.id.not_in(recent)
                    )
                )
                .scalars()
                .all()
            )
            if old:
                conn.execute(sweep_items.delete().where(sweep_items.c.sweep_id.in_(old)))
                conn.execute(sweeps.delete().where(sweeps.c.id.in_(old)))
        return len(old)


def insert_items(conn, sweep_id, directory, rows, skipped) -> None:
    """``rows``: (user_key, name as spelt, outcome or None while queued, reason)."""
    if not rows:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        insert(sweep_items).on_conflict_do_nothing(index_elements=["sweep_id", "username"]),
        [
            {
                "sweep_id": sweep_id,
                "username": k,
                "display_name": n if n != k else None,
                "directory": directory,
                "outcome": o,
                "reason": r,
                "skipped": skipped,
            }
            for k, n, o, r in rows
        ],
    )


def _spreadsheet_safe(value):
    """A cell a spreadsheet will not run as a formula (=HYPERLINK(...) in a username): text
    starting with = + - @ or a control character is quoted with a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r", "\n"):
        return "'" + value
    return value


def _summary(row, counts: dict) -> dict:
    total = sum(counts.values())
    waiting = counts.pop(None, 0)
    done = total - waiting
    started, finished = aware(row["started_at"]), aware(row["finished_at"])
    end = finished or utcnow()
    elapsed = max((end - started).total_seconds(), 1e-6)
    rate = done / elapsed
    return {
        "id": row["id"],
        "status": row["status"],
        "phase": row["phase"],
        "dry_run": row["dry_run"],
        "full": row["full"],
        "trigger": row["trigger"],
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat() if finished else None,
        "total": total,
        "done": done,
        "counts": {k: v for k, v in sorted(counts.items())},
        "rate_per_second": round(rate, 1),
        "eta_seconds": round(waiting / rate)
        if rate and row["status"] == RUNNING and row["phase"] != "scanning"
        else None,
        "error": row["error"],
    }
