"""Credit lots: an account's credits in lots with a kind and an optional expiry, and `expire` entries.

Every account that was ever granted credits gets one never-expiring `promo` lot
holding its whole balance, available and held; every entry it has becomes one
part on that lot, so running generations' holds point at it and each lot adds
up from its parts as `verify` checks.

The downgrade keeps each account's available and held credits as the ledger
counts them: a lot past its expiry whose `expire` entry is not written yet gets
it first, then `expire` entries become `adjustment`s. Held credits stay held,
whichever lot they came from; before lots, what a generation does not charge
goes back to available, even what came from a lot that has expired since.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from ledger.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_KINDS_BEFORE = "kind IN ('grant', 'adjustment', 'hold', 'capture', 'release')"
_KINDS_AFTER = "kind IN ('grant', 'adjustment', 'hold', 'capture', 'release', 'expire')"

_LOT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_accounts = sa.table(
    "accounts",
    sa.column("id"),
    sa.column("available"),
    sa.column("held"),
    sa.column("created_at"),
    sa.column("updated_at", UTCDateTime),
)
_entries = sa.table(
    "ledger_entries",
    sa.column("id"),
    sa.column("account_id"),
    sa.column("kind"),
    sa.column("amount"),
    sa.column("available_delta"),
    sa.column("held_delta"),
    sa.column("actor"),
    sa.column("reason"),
    sa.column("idempotency_key"),
    sa.column("generation_id"),
    sa.column("created_at", UTCDateTime),
)
_lots = sa.table(
    "credit_lots",
    sa.column("id"),
    sa.column("account_id"),
    sa.column("kind", sa.String),
    sa.column("granted"),
    sa.column("available"),
    sa.column("held"),
    sa.column("expires_at", UTCDateTime),
    sa.column("created_at"),
)
_parts = sa.table(
    "entry_parts",
    sa.column("entry_id"),
    sa.column("lot_id"),
    sa.column("available_delta"),
    sa.column("held_delta"),
)


def upgrade() -> None:
    # First, while no table refers to ledger_entries but the ones that did before: on SQLite
    # the batch copies the table, drops it and renames the copy.
    with op.batch_alter_table("ledger_entries") as table:
        table.drop_constraint(op.f("ck_ledger_entries_known_kind"), type_="check")
        table.create_check_constraint(op.f("ck_ledger_entries_known_kind"), sa.text(_KINDS_AFTER))
    op.create_table(
        "credit_lots",
        sa.Column("id", _LOT_ID, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(120), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("granted", sa.BigInteger, nullable=False),
        sa.Column("available", sa.BigInteger, nullable=False),
        sa.Column("held", sa.BigInteger, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("granted > 0", name="ck_credit_lots_granted_positive"),
        sa.CheckConstraint("available >= 0", name="ck_credit_lots_available_not_negative"),
        sa.CheckConstraint("held >= 0", name="ck_credit_lots_held_not_negative"),
        sa.CheckConstraint(
            "kind IN ('allowance', 'promo', 'paid')", name="ck_credit_lots_known_kind"
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_credit_lots_account_id_accounts"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_credit_lots"),
    )
    op.create_index("ix_credit_lots_account_id", "credit_lots", ["account_id", "expires_at"])
    op.create_table(
        "entry_parts",
        sa.Column("entry_id", _LOT_ID, nullable=False, autoincrement=False),
        sa.Column("lot_id", _LOT_ID, nullable=False),
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

    granted = (
        sa.select(sa.func.sum(_entries.c.amount))
        .where(_entries.c.account_id == _accounts.c.id, _entries.c.kind == "grant")
        .scalar_subquery()
    )
    op.execute(
        _lots.insert().from_select(
            ["account_id", "kind", "granted", "available", "held", "expires_at", "created_at"],
            sa.select(
                _accounts.c.id,
                sa.literal("promo"),
                granted,
                _accounts.c.available,
                _accounts.c.held,
                sa.null(),
                _accounts.c.created_at,
            ).where(granted.is_not(None)),
        )
    )
    op.execute(
        _parts.insert().from_select(
            ["entry_id", "lot_id", "available_delta", "held_delta"],
            sa.select(
                _entries.c.id, _lots.c.id, _entries.c.available_delta, _entries.c.held_delta
            ).where(_lots.c.account_id == _entries.c.account_id),
        )
    )


def downgrade() -> None:
    now = datetime.now(UTC)
    due = sa.and_(_lots.c.expires_at <= now, _lots.c.available > 0)
    # An expired lot's credits count for nothing even before its `expire` entry is written;
    # once the lots are gone nothing would tell them apart, so they expire now, as the
    # ledger's sweep would (rules.expiry: one entry per lot, its key and reason).
    op.execute(
        _entries.insert().from_select(
            [
                "account_id",
                "kind",
                "amount",
                "available_delta",
                "held_delta",
                "actor",
                "reason",
                "idempotency_key",
                "generation_id",
                "created_at",
            ],
            sa.select(
                _lots.c.account_id,
                sa.literal("expire"),
                _lots.c.available,
                -_lots.c.available,
                sa.literal(0),
                sa.literal("system"),
                _lots.c.kind + sa.literal(" credits expired"),
                sa.literal("expire:lot:")
                + sa.cast(_lots.c.id, sa.String)
                + sa.literal(f":{now.isoformat()}"),
                sa.null(),
                sa.literal(now, UTCDateTime),
            ).where(due),
        )
    )
    expiring = (
        sa.select(sa.func.sum(_lots.c.available))
        .where(_lots.c.account_id == _accounts.c.id, due)
        .scalar_subquery()
    )
    op.execute(
        _accounts.update()
        .where(expiring.is_not(None))
        .values(available=_accounts.c.available - expiring, updated_at=now)
    )
    # Before the batch below: on SQLite it drops ledger_entries, which entry_parts refers to.
    op.drop_table("entry_parts")
    op.drop_table("credit_lots")
    # Before lots there was no expiry: what expired was taken back, as an adjustment is.
    op.execute(_entries.update().where(_entries.c.kind == "expire").values(kind="adjustment"))
    with op.batch_alter_table("ledger_entries") as table:
        table.drop_constraint(op.f("ck_ledger_entries_known_kind"), type_="check")
        table.create_check_constraint(op.f("ck_ledger_entries_known_kind"), sa.text(_KINDS_BEFORE))
