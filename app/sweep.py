"""Full sweep: every directory user, paged and streamed, compared, and only the users that need
work queued at low priority (logins keep priority). Per-user outcomes form the report.

- The lock is the sweep row's lease, so it holds across processes and replicas; whichever
  process holds the lease runs the scan, and if it dies the lease expires and another (or the
  restarted one) resumes: users already in the report are not read or queued again.
- Incremental: a user whose directory entry carries the same change marker as at its last
  settled sync, and whose Jira picture is still ours, is not even read (no photo transferred).
  ``full`` ignores the markers.
- Dry run: the same scan; the users needing work are synced with dry_run=True by the runner
  itself (reads only), so the report says exactly what a real run would do.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import Boolean, Column, DateTime, Integer, String, Table, Text, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import jira_users
from .database import describe_error
from .directory import DirectoryUnavailable
from .jira import JiraError, JiraUser
from .outcomes import NOT_IN_DIRECTORY, NOT_IN_JIRA, SETTLED, SUCCESSES, UNCHANGED, SweepStatus
from .store import UNAVAILABLE as DATABASE_UNAVAILABLE
from .store import aware, metadata, user_key, utcnow
from .sync import SyncResult

log = logging.getLogger(__name__)
RUNNING, FINISHED, FAILED_SWEEP, CANCELLED = (
    SweepStatus.RUNNING,
    SweepStatus.FINISHED,
    SweepStatus.FAILED,
    SweepStatus.CANCELLED,
)
MAX_LEASE_SECONDS = 30  # a dead runner's sweep is resumed elsewhere within this
PAGE = 500

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
    """A sweep is already running (or sweeping is not possible now)."""


class Sweeps:
    def __init__(self, services):
        self.services = services
        self.store, self.queue = services.store, services.queue
        self.lease = timedelta(seconds=min(MAX_LEASE_SECONDS, services.settings.worker.lease_seconds))

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
                raise SweepConflict(f"sweep {running.id} is running")
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
        return bool(changed)

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

    def running(self) -> dict | None:
        """The running sweep's summary, if one runs."""
        with self.store.read() as conn:
            sweep_id = conn.execute(select(sweeps.c.id).where(sweeps.c.status == RUNNING)).scalar()
        return self.summary(sweep_id) if sweep_id is not None else None

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

    def record(self, sweep_id: int, result: SyncResult, tx=None) -> None:
        """A queued user of the sweep is done (a failed attempt counts: the job retries apart),
        in the caller's transaction (a worker's, that also ends the job) or one of its own."""
        if tx is None:
            with self.store.transaction() as tx:
                return self.record(sweep_id, result, tx)
        tx.execute(
            _RECORD,
            {
                "p_sweep": sweep_id,
                "p_user": user_key(result.username),
                "p_outcome": result.outcome,
                "p_reason": result.reason,
                "p_directory": result.directory,
            },
        )

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

    # -- running -----------------------------------------------------------------------

    def take_over(self) -> int | None:
        """Claim the running sweep whose lease expired (new, or its runner died)."""
        now, owner = utcnow(), self.queue.owner()
        with self.store.transaction() as conn:
            row = conn.execute(
                select(sweeps.c.id).where(sweeps.c.status == RUNNING, sweeps.c.lease_until < now)
            ).first()
            if row is None:
                return None
            taken = conn.execute(
                update(sweeps)
                .where(sweeps.c.id == row.id, sweeps.c.lease_until < now)
                .values(lease_owner=owner, lease_until=now + self.lease)
            ).rowcount
        return row.id if taken else None

    def run(self, sweep_id: int, on_progress=None) -> None:
        """Scan (or resume the scan), then watch the queued users until all are done."""
        try:
            with self.store.read() as conn:
                row = conn.execute(select(sweeps).where(sweeps.c.id == sweep_id)).mappings().one()
            if row["phase"] == "scanning":
                self._scan(sweep_id, row["dry_run"], row["full"], on_progress)
            self._await_done(sweep_id, on_progress)
        except _Cancelled:
            log.info("sweep %d cancelled", sweep_id)
        except DATABASE_UNAVAILABLE as exc:
            # not the sweep's fault, and its state is safe in the database: let the lease lapse,
            # and this or another process resumes it where it stopped (users reported stay done)
            log.warning("sweep %d paused, the database cannot be used now: %s", sweep_id, describe_error(exc))
        except Exception as exc:
            if isinstance(exc, (DirectoryUnavailable, JiraError)):  # expected: the reason says it all
                error = str(exc)
                log.error("sweep %d failed: %s", sweep_id, error)
            else:
                error = f"{type(exc).__name__}: {exc}"
                log.exception("sweep %d failed", sweep_id)
            with self.store.transaction() as conn:
                conn.execute(
                    update(sweeps)
                    .where(sweeps.c.id == sweep_id, sweeps.c.status == RUNNING)
                    .values(status=FAILED_SWEEP, error=error[:2000], finished_at=utcnow(), lease_until=None)
                )

    def _scan(self, sweep_id: int, dry_run: bool, full: bool, on_progress) -> None:
        services = self.services
        bulk = jira_users.read_all(services.jira, services.settings.jira.user_groups)
        log.info("sweep %d: %d Jira users read in bulk (%s)", sweep_id, len(bulk.users), bulk.how)
        seen: set[str] = set()
        dry = ThreadPoolExecutor(services.settings.jira.max_concurrency) if dry_run else None
        try:
            for directory in services.directories:
                page: list = []
                for user in directory.iter_users():
                    key = user_key(user.username)
                    if key in seen:  # the first directory holding the user wins
                        continue
                    seen.add(key)
                    page.append(user)
                    if len(page) >= PAGE:
                        self._page(sweep_id, directory.name, page, bulk, full, dry)
                        page = []
                        if on_progress:
                            on_progress(self.summary(sweep_id))
                self._page(sweep_id, directory.name, page, bulk, full, dry)
            if bulk.users:  # Jira users no directory holds
                rest = [(key, user.name) for key, user in bulk.users.items() if key not in seen]
                for i in range(0, len(rest), PAGE):
                    self._items(
                        sweep_id, None, [(key, name, NOT_IN_DIRECTORY, None) for key, name in rest[i : i + PAGE]]
                    )
        finally:
            if dry:
                dry.shutdown(wait=True)
        with self.store.transaction() as conn:
            conn.execute(
                update(sweeps).where(sweeps.c.id == sweep_id, sweeps.c.status == RUNNING).values(phase="syncing")
            )

    def _page(self, sweep_id, directory, users, bulk, full, dry) -> None:
        """Decide a page of users: settled (reported from the store) or queued for a sync."""
        self._renew(sweep_id)
        if not users:
            return
        # Report rows, jobs and states are all keyed by user_key: 'JDoe' in AD is Jira's 'jdoe'.
        keyed = [(user_key(u.username), u) for u in users]
        with self.store.read() as conn:
            done = set(
                conn.execute(
                    select(sweep_items.c.username).where(
                        sweep_items.c.sweep_id == sweep_id, sweep_items.c.username.in_([k for k, _ in keyed])
                    )
                ).scalars()
            )
        keyed = [(k, u) for k, u in keyed if k not in done]
        states = self.store.get_many(k for k, _ in keyed)
        known, asked = bulk.users, set()
        if not bulk.complete:  # read alone the users the bulk read missed whose Jira view decides it
            asked = {k for k, u in keyed if k not in known and _needs_jira_view(u, states.get(k))}
        read_alone = self._read_jira_users(sorted(asked))
        settled, work = [], []
        for key, user in keyed:
            jira_user = known.get(key) or read_alone.get(key)
            if jira_user is None and (bulk.complete or key in asked):
                settled.append((key, user.username, NOT_IN_JIRA, None))
                continue
            state = states.get(key)
            if not full and _still_settled(user, state, jira_user):
                outcome = UNCHANGED if state.last_outcome in SUCCESSES else state.last_outcome
                settled.append((key, user.username, outcome, state.last_error))
            else:
                work.append((key, user.username, jira_user))
        self._items(sweep_id, directory, settled, skipped=True)
        queued = [(key, name, None, None) for key, name, _ in work]
        if dry is not None:
            self._items(sweep_id, directory, queued)
            syncer = self.services.syncer
            results = dry.map(lambda w: syncer.sync_user(w[0], dry_run=True, jira_user=w[2], source="sweep"), work)
            for i, result in enumerate(results, 1):
                self.record(sweep_id, result)
                if i % 50 == 0:
                    self._renew(sweep_id)  # a page of dry-run syncs can outlast a short lease
            return
        with self.store.transaction() as conn:
            _insert_items(conn, sweep_id, directory, queued, False)
            self.queue.enqueue_sweep(conn, sweep_id, [(key, jira_user) for key, _, jira_user in work])
        if work:
            self.queue.wakeup.set()

    def _read_jira_users(self, names: list[str]) -> dict[str, JiraUser]:
        """Per-user reads of those a bulk read could not give, jira.max_concurrency at a time
        (Jira finds 'jdoe' for 'JDoe'; the answer is keyed as asked)."""
        if not names:
            return {}
        with ThreadPoolExecutor(self.services.settings.jira.max_concurrency) as pool:
            found = pool.map(self.services.jira.get_user, names)
            return {name: user for name, user in zip(names, found) if user is not None}

    def _items(self, sweep_id, directory, rows, skipped=False) -> None:
        if rows:
            with self.store.transaction() as conn:
                _insert_items(conn, sweep_id, directory, rows, skipped)

    def _await_done(self, sweep_id: int, on_progress) -> None:
        while True:
            self._renew(sweep_id)
            with self.store.read() as conn:
                waiting = conn.execute(
                    select(func.count())
                    .select_from(sweep_items)
                    .where(sweep_items.c.sweep_id == sweep_id, sweep_items.c.outcome.is_(None))
                ).scalar_one()
            if on_progress:
                on_progress(self.summary(sweep_id))
            if not waiting:
                break
            time.sleep(0.25)
        with self.store.transaction() as conn:
            conn.execute(
                update(sweeps)
                .where(sweeps.c.id == sweep_id, sweeps.c.status == RUNNING)
                .values(status=FINISHED, phase="done", finished_at=utcnow(), lease_until=None)
            )

    def _renew(self, sweep_id: int) -> None:
        with self.store.transaction() as conn:
            row = conn.execute(select(sweeps.c.status).where(sweeps.c.id == sweep_id)).first()
            if row is None or row.status != RUNNING:
                raise _Cancelled()
            conn.execute(update(sweeps).where(sweeps.c.id == sweep_id).values(lease_until=utcnow() + self.lease))


