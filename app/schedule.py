"""The optional nightly sweep (``sweep.schedule = "01:11"``, local time of the service).

Every worker process checks now and then; the one whose conditional UPDATE moves the stored
next-run time forward starts the sweep, so exactly one sweep starts however many processes
and replicas there are.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta

from sqlalchemy import Column, DateTime, String, Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .sweep import SweepConflict
from .tables import aware, metadata, utcnow

log = logging.getLogger(__name__)

schedules = Table(
    "schedules",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("next_run_at", DateTime(timezone=True), nullable=False),
)


def next_run(at: time, after: datetime) -> datetime:
    """The next local ``at`` strictly after ``after`` (aware), as an aware UTC datetime."""
    local = after.astimezone()
    candidate = local.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    if candidate <= local:
        candidate = (candidate + timedelta(days=1)).replace(hour=at.hour, minute=at.minute)
    return candidate.astimezone(after.tzinfo)


def start_if_due(services, now: datetime | None = None) -> int | None:
    at = services.settings.sweep_schedule
    if at is None:
        return None
    now = now or utcnow()
    store = services.store
    with store.transaction() as conn:
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            insert(schedules)
            .values(name="sweep", next_run_at=next_run(at, now))
            .on_conflict_do_nothing(index_elements=["name"])
        )
        stored = conn.execute(select(schedules.c.next_run_at).where(schedules.c.name == "sweep")).scalar_one()
        due = aware(stored)
        if due > now:
            return None
        won = conn.execute(
            update(schedules)
            .where(schedules.c.name == "sweep", schedules.c.next_run_at == stored)
            .values(next_run_at=next_run(at, now))
        ).rowcount
    if not won:
        return None
    try:
        sweep_id = services.sweeps.start(trigger="schedule")
        log.info("scheduled sweep %d started", sweep_id)
        return sweep_id
    except SweepConflict as exc:
        log.warning("scheduled sweep skipped: %s", exc)
        return None


def next_scheduled(services) -> datetime | None:
    """When the nightly sweep runs next (None: no schedule). A plain read."""
    at = services.settings.sweep_schedule
    if at is None:
        return None
    with services.store.read() as conn:
        stored = conn.execute(select(schedules.c.next_run_at).where(schedules.c.name == "sweep")).scalar()
    return aware(stored) if stored is not None else next_run(at, utcnow())
