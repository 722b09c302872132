"""http_photos: the ETag of each user's photo on the HTTP photo server ([http_photos]), with the
hash and size of the bytes it named, so that an unchanged photo costs one 304 after a restart.

Revision ID: 0004
Revises: 0003

Additive (expand): a new table; replicas of 0003 run on beside it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "http_photos",
        sa.Column("username", sa.String(255), primary_key=True),
        sa.Column("etag", sa.String(255), nullable=False),
        sa.Column("photo_sha256", sa.String(64), nullable=False),
        sa.Column("pixels", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("http_photos")
