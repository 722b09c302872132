"""user_state.excluded: an admin's per-user opt-out (PUT /admin/users/<u>/exclusion).

Revision ID: 0003
Revises: 0002

Additive (expand): a nullable column, null meaning "not excluded"; replicas of 0002 run on
beside it (they neither read nor write it).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("user_state", sa.Column("excluded", sa.Boolean, nullable=True))


def downgrade() -> None:
    op.drop_column("user_state", "excluded")
