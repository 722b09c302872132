"""jira_budget: the cluster-wide pace of Jira calls (jira.limits_scope = "cluster").

Revision ID: 0002
Revises: 0001

Additive (expand): replicas of 0001 run on beside it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jira_budget",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("next_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("jira_budget")
