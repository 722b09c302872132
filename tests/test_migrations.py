"""The schema's history (Alembic): a fresh database is created at the current revision, a
database made by 0.2.0 (before Alembic) is adopted by `db upgrade` with every row kept, and
a schema of another version is refused with one line saying what to run. SQLite and the
local PostgreSQL alike."""
from __future__ import annotations

import shutil
from pathlib import Path

import alembic.command
import pytest
import sqlalchemy
from click.testing import CliRunner

from app import schema
from app.cli import main
from app.queue import LoginQueue
from app.schema import SchemaMismatch
from app.store import Store
from app.sweep import sweep_items

DATA = Path(__file__).parent / "data"
TABLES = ["jobs", "schedules", "sweep_items", "sweeps", "user_state", "webhook_deliveries"]  # 0.2.0's


def raw_engine(url: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


def load_released(url: str) -> None:
    """A database as release 0.2.0 left it: its schema and rows, from tests/data."""
    engine = raw_engine(url)
    sql = (DATA / f"released-0.2.0.{engine.dialect.name}.sql").read_text()
    with engine.begin() as conn:
        for statement in sql.split(";\n"):
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if "".join(lines).strip():
                conn.exec_driver_sql("\n".join(lines))
    engine.dispose()


def everything(url: str) -> dict[str, list[tuple]]:
    engine = raw_engine(url)
    with engine.connect() as conn:
        rows = {t: sorted(map(tuple, conn.exec_driver_sql(f"SELECT * FROM {t}").all()), key=repr) for t in TABLES}
    engine.dispose()
    return rows


def cli(url: str, *args: str):
    return CliRunner().invoke(main, list(args), env={"AVATAR_SYNC_DATABASE_URL": url,
                                                     "AVATAR_SYNC_JIRA_URL": "http://jira.invalid",
                                                     "AVATAR_SYNC_JIRA_TOKEN": "t" * 20,
                                                     "AVATAR_SYNC_LDAP_URL": "ldap://ldap.invalid",
                                                     "AVATAR_SYNC_LDAP_BASE_DN": "dc=example"})


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    """An empty database of the test's own: these tests change the schema itself."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return request.getfixturevalue("fresh_pg_url")


def test_an_empty_database_is_created_at_the_current_revision(url):
    store = Store(url)
    assert store.get("nobody") is None
    assert store.describe_schema() == f"{schema.head()} (current)"
    store.dispose()
    result = cli(url, "db", "current")
    assert result.exit_code == 0 and f"{schema.head()} (current)" in result.output


def test_a_released_0_2_0_database_is_refused_until_upgraded_then_keeps_every_row(url):
    load_released(url)
    before = everything(url)
    with pytest.raises(SchemaMismatch, match=r"0\.2\.0 or before: run `jira-avatar-sync db upgrade`"):
        Store(url).get("jdoe")
    worker = cli(url, "worker", "--once")
    assert worker.exit_code == 2 and worker.output.strip().count("\n") == 0, worker.output
    assert "cannot start" in worker.output and "db upgrade" in worker.output

    upgraded = cli(url, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert f"unversioned -> {schema.head()}" in upgraded.output
    after = everything(url)
    # not a row lost or changed; columns added since 0.2.0 (at the end) are empty
    widths = {t: len(rows[0]) for t, rows in before.items() if rows}
    assert {t: [row[: widths.get(t, len(row))] for row in rows] for t, rows in after.items()} == before
    assert all(v is None for t, rows in after.items() for row in rows for v in row[widths.get(t, len(row)) :])
    assert "already at" in cli(url, "db", "upgrade").output  # safe to run again

    store = Store(url)
    jdoe = store.get("jdoe")
    assert (jdoe.avatar_id, jdoe.created_avatar_ids, jdoe.marker) == ("10401", ["10401"], "uSNChanged=4711")
    assert store.get("émile").last_outcome == "no_photo"
    queue = LoginQueue(store)
    assert queue.job_for("ann")["state"] == "pending" and queue.job_for("bob")["state"] == "running"
    assert queue.enqueue("carol", delivery_id="5f0c-delivery-1") is False  # the delivery is remembered
    assert queue.enqueue("carol")  # and new ids follow on from the old ones
    with store.read() as conn:
        assert conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(sweep_items)).scalar() == 3
    store.dispose()


def test_a_database_older_than_0_2_0_gains_what_0_2_0_had(url):
    engine = raw_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE user_state (username VARCHAR(255) PRIMARY KEY, photo_sha256 VARCHAR(64), "
                             "avatar_id VARCHAR(32), created_avatar_ids TEXT NOT NULL, attempts INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO user_state VALUES ('old', 'ab', '10500', '[\"10500\"]', 1)")
    engine.dispose()
    assert cli(url, "db", "upgrade").exit_code == 0
    store = Store(url)
    assert store.get("old").avatar_id == "10500" and store.get("old").pending_avatar_id is None
    store.remember_created("old", "10600", "cd")
    assert store.get("old").pending_sha256 == "cd"
    assert LoginQueue(store).enqueue("old")  # the tables 0.2.0 added are there too
    store.dispose()


def test_an_older_revision_is_refused_until_db_upgrade(url):
    """A database at 0001 (0.2.0's schema, stamped) and a version that needs 0002."""
    load_released(url)
    assert cli(url, "db", "upgrade").exit_code == 0
    engine = raw_engine(url)
    with engine.begin() as conn:  # back to 0001, as the previous release left it
        alembic.command.downgrade(schema._config(conn), "0001")
    engine.dispose()
    with pytest.raises(SchemaMismatch, match=f"at revision 0001, this version needs {schema.head()}: "
                                             "run `jira-avatar-sync db upgrade`"):
        Store(url).get("jdoe")
    assert "0001 (this version needs" in cli(url, "db", "current").output
    assert f"0001 -> {schema.head()}" in cli(url, "db", "upgrade").output
    assert Store(url).get("jdoe").avatar_id == "10401"


def test_a_newer_schema_is_refused_with_one_line(url):
    Store(url).dispose()
    Store(url).get("x")
    engine = raw_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9001'")
    engine.dispose()
    with pytest.raises(SchemaMismatch, match="newer than this jira-avatar-sync knows"):
        Store(url).get("x")
    assert "9001" in cli(url, "db", "current").output


def test_an_additive_upgrade_under_a_running_replica_of_the_previous_revision(url, tmp_path, monkeypatch):
    """Expand/contract: a replica started at the current revision goes on working while the
    database is upgraded to a next one that only adds (a table, a nullable column)."""
    running = Store(url)
    queue = LoginQueue(running)
    assert queue.enqueue("before")
    # the next release's migrations: today's, plus one additive revision
    nxt = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS, nxt)
    (nxt / "versions" / "9002_additive.py").write_text(f'''
import sqlalchemy as sa
from alembic import op
revision = "9002"
down_revision = "{schema.head()}"
branch_labels = depends_on = None
def upgrade():
    op.add_column("user_state", sa.Column("photo_source", sa.String(64)))
    op.create_table("photo_sources", sa.Column("name", sa.String(32), primary_key=True))
''')
    monkeypatch.setattr(schema, "MIGRATIONS", nxt)
    assert "-> 9002" in cli(url, "db", "upgrade").output
    monkeypatch.setattr(schema, "MIGRATIONS", Path(schema.__file__).with_name("migrations"))
    # the running replica, of the previous revision, works on
    assert queue.enqueue("after")
    job = queue.claim(1)[0]
    running.remember_created(job.username, "1", "ab")
    with running.transaction() as tx:
        queue.complete([job], tx)
    assert running.get(job.username).pending_avatar_id == "1"
    running.dispose()
    # a replica of the previous revision started now refuses, saying why
    with pytest.raises(SchemaMismatch, match="newer"):
        Store(url).get("x")


def test_the_revisions_build_exactly_the_tables_the_code_uses(url):
    """A table or column added to the code without a revision (or the reverse) shows here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    store = Store(url)
    assert store.get("nobody") is None  # an empty database, made by running every revision
    store.dispose()
    engine = raw_engine(url)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), schema.target_metadata())
    engine.dispose()
    assert differences == []
