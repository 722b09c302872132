"""The queue's tables and the statements it runs on them, built once per dialect (SQLAlchemy
caches their compiled form). The merge rules of ``enqueue`` are the upsert's ON CONFLICT
clause here: app/queue.py says what they mean.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import BindParameter

from .jira import JiraUser
from .outcomes import JobState
from .tables import metadata, user_key

LOGIN, USER_EVENT, MANUAL, SWEEP = 0, 1, 2, 10  # priorities: lower runs first
PENDING, RUNNING, FAILED = JobState.PENDING, JobState.RUNNING, JobState.FAILED

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(255), nullable=False, unique=True),
    Column("priority", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("force", Boolean, nullable=False, default=False),
    Column("again", Boolean, nullable=False, default=False),  # an event came in while running
    Column("source", String(32), nullable=False),
    Column("sweep_id", Integer),
    # Jira's view of the user as a sweep read it in bulk: saves the job one GET (a login
    # merging into the job clears it, so an active user is always read fresh).
    Column("jira_key", String(255)),
    Column("jira_avatar_id", String(32)),
    Column("jira_avatar_custom", Boolean),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_try_at", DateTime(timezone=True), nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_until", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# claim() reads due work by these; without them every claim scans the whole queue
Index("jobs_due", jobs.c.state, jobs.c.priority, jobs.c.next_try_at)
Index("jobs_lease", jobs.c.state, jobs.c.lease_until)
Index("jobs_sweep", jobs.c.sweep_id)

deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(255), primary_key=True),  # X-Atlassian-Webhook-Identifier
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
)


# The statements, built once (SQLAlchemy caches their compiled form).
NOW: BindParameter[datetime] = bindparam("now")
MINE = and_(jobs.c.id == bindparam("job"), jobs.c.lease_owner == bindparam("lease_of"))
# the leases of jobs one process runs (lease_owner "host:namespace:pid:start:thread"; "/" escapes the host's name)
RENEW = (
    jobs.update()
    .where(
        jobs.c.id.in_(bindparam("jobs", expanding=True)),
        jobs.c.state == RUNNING,
        jobs.c.lease_owner.like(bindparam("process"), escape="/"),
    )
    .values(lease_until=bindparam("until"))
)
LEASE = (
    jobs.update()
    .where(jobs.c.id == bindparam("job"))
    .values(
        state=RUNNING,
        lease_owner=bindparam("lease_of"),
        again=False,
        lease_until=bindparam("until"),
        attempts=jobs.c.attempts + 1,
        updated_at=NOW,
    )
)
# a user's job as an admin's sync now finds it: free to take (not running, or its worker died),
# or held by a worker now
_HELD = and_(jobs.c.state == RUNNING, jobs.c.lease_until >= NOW)
FREE_JOB = select(jobs).where(jobs.c.username == bindparam("username"), ~_HELD)
HELD_JOB = select(jobs.c.lease_until).where(jobs.c.username == bindparam("username"), _HELD)
# a job of a worker's batch whose sweep was cancelled meanwhile, unless a login, an admin's sync
# or a user event merged into it
DROP_CANCELLED = jobs.delete().where(MINE, jobs.c.state == RUNNING, jobs.c.priority == SWEEP, ~jobs.c.again)
GIVE_BACK = (  # a claimed job not started: pending again at once, its attempt not counted
    jobs.update()
    .where(MINE, jobs.c.state == RUNNING)
    .values(
        state=PENDING,
        lease_owner=None,
        lease_until=None,
        again=False,
        attempts=jobs.c.attempts - 1,
        next_try_at=NOW,
        updated_at=NOW,
    )
)
# a job above sweep priority that is due, or whose worker died (its lease lapsed): a worker
# busy with sweep batches takes it next (app/worker.py)
URGENT = (
    select(jobs.c.id)
    .where(
        jobs.c.priority < SWEEP,
        or_(
            and_(jobs.c.state == PENDING, jobs.c.next_try_at <= NOW),
            and_(jobs.c.state == RUNNING, jobs.c.lease_until < NOW),
        ),
    )
    .limit(1)
)
RERUN = (
    jobs.update()
    .where(MINE, jobs.c.again.is_(True))
    .values(
        state=PENDING,
        again=False,
        attempts=0,
        lease_owner=None,
        lease_until=None,
        next_try_at=NOW,
        last_error=None,
        updated_at=NOW,
    )
)
DROP = (
    jobs.delete()
    .where(
        jobs.c.id.in_(bindparam("jobs", expanding=True)),
        jobs.c.lease_owner == bindparam("lease_of"),
        jobs.c.again.is_(False),
        jobs.c.state == RUNNING,
    )
    .returning(jobs.c.id)
)
FAILED_ATTEMPT = (
    jobs.update()
    .where(MINE)
    .values(
        lease_owner=None,
        lease_until=None,
        last_error=bindparam("reason"),
        updated_at=NOW,
        state=bindparam("new_state"),
        next_try_at=bindparam("next"),
    )
)
FRESH = (
    jobs.update()
    .where(jobs.c.id == bindparam("job"), jobs.c.again.is_(True))
    .values(state=PENDING, again=False, attempts=0, next_try_at=NOW)
)


@functools.cache
def due(limit: int, min_priority: int):
    """The due jobs a claim takes: pending ones by priority, and those of dead workers."""
    pending = (
        select(jobs)
        .where(jobs.c.state == PENDING, jobs.c.next_try_at <= NOW)
        .order_by(jobs.c.priority, jobs.c.next_try_at, jobs.c.id)
        .limit(limit)
    )
    expired = select(jobs).where(jobs.c.state == RUNNING, jobs.c.lease_until < NOW).limit(limit)
    if min_priority > LOGIN:
        pending, expired = (q.where(jobs.c.priority >= min_priority) for q in (pending, expired))
    return pending, expired


@dataclass(frozen=True)
class Upserts:
    delivery: Any
    enqueue: Any


@functools.cache
def upserts(dialect: str) -> Upserts:
    """The two upserts, in the dialect's own ON CONFLICT."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    delivery = (
        insert(deliveries)
        .values(id=bindparam("id"), received_at=bindparam("received_at"))
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(deliveries.c.id)
    )
    now, rerun = NOW, bindparam("rerun", type_=Boolean)
    stmt = insert(jobs).values(
        username=bindparam("username"),
        priority=bindparam("priority"),
        state=PENDING,
        force=bindparam("force"),
        again=False,
        source=bindparam("source"),
        sweep_id=bindparam("sweep_id"),
        jira_key=bindparam("jira_key"),
        jira_avatar_id=bindparam("jira_avatar_id"),
        jira_avatar_custom=bindparam("jira_avatar_custom"),
        attempts=0,
        next_try_at=now,
        created_at=now,
        updated_at=now,
    )
    new = stmt.excluded
    running = jobs.c.state == RUNNING
    smaller = func.least if dialect == "postgresql" else func.min
    enqueue = stmt.on_conflict_do_update(
        index_elements=["username"],
        set_={
            "priority": smaller(jobs.c.priority, new.priority),
            "force": jobs.c.force | new.force,
            # merged into a running job: maybe run once more after it (see enqueue)
            "again": case((and_(running, rerun), True), else_=jobs.c.again),
            "source": case((jobs.c.priority <= new.priority, jobs.c.source), else_=new.source),
            "state": case((running, RUNNING), else_=PENDING),
            "attempts": case((jobs.c.state == FAILED, 0), else_=jobs.c.attempts),
            "next_try_at": case((running, jobs.c.next_try_at), else_=now),
            "sweep_id": func.coalesce(new.sweep_id, jobs.c.sweep_id),  # a sweep must see its user done
            "jira_key": new.jira_key,
            "jira_avatar_id": new.jira_avatar_id,
            "jira_avatar_custom": new.jira_avatar_custom,
            "updated_at": now,
        },
    )
    return Upserts(delivery, enqueue)


def upsert_params(username, priority, source, force, sweep_id, now, hint: JiraUser | None) -> dict:
    return {
        "username": user_key(username),
        "priority": priority,
        "force": force,
        "source": source,
        "sweep_id": sweep_id,
        "now": now,
        "rerun": source != "login",
        "jira_key": hint.key if hint else None,
        "jira_avatar_id": hint.avatar_id if hint else None,
        "jira_avatar_custom": hint.avatar_is_custom if hint else None,
    }
