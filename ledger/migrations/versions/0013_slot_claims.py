"""Slot claims: concurrency limits (per user, per provider) that every process sharing
PostgreSQL counts alike.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from ledger.schema import EntryId, UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slot_claims",
        sa.Column("id", EntryId, autoincrement=True, nullable=False),
        sa.Column("generation_id", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(120), nullable=False),
        sa.Column("running", sa.Boolean, nullable=False),
        sa.Column("lease_until", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name="fk_slot_claims_generation_id_generations",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_slot_claims"),
        sa.UniqueConstraint("generation_id", "scope", name="uq_slot_claims_generation_id"),
    )
    op.create_index("ix_slot_claims_scope", "slot_claims", ["scope", "id"])


def downgrade() -> None:
    op.drop_index("ix_slot_claims_scope", table_name="slot_claims")
    op.drop_table("slot_claims")
