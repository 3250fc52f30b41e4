"""What each generation cost at the provider: the price per image when quoted, and the charge
for every image the provider made, in millionths of a US dollar.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on every database: a batch would rebuild a table others refer to.
    op.add_column("generations", sa.Column("cost_per_image_microusd", sa.BigInteger, nullable=True))
    op.add_column("generations", sa.Column("provider_cost_microusd", sa.BigInteger, nullable=True))
    op.create_index(
        "ix_generations_provider_finished_at", "generations", ["provider", "finished_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_generations_provider_finished_at", table_name="generations")
    if op.get_context().dialect.name == "sqlite":
        op.execute("ALTER TABLE generations DROP COLUMN provider_cost_microusd")
        op.execute("ALTER TABLE generations DROP COLUMN cost_per_image_microusd")
    else:
        op.drop_column("generations", "provider_cost_microusd")
        op.drop_column("generations", "cost_per_image_microusd")
