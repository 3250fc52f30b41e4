"""Leases for running generations: the process that runs one, and until when it answers for it.

Replaces the heartbeat. Generations running when this is applied keep a lease
of ten minutes from then, so a process of the old version still finishing
them is not swept from under it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

from ledger.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_RUNNING_AT_UPGRADE_LEASE = timedelta(minutes=10)


def upgrade() -> None:
    with op.batch_alter_table("generations") as table:
        table.add_column(sa.Column("owner", sa.String(120), nullable=True))
        table.add_column(sa.Column("lease_until", UTCDateTime, nullable=True))
        table.drop_column("heartbeat_at")
    generations = sa.table(
        "generations",
        sa.column("status", sa.String),
        sa.column("lease_until", UTCDateTime),
    )
    op.execute(
        generations.update()
        .where(generations.c.status == "running")
        .values(lease_until=datetime.now(UTC) + _RUNNING_AT_UPGRADE_LEASE)
    )


def downgrade() -> None:
    with op.batch_alter_table("generations") as table:
        table.add_column(sa.Column("heartbeat_at", UTCDateTime, nullable=True))
        table.drop_column("lease_until")
        table.drop_column("owner")
