"""The database schema's version, kept by Alembic (the revisions are in app/migrations/versions).

- An empty database is created at the newest revision on first use: a fresh install and the
  demo need no step of their own.
- A database at another revision is refused with one line saying what to run: `db upgrade`
  when it is older, a newer jira-avatar-sync when it is newer.
- A database from 0.2.0 or before (our tables, no version) is adopted by `db upgrade`: the
  columns those releases added one by one are filled in, then it is stamped at 0001.

Everything runs inside the caller's write transaction, so it is serialised across processes
and replicas (BEGIN IMMEDIATE on SQLite; an advisory lock on PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

MIGRATIONS = Path(__file__).with_name("migrations")
FIRST = "0001"  # the schema of 0.2.0, the last release before Alembic
UPGRADE_HINT = "run `jira-avatar-sync db upgrade`"


class SchemaMismatch(RuntimeError):
    """The database's schema is not the one this version of the service works with."""


def target_metadata():
    """Every table the service uses (their modules add them to one MetaData)."""
    from . import http_photos, jira_budget, queue, schedule, states, sweep, tables  # noqa: F401 - each defines its tables

    return tables.metadata


def _config(conn: Connection | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def head() -> str:
    newest = ScriptDirectory.from_config(_config(None)).get_current_head()
    assert newest is not None, "app/migrations/versions has no revision"
    return newest


def current(conn: Connection) -> str | None:
    """The database's revision; None when it has none (empty, or made before Alembic)."""
    return MigrationContext.configure(conn).get_current_revision()


def describe(conn: Connection) -> str:
    rev = current(conn)
    if rev is None:
        return "unversioned (made by 0.2.0 or before)" if _has_our_tables(conn) else "empty"
    return rev + (" (current)" if rev == head() else f" (this version needs {head()})")


def ensure(conn: Connection) -> None:
    """Create an empty database at the newest revision; refuse any other revision."""
    rev, newest = current(conn), head()
    if rev == newest:
        return
    if rev is None and not _has_our_tables(conn):
        command.upgrade(_config(conn), "head")
        return
    if rev is None:
        raise SchemaMismatch(f"the database was made by jira-avatar-sync 0.2.0 or before: {UPGRADE_HINT}")
    if not _known(conn, rev):
        raise SchemaMismatch(
            f"the database's schema ({rev}) is newer than this jira-avatar-sync knows "
            f"({newest}): run the newer version, or restore the database"
        )
    raise SchemaMismatch(f"the database's schema is at revision {rev}, this version needs {newest}: {UPGRADE_HINT}")


def _known(conn: Connection, rev: str) -> bool:
    try:
        return ScriptDirectory.from_config(_config(conn)).get_revision(rev) is not None
    except CommandError:  # "Can't locate revision": a newer release wrote it
        return False


def upgrade(conn: Connection) -> tuple[str | None, str]:
    """Bring the database to the newest revision (adopting a 0.2.0 one); (before, after)."""
    before = current(conn)
    if before is not None and not _known(conn, before):
        raise SchemaMismatch(
            f"the database's schema ({before}) is newer than this jira-avatar-sync knows ({head()}): nothing to upgrade"
        )
    if before is None and _has_our_tables(conn):
        _complete_0_2_0(conn)
        command.stamp(_config(conn), FIRST)
    command.upgrade(_config(conn), "head")
    return before, current(conn) or head()


def _has_our_tables(conn: Connection) -> bool:
    return inspect(conn).has_table("user_state")


def _complete_0_2_0(conn: Connection) -> None:
    """Releases before Alembic added tables, columns and indexes as they went (each column
    nullable): a database made by an older one gets what 0.2.0 had before it is stamped."""
    metadata = ScriptDirectory.from_config(_config(conn)).get_revision(FIRST).module.tables()
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            table.create(conn)
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            conn.exec_driver_sql(
                f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(conn.dialect)}"
            )
        for index in table.indexes:
            index.create(conn, checkfirst=True)
