"""Each user's stored state: the ``user_state`` table, its row as ``UserState``, and the
statements that read and write it. ``update()`` and ``update_many()`` change rows inside the
caller's transaction; app/store.py's Store opens the connections and holds the one-call
helpers (get, remember_created, set_excluded...)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import BindParameter, TextClause

from .tables import aware, metadata, user_key, utcnow

user_state = Table(
    "user_state",
    metadata,
    Column("username", String(255), primary_key=True),
    Column("photo_sha256", String(64)),  # of the raw directory bytes, set after Jira confirmed
    Column("avatar_id", String(32)),  # the avatar this service selected
    Column("created_avatar_ids", Text, nullable=False, default="[]"),  # ours, not yet deleted
    # Uploaded for this photo but not yet confirmed selected: a re-run after a crash finishes
    # the job with it instead of uploading the same photo twice.
    Column("pending_avatar_id", String(32)),
    Column("pending_sha256", String(64)),
    Column("directory", String(255)),
    Column("marker", String(255)),  # the entry's change marker when last settled
    Column("last_outcome", String(32)),
    Column("last_error", Text),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_success_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_source", String(16)),  # login, created, updated, sweep, admin
    Column("last_duration_ms", Integer),
    Column("excluded", Boolean),  # an admin's opt-out: the user keeps their own picture (null: no)
    Index("user_state_last_attempt", "last_attempt_at"),  # the dashboard's recent syncs
)


@dataclass
class UserState:
    username: str
    photo_sha256: str | None = None
    avatar_id: str | None = None
    created_avatar_ids: list[str] = field(default_factory=list)
    pending_avatar_id: str | None = None
    pending_sha256: str | None = None
    directory: str | None = None
    marker: str | None = None
    last_outcome: str | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None  # last sync that ended in a settled outcome (not failed)
    last_source: str | None = None
    last_duration_ms: int | None = None
    excluded: bool = False  # an admin's opt-out (PUT /admin/users/<u>/exclusion)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("last_attempt_at", "last_success_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


Change = Callable[[UserState], None]


def update(tx: Connection, username: str, change: Change) -> None:
    """Read-modify-write one user's row in the caller's transaction (update_many for one)."""
    update_many(tx, [(username, change)])


def update_many(tx: Connection, changes: list[tuple[str, Change]]) -> None:
    """Read-modify-write users' rows in the caller's transaction, each row locked against
    others (FOR UPDATE on PostgreSQL, in one order so that two batches cannot deadlock;
    SQLite's writer holds the whole database). The rows are read in one statement and written
    in one (a worker records a sweep batch's outcomes together); a user without a row is
    inserted. Two statements for one user, whether its row is new or not. Each change counts
    an attempt and stamps ``last_attempt_at``."""
    keys = [user_key(username) for username, _ in changes]
    query = select(user_state).where(user_state.c.username.in_(sorted(set(keys)))).order_by(user_state.c.username)
    if tx.dialect.name == "postgresql":
        query = query.with_for_update()
    stored = {row["username"]: from_row(row) for row in tx.execute(query).mappings()}
    now, saves, later = utcnow(), [], []
    for key, (_, change) in zip(keys, changes, strict=True):
        state = stored.pop(key, None)
        if state is None:  # new, or named again after its first change
            later.append((key, change))
            continue
        state.last_attempt_at = now
        change(state)
        saves.append(_values(state))
    if saves:
        tx.execute(_SAVE, saves)
    for key, change in later:
        _insert_or_update(tx, key, change, now)


def _insert_or_update(tx: Connection, key: str, change: Change, now: datetime) -> None:
    state = UserState(key, last_attempt_at=now)
    change(state)
    # RETURNING, not rowcount: psycopg 3 gives -1 for this statement
    if tx.execute(_INSERT[tx.dialect.name], _values(state) | {"p_attempts": 1}).first():
        return
    # the row exists: another transaction created it meanwhile (PostgreSQL), or this one did
    locked = GET.with_for_update() if tx.dialect.name == "postgresql" else GET
    state = from_row(tx.execute(locked, {"p_username": key}).mappings().one())
    state.last_attempt_at = now
    change(state)
    tx.execute(_SAVE, _values(state))


def remember_created(conn: Connection, username: str, avatar_id: str, photo_sha256: str | None) -> None:
    """Note an avatar this service created in one statement that appends the id to the row's
    list in SQL."""
    values = {"key": user_key(username), "id": avatar_id, "sha": photo_sha256, "now": utcnow()}
    values["ids"] = json.dumps([avatar_id])
    conn.execute(_REMEMBER[conn.dialect.name], values)


def ensure(tx: Connection, key: str) -> None:
    """The user's row exists (an empty one if it did not)."""
    tx.execute(_ENSURE[tx.dialect.name], {"p_username": key})


def _values(state: UserState) -> dict:
    values = {f"p_{k}": v for k, v in state.__dict__.items()}
    values["p_created_avatar_ids"] = json.dumps(state.created_avatar_ids)
    return values


def from_row(row) -> UserState:
    """A row of user_state (as mappings) as the UserState it holds."""
    data = dict(row)
    data.pop("attempts", None)
    data["created_avatar_ids"] = json.loads(data["created_avatar_ids"] or "[]")
    data["excluded"] = bool(data["excluded"])
    for k in ("last_attempt_at", "last_success_at"):
        data[k] = aware(data[k])
    return UserState(**data)


_NAME: BindParameter[str] = bindparam("p_username")
GET = select(user_state).where(user_state.c.username == _NAME)
LAST_SUCCESS = select(user_state.c.last_success_at).where(user_state.c.username == _NAME)
_SAVE = (
    user_state.update()
    .where(user_state.c.username == _NAME)
    .values(
        {
            **{c.name: bindparam(f"p_{c.name}") for c in user_state.columns if c.name not in ("username", "attempts")},
            "attempts": user_state.c.attempts + 1,
        }
    )
)
_ENSURE = {
    dialect: insert(user_state)
    .values(username=_NAME, created_avatar_ids="[]", attempts=0)
    .on_conflict_do_nothing(index_elements=["username"])
    for dialect, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_INSERT = {  # a whole new row; nothing when it exists
    dialect: insert(user_state)
    .values({c.name: bindparam(f"p_{c.name}") for c in user_state.columns})
    .on_conflict_do_nothing(index_elements=["username"])
    .returning(user_state.c.username)
    for dialect, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}

# remember_created(): a new row as update() would insert it, or the row's id list with the id
# appended once (a JSON array in a text column: SQLite's json1, PostgreSQL's jsonb)
_REMEMBER_SQL = (
    "INSERT INTO user_state (username, created_avatar_ids, pending_avatar_id, pending_sha256, "
    "last_attempt_at, attempts, excluded) VALUES (:key, :ids, :id, :sha, :now, 1, false) "
    "ON CONFLICT (username) DO UPDATE SET pending_avatar_id = :id, pending_sha256 = :sha, "
    "last_attempt_at = :now, attempts = user_state.attempts + 1, created_avatar_ids = CASE "
    "WHEN {holds} THEN user_state.created_avatar_ids ELSE {appended} END"
)
_IDS = "coalesce(nullif(user_state.created_avatar_ids, ''), '[]')"


def _remember(holds: str, appended: str) -> TextClause:
    sql = _REMEMBER_SQL.format(holds=holds, appended=appended)
    return text(sql).bindparams(bindparam("now", type_=DateTime(timezone=True)))


_REMEMBER = {
    "sqlite": _remember(
        holds=f"EXISTS (SELECT 1 FROM json_each({_IDS}) WHERE value = :id)",
        appended=f"json_insert({_IDS}, '$[#]', :id)",
    ),
    "postgresql": _remember(
        holds=f"CAST({_IDS} AS jsonb) @> jsonb_build_array(CAST(:id AS text))",
        appended=f"CAST(CAST({_IDS} AS jsonb) || jsonb_build_array(CAST(:id AS text)) AS text)",
    ),
}
