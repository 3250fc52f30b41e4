"""Heartbeats and the posted-images mark, so a crashed process's holds are settled soon and right.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from ledger.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as table:
        table.add_column(sa.Column("heartbeat_at", UTCDateTime, nullable=True))
        table.add_column(sa.Column("images_posted", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generations") as table:
        table.drop_column("images_posted")
        table.drop_column("heartbeat_at")
