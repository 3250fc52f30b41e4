"""Per-account price overrides: a fixed price for one model, or a percent off every model.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from ledger.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "price_overrides",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("account_id", sa.String(120), nullable=False),
        sa.Column("model_id", sa.String(100), nullable=True),
        sa.Column("credits_per_image", sa.BigInteger, nullable=True),
        sa.Column("percent_off", sa.Integer, nullable=True),
        sa.Column("until", UTCDateTime, nullable=True),
        sa.Column("actor", sa.String(120), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(
            "(credits_per_image IS NULL) <> (percent_off IS NULL)",
            name="ck_price_overrides_one_rule",
        ),
        sa.CheckConstraint(
            "credits_per_image IS NULL OR credits_per_image >= 0",
            name="ck_price_overrides_price_not_negative",
        ),
        sa.CheckConstraint(
            "percent_off IS NULL OR (percent_off >= 1 AND percent_off <= 100)",
            name="ck_price_overrides_percent_in_range",
        ),
        sa.CheckConstraint(
            "percent_off IS NULL OR model_id IS NULL",
            name="ck_price_overrides_percent_for_every_model",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_price_overrides"),
    )
    op.create_index("ix_price_overrides_account_id", "price_overrides", ["account_id"])


def downgrade() -> None:
    op.drop_table("price_overrides")
