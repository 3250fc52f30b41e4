"""The ledger's hot-path statements, built once with named parameters.

SQLAlchemy caches a statement's compiled SQL under its cache key, but a
statement built afresh for every call must have that key computed again, and
on SQLite that cost more than running the statement (``bench.ledger``). Built
once here, each call only binds values.
"""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ledger.schema import accounts, generations, ledger_entries
from ledger.values import GenerationStatus

GENERATION = select(generations).where(generations.c.id == bindparam("generation_id"))
"""One generation by ``generation_id``."""

LOCKED_GENERATION = GENERATION.with_for_update()
"""The same, locked until the transaction ends (on PostgreSQL; SQLite's writer lock covers it)."""

BALANCE = select(accounts.c.available, accounts.c.held).where(accounts.c.id == bindparam("account"))
"""``account``'s available and held credits."""

OPEN_ACCOUNT = {
    "sqlite": sqlite.insert(accounts).on_conflict_do_nothing(index_elements=["id"]),
    "postgresql": postgresql.insert(accounts).on_conflict_do_nothing(index_elements=["id"]),
}
"""By dialect: executed with a new account's column values; does nothing if it exists."""

HOLD_CREDITS = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"), accounts.c.available >= bindparam("amount"))
    .values(
        available=accounts.c.available - bindparam("amount"),
        held=accounts.c.held + bindparam("amount"),
        updated_at=bindparam("now"),
    )
)
"""Move ``amount`` from available to held, only if it is available."""

SETTLE_CREDITS = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"), accounts.c.held >= bindparam("was_held"))
    .values(
        held=accounts.c.held - bindparam("was_held"),
        available=accounts.c.available + bindparam("returned"),
        updated_at=bindparam("now"),
    )
)
"""End a hold of ``was_held``: ``returned`` of it goes back to available, the rest is spent."""

ADD_CREDITS = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"))
    .values(available=accounts.c.available + bindparam("amount"), updated_at=bindparam("now"))
)

TAKE_CREDITS = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"), accounts.c.available >= bindparam("amount"))
    .values(available=accounts.c.available - bindparam("amount"), updated_at=bindparam("now"))
)
"""Remove ``amount`` available credits, only if they are there."""

NEW_ENTRY = insert(ledger_entries)
"""Executed with one entry's column values."""

ENTRY_BY_KEY = select(ledger_entries).where(ledger_entries.c.idempotency_key == bindparam("key"))

NEW_GENERATION = insert(generations).returning(*generations.c)
"""Executed with one generation's column values; hands the row back."""

START_GENERATION = (
    update(generations)
    .where(generations.c.id == bindparam("generation_id"))
    .values(
        status=GenerationStatus.RUNNING,
        credits_held=bindparam("amount"),
        confirmed_at=bindparam("now"),
        heartbeat_at=bindparam("now"),
    )
    .returning(*generations.c)
)

FINISH_GENERATION = (
    update(generations)
    .where(generations.c.id == bindparam("generation_id"))
    .values(
        status=bindparam("new_status"),
        images_delivered=bindparam("delivered"),
        credits_held=0,
        credits_charged=bindparam("charged"),
        error_code=bindparam("code"),
        error_message=bindparam("message"),
        finished_at=bindparam("now"),
    )
    .returning(*generations.c)
)
"""Settle a running generation."""

MARK_POSTED = (
    update(generations)
    .where(
        generations.c.id == bindparam("generation_id"),
        generations.c.status == GenerationStatus.RUNNING,
    )
    .values(images_posted=bindparam("images"))
)

HEARTBEAT = (
    update(generations)
    .where(
        generations.c.id.in_(bindparam("generation_ids", expanding=True)),
        generations.c.status == GenerationStatus.RUNNING,
    )
    .values(heartbeat_at=bindparam("now"))
)

CLOSE_QUOTE = (
    update(generations)
    .where(generations.c.id == bindparam("generation_id"))
    .values(status=bindparam("new_status"), finished_at=bindparam("now"))
)
"""A quote's end without a hold: cancelled or expired."""
