"""Where each generation's images were posted, for /history; and each account's own settings
(auto-confirm under a price).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from ledger.schema import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on every database: a batch would rebuild a table others refer to.
    op.add_column("generations", sa.Column("posted_link", sa.String(500), nullable=True))
    op.create_table(
        "account_settings",
        sa.Column("account_id", sa.String(120), nullable=False),
        sa.Column("auto_confirm_under", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(
            "auto_confirm_under >= 0", name="ck_account_settings_auto_confirm_not_negative"
        ),
        sa.PrimaryKeyConstraint("account_id", name="pk_account_settings"),
    )


def downgrade() -> None:
    op.drop_table("account_settings")
    if op.get_context().dialect.name == "sqlite":
        op.execute("ALTER TABLE generations DROP COLUMN posted_link")
    else:
        op.drop_column("generations", "posted_link")
