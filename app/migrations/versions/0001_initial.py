"""The schema of release 0.2.0, the last one before Alembic: adopted as it is.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def tables() -> sa.MetaData:
    """0.2.0's tables, frozen here: app/schema.py also completes older databases from them."""
    metadata = sa.MetaData()
    sa.Table(
        "jobs",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(255), nullable=False, unique=True),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("force", sa.Boolean, nullable=False),
        sa.Column("again", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("sweep_id", sa.Integer),
        sa.Column("jira_key", sa.String(255)),
        sa.Column("jira_avatar_id", sa.String(32)),
        sa.Column("jira_avatar_custom", sa.Boolean),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_try_at", TZ, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_until", TZ),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Index("jobs_due", "state", "priority", "next_try_at"),
        sa.Index("jobs_lease", "state", "lease_until"),
        sa.Index("jobs_sweep", "sweep_id"),
    )
    sa.Table(
        "schedules",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("next_run_at", TZ, nullable=False),
    )
    sa.Table(
        "sweep_items",
        metadata,
        sa.Column("sweep_id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(255), primary_key=True),
        sa.Column("display_name", sa.String(255)),
        sa.Column("directory", sa.String(255)),
        sa.Column("outcome", sa.String(32)),
        sa.Column("reason", sa.Text),
        sa.Column("skipped", sa.Boolean, nullable=False),
    )
    sa.Table(
        "sweeps",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("full", sa.Boolean, nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("finished_at", TZ),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_until", TZ),
        sa.Column("error", sa.Text),
        sa.Index("ix_sweeps_status", "status"),
    )
    sa.Table(
        "user_state",
        metadata,
        sa.Column("username", sa.String(255), primary_key=True),
        sa.Column("photo_sha256", sa.String(64)),
        sa.Column("avatar_id", sa.String(32)),
        sa.Column("created_avatar_ids", sa.Text, nullable=False),
        sa.Column("pending_avatar_id", sa.String(32)),
        sa.Column("pending_sha256", sa.String(64)),
        sa.Column("directory", sa.String(255)),
        sa.Column("marker", sa.String(255)),
        sa.Column("last_outcome", sa.String(32)),
        sa.Column("last_error", sa.Text),
        sa.Column("last_attempt_at", TZ),
        sa.Column("last_success_at", TZ),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_source", sa.String(16)),
        sa.Column("last_duration_ms", sa.Integer),
        sa.Index("user_state_last_attempt", "last_attempt_at"),
    )
    sa.Table(
        "webhook_deliveries",
        metadata,
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("received_at", TZ, nullable=False),
        sa.Index("ix_webhook_deliveries_received_at", "received_at"),
    )
    return metadata


def upgrade() -> None:
    tables().create_all(op.get_bind())


def downgrade() -> None:
    for table in ("webhook_deliveries", "user_state", "sweeps", "sweep_items", "schedules", "jobs"):
        op.drop_table(table)
