"""Running a sweep: every directory user, paged and streamed, compared, and only the users that
need work queued at low priority (logins keep priority). Per-user outcomes form the report
(app/sweep.py keeps it).

- The lock is the sweep row's lease, so it holds across processes and replicas; whichever
  process holds the lease runs the scan, and if it dies another (or the restarted one)
  resumes: at once on its host (take_over sees the process gone), elsewhere when the lease
  lapses. Users already in the report are not read or queued again.
- Incremental: a user whose directory entry carries the same change marker as at its last
  settled sync, and whose Jira picture is still ours, is not even read (no photo transferred).
  ``full`` ignores the markers. With a photo server ([http_photos]), whose changes move no
  marker, such a user whose picture came from the server is settled only when it answers 304
  to the stored tag (HttpPhotos.unchanged); the others are synced.
- Dry run: the same scan; the users needing work are synced with dry_run=True by the runner
  itself (reads only), so the report says exactly what a real run would do.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import func, select, update

from . import jira_budget, jira_users
from .database import describe_error
from .directory import DirectoryUnavailable
from .jira import JiraError, JiraUser
from .outcomes import NOT_IN_DIRECTORY, NOT_IN_JIRA, SETTLED, SUCCESSES, UNCHANGED
from .store import UNAVAILABLE as DATABASE_UNAVAILABLE
from .sweep import FAILED_SWEEP, FINISHED, RUNNING, RUNNING_LEASE, insert_items, sweep_items, sweeps
from .tables import user_key, utcnow

log = logging.getLogger(__name__)
PAGE = 500  # directory users compared, reported and queued together
WAITING_PAGES = 20  # directory pages held while Jira's users are still being read
NEAR_END = 64  # users left at which the runner looks for the sweep's end more often


def take_over(services) -> int | None:
    """Claim the running sweep whose lease expired (new, or its runner stopped or died), or
    whose runner was a process of this host that died (a kill -9: at once, not when the lease
    lapses)."""
    now, owner = utcnow(), services.queue.owner()
    with services.store.transaction() as conn:
        row = conn.execute(RUNNING_LEASE).first()
        still_free = services.sweeps.left_by_its_runner(row, now) if row is not None else None
        if still_free is None:
            return None
        taken = conn.execute(
            update(sweeps)
            .where(sweeps.c.id == row.id, still_free)
            .values(lease_owner=owner, lease_until=now + services.sweeps.lease)
        ).rowcount
    return row.id if taken else None


def run(services, sweep_id: int, stop: threading.Event | None = None) -> None:
    """Scan (or resume the scan), then watch the queued users until all are done. Taken over
    first: this process must hold the lease. ``stop`` set: let go of the lease at the next
    page (or the next look at the queue), leaving the sweep running for another process, or
    this one restarted, to resume at once."""
    _Run(services, sweep_id, stop).run()


def run_in_background(services, stop: threading.Event | None = None) -> threading.Thread | None:
    """Take over a sweep whose lease is free and run it on a thread of its own (``stop``: as
    for run())."""
    sweep_id = take_over(services)
    if sweep_id is None:
        return None
    thread = threading.Thread(target=run, args=(services, sweep_id, stop), name=f"sweep-{sweep_id}", daemon=True)
    thread.start()
    return thread


class _Cancelled(Exception):
    pass


class _Stopped(Exception):
    pass


class _TakenOver(Exception):
    """Another process holds the lease: this runner stalled past it (a frozen machine, a
    database away longer than the lease) and the sweep was taken over meanwhile."""


class _Run:
    def __init__(self, services, sweep_id: int, stop: threading.Event | None = None):
        self.services, self.id = services, sweep_id
        self.stop = stop or threading.Event()
        self.store, self.queue, self.sweeps = services.store, services.queue, services.sweeps
        self.full = False
        self.owner: str | None = None  # the lease holder take_over() wrote: this runner's
        self.dry: ThreadPoolExecutor | None = None  # a dry run syncs (reads only) on these threads
        self.bulk = jira_users.JiraUsers({}, False, "none")  # read while the scan's first pages are

    def run(self) -> None:
        with jira_budget.in_background():  # every Jira call of the sweep's waits behind logins
            self._run()

    def _run(self) -> None:
        try:
            with self.store.read() as conn:
                row = conn.execute(select(sweeps).where(sweeps.c.id == self.id)).mappings().one()
            self.owner = row["lease_owner"]
            if row["phase"] == "scanning":
                self.full = row["full"]
                self._scan(row["dry_run"])
            self._await_done()
        except _Cancelled:
            log.info("sweep %d cancelled", self.id)
        except _TakenOver:  # the other runner goes on; this one must neither renew nor end it
            log.warning("sweep %d was taken over by another process while this one stalled: it stops here", self.id)
        except _Stopped:
            with self.store.transaction() as conn:
                conn.execute(
                    update(sweeps)
                    .where(sweeps.c.id == self.id, sweeps.c.status == RUNNING, sweeps.c.lease_owner == self.owner)
                    .values(lease_until=utcnow())
                )
            log.info("sweep %d left for another process to resume", self.id)
        except DATABASE_UNAVAILABLE as exc:
            # not the sweep's fault, and its state is safe in the database: let the lease lapse,
            # and this or another process resumes it where it stopped (users reported stay done)
            log.warning("sweep %d paused, the database cannot be used now: %s", self.id, describe_error(exc))
        except Exception as exc:
            if isinstance(exc, (DirectoryUnavailable, JiraError)):  # expected: the reason says it all
                error = str(exc)
                log.error("sweep %d failed: %s", self.id, error)
            else:
                error = f"{type(exc).__name__}: {exc}"
                log.exception("sweep %d failed", self.id)
            with self.store.transaction() as conn:
                conn.execute(
                    update(sweeps)
                    .where(sweeps.c.id == self.id, sweeps.c.status == RUNNING, sweeps.c.lease_owner == self.owner)
                    .values(status=FAILED_SWEEP, error=error[:2000], finished_at=utcnow(), lease_until=None)
                )
        finally:
            self.sweeps.run_ended()

    def _scan(self, dry_run: bool) -> None:
        services = self.services
        seen: set[str] = set()
        self.dry = ThreadPoolExecutor(services.settings.jira.max_concurrency) if dry_run else None
        # Jira's users are read while the directories are paged, so the two reads overlap; pages
        # read meanwhile wait for Jira's answer (up to WAITING_PAGES of them: name, DN, marker).
        reader = ThreadPoolExecutor(1, thread_name_prefix=f"sweep-{self.id}-jira-read")
        reading = reader.submit(jira_budget.carried(self._read_jira_in_bulk))
        try:
            for directory in services.directories:
                waiting: list[list] = [[]]
                for user in directory.iter_users():
                    key = user_key(user.username)
                    if key in seen:  # the first directory holding the user wins
                        continue
                    seen.add(key)
                    waiting[-1].append(user)
                    if len(waiting[-1]) >= PAGE:
                        if reading.done() or len(waiting) >= WAITING_PAGES:
                            self._pages(directory.name, waiting, reading)
                            waiting = []
                        waiting.append([])
                self._pages(directory.name, waiting, reading)
            self.bulk = reading.result()  # a JiraError from the read fails the sweep, as it should
            # Jira users no directory holds
            rest = [(key, user.name) for key, user in self.bulk.users.items() if key not in seen]
            for i in range(0, len(rest), PAGE):
                self._items(None, [(key, name, NOT_IN_DIRECTORY, None) for key, name in rest[i : i + PAGE]])
        finally:
            reader.shutdown(wait=True)  # an error above waits for the read (bounded by its deadlines)
            if self.dry:
                self.dry.shutdown(wait=True)
        with self.store.transaction() as conn:
            conn.execute(
                update(sweeps).where(sweeps.c.id == self.id, sweeps.c.status == RUNNING).values(phase="syncing")
            )

    def _read_jira_in_bulk(self) -> jira_users.JiraUsers:
        bulk = jira_users.read_all(self.services.jira, self.services.settings.jira.user_groups)
        log.info("sweep %d: %d Jira users read in bulk (%s)", self.id, len(bulk.users), bulk.how)
        return bulk

    def _pages(self, directory: str, pages: list[list], reading: Future) -> None:
        self.bulk = reading.result()  # waits for it the first time; a JiraError fails the sweep
        for users in pages:
            self._page(directory, users)

    def _page(self, directory: str, users: list) -> None:
        """Decide a page of users: settled (reported from the store) or queued for a sync."""
        self._renew()
        if not users:
            return
        # Report rows, jobs and states are all keyed by user_key: 'JDoe' in AD is Jira's 'jdoe'.
        keyed = [(user_key(u.username), u) for u in users]
        with self.store.read() as conn:
            done = set(
                conn.execute(
                    select(sweep_items.c.username).where(
                        sweep_items.c.sweep_id == self.id, sweep_items.c.username.in_([k for k, _ in keyed])
                    )
                ).scalars()
            )
        keyed = [(k, u) for k, u in keyed if k not in done]
        states = self.store.get_many(k for k, _ in keyed)
        known, asked = self.bulk.users, set()
        if not self.bulk.complete:  # read alone the users the bulk read missed whose Jira view decides it
            asked = {k for k, u in keyed if k not in known and _needs_jira_view(u, states.get(k))}
        read_alone = self._read_jira_users(sorted(asked))
        settled, work, ask_photos = [], [], []
        http = self.services.syncer.photos.http
        for key, user in keyed:
            jira_user = known.get(key) or read_alone.get(key)
            if jira_user is None and (self.bulk.complete or key in asked):
                settled.append((key, user.username, NOT_IN_JIRA, None))
                continue
            state = states.get(key)
            if self.full or not _still_settled(user, state, jira_user):
                work.append((key, user.username, jira_user))
            elif http is None:
                outcome = UNCHANGED if state.last_outcome in SUCCESSES else state.last_outcome
                settled.append((key, user.username, outcome, state.last_error))
            elif state.last_outcome in SUCCESSES:  # a photo server's changes move no marker: ask it
                ask_photos.append((key, user.username, jira_user))
            else:  # no photo, an invalid one: the server may have one now, only a sync tells
                work.append((key, user.username, jira_user))
        if ask_photos:
            same = http.unchanged({key: states[key].photo_sha256 for key, _, _ in ask_photos})
            settled += [(key, name, UNCHANGED, None) for key, name, _ in ask_photos if key in same]
            work += [w for w in ask_photos if w[0] not in same]
        self._items(directory, settled, skipped=True)
        queued = [(key, name, None, None) for key, name, _ in work]
        if self.dry is not None:
            self._items(directory, queued)
            self._dry_sync(work)
            return
        with self.store.transaction() as conn:
            insert_items(conn, self.id, directory, queued, False)
            self.queue.enqueue_sweep(conn, self.id, [(key, jira_user) for key, _, jira_user in work])
        if work:
            self.queue.wakeup.set()

    def _dry_sync(self, work: list) -> None:
        """What a real run would do to each user, found by syncing with dry_run (reads only)."""
        assert self.dry is not None
        syncer = self.services.syncer
        results = self.dry.map(
            jira_budget.carried(lambda w: syncer.dry_run(w[0], jira_user=w[2], source="sweep")), work
        )
        for i, result in enumerate(results, 1):
            self.sweeps.record(self.id, result)
            if i % 50 == 0:
                self._renew()  # a page of dry-run syncs can outlast a short lease

    def _read_jira_users(self, names: list[str]) -> dict[str, JiraUser]:
        """Per-user reads of those a bulk read could not give, jira.max_concurrency at a time
        (Jira finds 'jdoe' for 'JDoe'; the answer is keyed as asked)."""
        if not names:
            return {}
        with ThreadPoolExecutor(self.services.settings.jira.max_concurrency) as pool:
            found = pool.map(jira_budget.carried(self.services.jira.get_user), names)
            return {name: user for name, user in zip(names, found) if user is not None}

    def _items(self, directory, rows, skipped=False) -> None:
        if rows:
            with self.store.transaction() as conn:
                insert_items(conn, self.id, directory, rows, skipped)

    def _await_done(self) -> None:
        """Wait until every user queued by the sweep has an outcome, then finish it. The sweep's
        status is read at every look (a cancel is seen within a poll) but the lease is written
        only once a third of it has passed: a renewal is a write transaction, and at every
        look it would take the writer the syncs record with four times a second."""
        renew_every = self.sweeps.lease.total_seconds() / 3
        renewed = -renew_every
        last_waiting, moved_at = -1, 0.0
        while True:
            if time.monotonic() - renewed >= renew_every:
                self._renew()
                renewed = time.monotonic()
            with self.store.read() as conn:
                self._check(conn)
                waiting = conn.execute(
                    select(func.count())
                    .select_from(sweep_items)
                    .where(sweep_items.c.sweep_id == self.id, sweep_items.c.outcome.is_(None))
                ).scalar_one()
            if not waiting:
                break
            now = time.monotonic()
            if waiting != last_waiting:
                last_waiting, moved_at = waiting, now
            # near the end, while users still get done: a look every 20 ms, so that the sweep is
            # seen finished within a moment of its last user rather than a quarter second later
            # (not while its last users wait for a retry: then a look costs and buys nothing)
            time.sleep(0.02 if waiting <= NEAR_END and now - moved_at < 1 else 0.25)
        with self.store.transaction() as conn:
            conn.execute(
                update(sweeps)
                .where(sweeps.c.id == self.id, sweeps.c.status == RUNNING)
                .values(status=FINISHED, phase="done", finished_at=utcnow(), lease_until=None)
            )

    def _renew(self) -> None:
        with self.store.transaction() as conn:
            self._check(conn)
            conn.execute(update(sweeps).where(sweeps.c.id == self.id).values(lease_until=utcnow() + self.sweeps.lease))

    def _check(self, conn) -> None:
        """Go on only while asked to, the sweep still runs and this runner still holds it."""
        if self.stop.is_set():
            raise _Stopped()
        row = conn.execute(select(sweeps.c.status, sweeps.c.lease_owner).where(sweeps.c.id == self.id)).first()
        if row is None or row.status != RUNNING:
            raise _Cancelled()
        if row.lease_owner != self.owner:
            raise _TakenOver()


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
