"""The ledger's tables. Changes to them go through an Alembic migration in ``ledger/migrations``."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite has no 64-bit autoincrement other than INTEGER PRIMARY KEY.
EntryId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite would otherwise hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("ledger timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


accounts = Table(
    "accounts",
    metadata,
    Column("id", String(120), primary_key=True),
    Column("available", BigInteger, nullable=False, default=0),
    Column("held", BigInteger, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("owed", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("available >= 0", name="available_not_negative"),
    CheckConstraint("held >= 0", name="held_not_negative"),
    CheckConstraint("owed >= 0", name="owed_not_negative"),
)
"""``owed``: credits taken back (a refund, a dispute) after they were spent; while it is more
than 0 the account cannot hold, and whatever it is granted or given back pays it first."""

generations = Table(
    "generations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(120), ForeignKey("accounts.id"), nullable=False),
    Column("model_id", String(100), nullable=False),
    Column("provider", String(50), nullable=False),
    Column("provider_model", String(200), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("options", JSON, nullable=False),
    Column("channel", String(200), nullable=True),
    Column("images_requested", Integer, nullable=False),
    Column("images_delivered", Integer, nullable=False, default=0),
    Column("credits_per_image", BigInteger, nullable=False),
    Column("credits_held", BigInteger, nullable=False, default=0),
    Column("credits_charged", BigInteger, nullable=False, default=0),
    Column("status", String(20), nullable=False),
    Column("error_code", String(40), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("confirmed_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("images_posted", Integer, nullable=True),
    Column("owner", String(120), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    # None is SQL NULL, "not recorded", rather than a JSON null the report would have to skip.
    Column("provider_attempts", JSON(none_as_null=True), nullable=True),
    # In millionths of a US dollar, so sums stay exact on every database.
    Column("cost_per_image_microusd", BigInteger, nullable=True),
    Column("provider_cost_microusd", BigInteger, nullable=True),
    Column("posted_link", String(500), nullable=True),
    CheckConstraint("images_requested > 0", name="images_requested_positive"),
    CheckConstraint(
        "images_delivered >= 0 AND images_delivered <= images_requested",
        name="images_delivered_in_range",
    ),
    CheckConstraint("credits_charged >= 0 AND credits_held >= 0", name="credits_not_negative"),
    Index("ix_generations_account_created", "account_id", "created_at"),
    Index("ix_generations_status", "status"),
    Index("ix_generations_finished_at", "finished_at"),
    Index("ix_generations_provider_finished_at", "provider", "finished_at"),
)
"""``cost_per_image_microusd``: what the provider charges per image at the quote's resolution,
as the registry said when it was quoted (None: not known). ``provider_cost_microusd``: what
the provider charged for it, every image it made counted (retries included), once it ran.
``posted_link``: where the delivery put the images (a message's URL, a file's path), for
``/history``."""

quote_references = Table(
    "quote_references",
    metadata,
    Column(
        "generation_id",
        String(64),
        ForeignKey("generations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True),
    Column("account_id", String(120), nullable=False),
    Column("media_type", String(50), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("byte_size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_quote_references_account_id", "account_id"),
    Index("ix_quote_references_expires_at", "expires_at"),
)
"""A quote's reference images, kept with it so any process can generate it after a restart.