class _Cancelled(Exception):
    pass


def _needs_jira_view(user, state) -> bool:
    """Only Jira can tell whether this user is settled: its picture is still ours, or it still
    does not have the user (the entry unchanged either way)."""
    return (
        state is not None
        and state.last_outcome in SUCCESSES + (NOT_IN_JIRA,)
        and bool(user.marker)
        and state.marker == user.marker
    )


def _still_settled(user, state, jira_user: JiraUser | None) -> bool:
    """Nothing can have changed since this user's last settled sync."""
    if state is None or state.last_outcome not in SETTLED or not user.marker or state.marker != user.marker:
        return False
    if state.last_outcome == NOT_IN_JIRA:
        return False  # Jira may have the user by now; only reading Jira (done before) tells
    if state.last_outcome in SUCCESSES:
        # our picture must still be the one shown; without a bulk read we cannot know: sync it
        return jira_user is not None and jira_user.avatar_id == state.avatar_id
    return True  # no_photo, invalid_photo...: the entry is as it was


def _insert_items(conn, sweep_id, directory, rows, skipped) -> None:
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


def run_in_background(services) -> threading.Thread | None:
    """Take over a sweep whose lease is free and run it on a thread of its own."""
    sweep_id = services.sweeps.take_over()
    if sweep_id is None:
        return None
    thread = threading.Thread(target=services.sweeps.run, args=(sweep_id,), name=f"sweep-{sweep_id}", daemon=True)
    thread.start()
    return thread
