"""The admin dashboard's login links and sessions, each stored as its token's SHA-256.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from ledger.schema import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_tokens",
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("account_id", sa.String(120), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("used_at", UTCDateTime, nullable=True),
        sa.CheckConstraint("kind IN ('link', 'session')", name="ck_dashboard_tokens_known_kind"),
        sa.PrimaryKeyConstraint("token_sha256", name="pk_dashboard_tokens"),
    )
    op.create_index("ix_dashboard_tokens_expires_at", "dashboard_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_table("dashboard_tokens")
