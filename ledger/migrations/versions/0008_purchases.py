"""Purchases and amounts owed: credit packs bought through Stripe or Discord, and credits taken
back after they were spent (a refund, a dispute), owed until the next grant pays them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from ledger.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_KINDS_BEFORE = "kind IN ('grant', 'adjustment', 'hold', 'capture', 'release', 'expire')"
_ENTRY_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_KINDS_AFTER = (
    "kind IN ('grant', 'adjustment', 'hold', 'capture', 'release', 'expire', 'take_back', 'repay')"
)


def _sqlite() -> bool:
    return op.get_context().dialect.name == "sqlite"


def _add_owed_to_accounts() -> None:
    # Other tables refer to accounts: on SQLite, with foreign keys on, it cannot be rebuilt
    # the way a batch does, but a column (with its check) can be added in place.
    if _sqlite():
        op.execute(
            "ALTER TABLE accounts ADD COLUMN owed BIGINT NOT NULL DEFAULT 0 "
            "CONSTRAINT ck_accounts_owed_not_negative CHECK (owed >= 0)"
        )
    else:
        op.add_column(
            "accounts", sa.Column("owed", sa.BigInteger, nullable=False, server_default="0")
        )
        op.create_check_constraint("ck_accounts_owed_not_negative", "accounts", "owed >= 0")


def _change_entries(kinds: str, *, owed_delta: bool) -> None:
    """Give ledger_entries its kinds check (and its owed_delta column, or drop it).

    On SQLite the batch rebuilds the table; entry_parts refers to it, so the parts are
    set aside and the table that holds them made again around the rebuild.
    """
    if _sqlite():
        op.execute("CREATE TEMPORARY TABLE parts_aside AS SELECT * FROM entry_parts")
        op.drop_table("entry_parts")
    with op.batch_alter_table("ledger_entries") as table:
        if owed_delta:
            table.add_column(
                sa.Column("owed_delta", sa.BigInteger, nullable=False, server_default="0")
            )
        else:
            table.drop_column("owed_delta")
        table.drop_constraint(op.f("ck_ledger_entries_known_kind"), type_="check")
        table.create_check_constraint(op.f("ck_ledger_entries_known_kind"), sa.text(kinds))
    if _sqlite():
        op.create_table(
            "entry_parts",
            sa.Column("entry_id", _ENTRY_ID, nullable=False, autoincrement=False),
            sa.Column("lot_id", _ENTRY_ID, nullable=False),
            sa.Column("available_delta", sa.BigInteger, nullable=False),
            sa.Column("held_delta", sa.BigInteger, nullable=False),
            sa.ForeignKeyConstraint(
                ["entry_id"], ["ledger_entries.id"], name="fk_entry_parts_entry_id_ledger_entries"
            ),
            sa.ForeignKeyConstraint(
                ["lot_id"], ["credit_lots.id"], name="fk_entry_parts_lot_id_credit_lots"
            ),
            sa.PrimaryKeyConstraint("entry_id", "lot_id", name="pk_entry_parts"),
        )
        op.create_index("ix_entry_parts_lot_id", "entry_parts", ["lot_id"])
        op.execute("INSERT INTO entry_parts SELECT * FROM parts_aside")
        op.execute("DROP TABLE parts_aside")


def upgrade() -> None:
    _add_owed_to_accounts()
    _change_entries(_KINDS_AFTER, owed_delta=True)
    op.create_table(
        "purchases",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=True),
        sa.Column("account_id", sa.String(120), nullable=False),
        sa.Column("pack", sa.String(64), nullable=False),
        sa.Column("credits", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("payment_reference", sa.String(200), nullable=True),
        sa.Column("amount_refunded", sa.BigInteger, nullable=False),
        sa.Column("disputed", sa.BigInteger, nullable=False),
        sa.Column("credits_taken_back", sa.BigInteger, nullable=False),
        sa.Column("channel", sa.String(200), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("paid_at", UTCDateTime, nullable=True),
        sa.CheckConstraint("credits > 0", name="ck_purchases_credits_positive"),
        sa.CheckConstraint(
            "amount >= 0 AND amount_refunded >= 0", name="ck_purchases_amounts_not_negative"
        ),
        sa.CheckConstraint(
            "credits_taken_back >= 0 AND credits_taken_back <= credits",
            name="ck_purchases_taken_back_in_range",
        ),
        sa.CheckConstraint(
            "status IN ('open', 'paid', 'failed', 'expired', 'refunded')",
            name="ck_purchases_known_status",
        ),
        sa.CheckConstraint("source IN ('stripe', 'discord')", name="ck_purchases_known_source"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_purchases_account_id_accounts"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_purchases"),
    )
    op.create_index(
        "ix_purchases_source_external_id", "purchases", ["source", "external_id"], unique=True
    )
    op.create_index("ix_purchases_payment_reference", "purchases", ["payment_reference"])
    op.create_index("ix_purchases_account_id", "purchases", ["account_id", "created_at"])
    op.create_index("ix_purchases_paid_at", "purchases", ["paid_at"])
    op.create_table(
        "purchase_events",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("purchase_id", sa.String(64), nullable=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["purchase_id"], ["purchases.id"], name="fk_purchase_events_purchase_id_purchases"
        ),
        sa.PrimaryKeyConstraint("event_id", name="pk_purchase_events"),
    )


def downgrade() -> None:
    """Refused while anything is owed or was taken back: the older schema cannot say it."""
    connection = op.get_bind()
    owing = connection.scalar(sa.text("SELECT count(*) FROM accounts WHERE owed > 0"))
    moved = connection.scalar(
        sa.text("SELECT count(*) FROM ledger_entries WHERE kind IN ('take_back', 'repay')")
    )
    if owing or moved:
        raise RuntimeError(
            "cannot downgrade below 0008: some accounts owe credits or had credits taken back"
        )
    op.drop_table("purchase_events")
    op.drop_table("purchases")
    _change_entries(_KINDS_BEFORE, owed_delta=False)
    if _sqlite():
        # A column's own check goes with it; a batch would rebuild a table others refer to.
        op.execute("ALTER TABLE accounts DROP COLUMN owed")
    else:
        op.drop_constraint("ck_accounts_owed_not_negative", "accounts", type_="check")
        op.drop_column("accounts", "owed")
