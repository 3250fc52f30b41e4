"""Reference images stored with their quote, provider attempts per generation, settled-time index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from ledger.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quote_references",
        sa.Column("generation_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("account_id", sa.String(120), nullable=False),
        sa.Column("media_type", sa.String(50), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("byte_size", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name="fk_quote_references_generation_id_generations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("generation_id", "position", name="pk_quote_references"),
    )
    op.create_index("ix_quote_references_account_id", "quote_references", ["account_id"])
    op.create_index("ix_quote_references_expires_at", "quote_references", ["expires_at"])
    with op.batch_alter_table("generations") as table:
        table.add_column(sa.Column("provider_attempts", sa.JSON, nullable=True))
        table.create_index("ix_generations_finished_at", ["finished_at"])


def downgrade() -> None:
    with op.batch_alter_table("generations") as table:
        table.drop_index("ix_generations_finished_at")
        table.drop_column("provider_attempts")
    op.drop_table("quote_references")
