"""Accounts, generations and the append-only ledger entries.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from ledger.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(120), primary_key=True),
        sa.Column("available", sa.BigInteger, nullable=False),
        sa.Column("held", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("available >= 0", name="available_not_negative"),
        sa.CheckConstraint("held >= 0", name="held_not_negative"),
    )
    op.create_table(
        "generations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(120), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("model_id", sa.String(100), nullable=False),
        sa.Column("provider", sa.String(50), nullable=False),
        sa.Column("provider_model", sa.String(200), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("channel", sa.String(200), nullable=True),
        sa.Column("images_requested", sa.Integer, nullable=False),
        sa.Column("images_delivered", sa.Integer, nullable=False),
        sa.Column("credits_per_image", sa.BigInteger, nullable=False),
        sa.Column("credits_held", sa.BigInteger, nullable=False),
        sa.Column("credits_charged", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error_code", sa.String(40), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("confirmed_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.CheckConstraint("images_requested > 0", name="images_requested_positive"),
        sa.CheckConstraint(
            "images_delivered >= 0 AND images_delivered <= images_requested",
            name="images_delivered_in_range",
        ),
        sa.CheckConstraint(
            "credits_charged >= 0 AND credits_held >= 0", name="credits_not_negative"
        ),
    )
    op.create_index("ix_generations_account_created", "generations", ["account_id", "created_at"])
    op.create_index("ix_generations_status", "generations", ["status"])
    op.create_table(
        "ledger_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("account_id", sa.String(120), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("available_delta", sa.BigInteger, nullable=False),
        sa.Column("held_delta", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(120), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
        sa.Column("generation_id", sa.String(64), sa.ForeignKey("generations.id"), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint(
            "kind IN ('grant', 'adjustment', 'hold', 'capture', 'release')", name="known_kind"
        ),
    )
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account_id", "id"])


def downgrade() -> None:
    op.drop_table("ledger_entries")
    op.drop_table("generations")
    op.drop_table("accounts")