Purged once the quote is settled or expires.
"""

subject_images = Table(
    "subject_images",
    metadata,
    Column("account_id", String(120), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("media_type", String(50), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("byte_size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
"""A subject: a named set of one person's reference images that its owner adds to /imagine
by name. Private to ``account_id``; ``name`` is stored lower-case, so names are
case-insensitive. Not a foreign key to ``accounts``: a subject may be saved before the
account's first quote opens it."""

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", EntryId, primary_key=True, autoincrement=True),
    Column("account_id", String(120), ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("available_delta", BigInteger, nullable=False),
    Column("held_delta", BigInteger, nullable=False),
    Column("owed_delta", BigInteger, nullable=False, server_default="0"),
    Column("actor", String(120), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("generation_id", String(64), ForeignKey("generations.id"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint(
        "kind IN ('grant', 'adjustment', 'hold', 'capture', 'release', 'expire', "
        "'take_back', 'repay')",
        name="known_kind",
    ),
    Index("ix_ledger_entries_account_id", "account_id", "id"),
)

credit_lots = Table(
    "credit_lots",
    metadata,
    Column("id", EntryId, primary_key=True, autoincrement=True),
    Column("account_id", String(120), ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("granted", BigInteger, nullable=False),
    Column("available", BigInteger, nullable=False),
    Column("held", BigInteger, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("granted > 0", name="granted_positive"),
    CheckConstraint("available >= 0", name="available_not_negative"),
    CheckConstraint("held >= 0", name="held_not_negative"),
    CheckConstraint("kind IN ('allowance', 'promo', 'paid')", name="known_kind"),
    Index("ix_credit_lots_account_id", "account_id", "expires_at"),
)
"""An account's credits, one row per grant: ``available`` and ``held`` of the account are the
sums of its lots'. A lot past ``expires_at`` counts for nothing, even before its ``expire``
entry is written. The index finds an account's lots, soonest expiry first (the draw order
within a kind).
"""

entry_parts = Table(
    "entry_parts",
    metadata,
    Column(
        "entry_id",
        EntryId,
        ForeignKey("ledger_entries.id"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("lot_id", EntryId, ForeignKey("credit_lots.id"), primary_key=True),
    Column("available_delta", BigInteger, nullable=False),
    Column("held_delta", BigInteger, nullable=False),
    Index("ix_entry_parts_lot_id", "lot_id"),
)
"""How each entry's change splits over the account's lots: a lot's ``available`` and ``held``
are the sums of its parts, and a hold's parts say which lots a release gives back to."""

price_overrides = Table(
    "price_overrides",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(120), nullable=False),
    Column("model_id", String(100), nullable=True),
    Column("credits_per_image", BigInteger, nullable=True),
    Column("percent_off", Integer, nullable=True),
    Column("until", UTCDateTime, nullable=True),
    Column("actor", String(120), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("(credits_per_image IS NULL) <> (percent_off IS NULL)", name="one_rule"),
    CheckConstraint(
        "credits_per_image IS NULL OR credits_per_image >= 0", name="price_not_negative"
    ),
    CheckConstraint(
        "percent_off IS NULL OR (percent_off >= 1 AND percent_off <= 100)",
        name="percent_in_range",
    ),
    CheckConstraint("percent_off IS NULL OR model_id IS NULL", name="percent_for_every_model"),
    Index("ix_price_overrides_account_id", "account_id"),
)
"""An admin's price for one account: a fixed credits-per-image for one model (``model_id``
set), or a percent off every model (``model_id`` NULL); optionally until a time.

Not a foreign key to ``accounts``: a price may be set before the account's first command.
"""

bot_state = Table(
    "bot_state",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
"""Small facts the bot must remember across restarts and processes, e.g. what it last synced."""

purchases = Table(
    "purchases",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("source", String(20), nullable=False),
    Column("external_id", String(200), nullable=True),
    Column("account_id", String(120), ForeignKey("accounts.id"), nullable=False),
    Column("pack", String(64), nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(20), nullable=False),
    Column("payment_reference", String(200), nullable=True),
    Column("amount_refunded", BigInteger, nullable=False, default=0),
    Column("disputed", BigInteger, nullable=False, default=0),
    Column("credits_taken_back", BigInteger, nullable=False, default=0),
    Column("channel", String(200), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("paid_at", UTCDateTime, nullable=True),
    CheckConstraint("credits > 0", name="credits_positive"),
    CheckConstraint("amount >= 0 AND amount_refunded >= 0", name="amounts_not_negative"),
    CheckConstraint(
        "credits_taken_back >= 0 AND credits_taken_back <= credits", name="taken_back_in_range"
    ),
    CheckConstraint(
        "status IN ('open', 'paid', 'failed', 'expired', 'refunded')", name="known_status"
    ),
    CheckConstraint("source IN ('stripe', 'discord')", name="known_source"),
    Index("ix_purchases_source_external_id", "source", "external_id", unique=True),
    Index("ix_purchases_payment_reference", "payment_reference"),
    Index("ix_purchases_account_id", "account_id", "created_at"),
    Index("ix_purchases_paid_at", "paid_at"),
)
"""A credit pack bought, or being bought: one row per Checkout Session or Discord entitlement
(``external_id``). ``amount`` is in the currency's smallest unit (cents). ``payment_reference``
is what refunds and disputes name (a Stripe PaymentIntent). ``disputed``: 1 while a dispute
holds the pack's credits back."""

purchase_events = Table(
    "purchase_events",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("purchase_id", String(64), ForeignKey("purchases.id"), nullable=True),
    Column("type", String(100), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
)
"""Every payment event received (Stripe's event ids, Discord's entitlement events), the
purchase it concerned if any: an event delivered again is recognised and changes nothing."""

dashboard_tokens = Table(
    "dashboard_tokens",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("kind", String(10), nullable=False),
    Column("account_id", String(120), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    CheckConstraint("kind IN ('link', 'session')", name="known_kind"),
    Index("ix_dashboard_tokens_expires_at", "expires_at"),
)
"""The admin dashboard's one-time login links and the sessions they were exchanged for, each
known only by its token's SHA-256: a copy of the database logs nobody in. ``used_at``: when a
link was exchanged, or a session ended by logging out. Not a foreign key to ``accounts``: an
admin need never have used the bot."""

account_settings = Table(
    "account_settings",
    metadata,
    Column("account_id", String(120), primary_key=True),
    Column("auto_confirm_under", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("auto_confirm_under >= 0", name="auto_confirm_not_negative"),
)
"""What an account chose for itself. ``auto_confirm_under``: a quote at or under this many
credits generates without its button (0: always ask).

Not a foreign key to ``accounts``: a setting may be stored before anything else is."""

slot_claims = Table(
    "slot_claims",
    metadata,
    Column("id", EntryId, primary_key=True, autoincrement=True),
    Column("generation_id", String(64), ForeignKey("generations.id"), nullable=False),
    Column("scope", String(200), nullable=False),
    Column("owner", String(120), nullable=False),
    Column("running", Boolean, nullable=False),
    Column("lease_until", UTCDateTime, nullable=False),
    UniqueConstraint("generation_id", "scope"),
    Index("ix_slot_claims_scope", "scope", "id"),
)
"""A generation's place under one concurrency limit (``scope``: ``user:<account>`` or
``provider:<name>``) when several processes share PostgreSQL (``ledger/slots.py``): running,
or waiting in line, the line's order being ``id``'s. ``owner`` (a process) renews
``lease_until`` while it lives; a row past it is deleted by the next claim in its scope or the
sweep, so a killed process's slots come free within a lease. Unused on SQLite, where one process
keeps its limits in memory."""
