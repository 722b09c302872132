"""What every table shares: the one MetaData the tables join (their modules define them beside
the code that uses them; app/schema.py hands the lot to Alembic), times in UTC, and the key a
user is stored under."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

from sqlalchemy import MetaData

metadata = MetaData()


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def aware(value: datetime) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; they were stored in UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def user_key(username: str) -> str:
    """How a user is keyed in every table. LDAP matches names case-insensitively and Jira
    looks usernames up the same way, so 'JDoe' in AD and 'jdoe' in Jira are one user."""
    return username.lower()
