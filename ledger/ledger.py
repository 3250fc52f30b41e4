"""The credit ledger: balances, holds, captures and releases, each one short transaction.

Every operation is written once, as a function of a SQLAlchemy Core
``Connection``: it reads what ``ledger.rules`` decides on (a generation locked
``FOR UPDATE``; on SQLite the writer's ``BEGIN IMMEDIATE`` holds the whole
database), asks the rule, and applies the answer in the same transaction.
Every balance change is ``_apply``: one conditional ``UPDATE`` that cannot
take either part of a balance below zero, checked by its row count, beside
its append-only entry. ``ledger.transactions.Database`` runs the functions,
the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Row, func, insert, or_, select, type_coerce, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import rules
from ledger.errors import (
    AccountNotFound,
    GenerationNotFound,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidTransition,
    QuoteExpired,
    WrongAccount,
)
from ledger.schema import UTCDateTime, accounts, bot_state, generations, ledger_entries
from ledger.transactions import Database, Work, create_engine
from ledger.values import (
    Balance,
    Discrepancy,
    Entry,
    EntryKind,
    Generation,
    GenerationStatus,
    NewGeneration,
)

__all__ = ["DEFAULT_LEASE", "Clock", "Ledger", "create_engine", "process_identity", "utc_now"]

Clock = Callable[[], datetime]
T = TypeVar("T")

DEFAULT_LEASE = timedelta(minutes=3)
"""How long a hold's owner answers for its generation unless it says otherwise."""

_REASON_LENGTH = 500
"""The longest reason an entry keeps; longer ones are cut."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def process_identity() -> str:
    """This process, told apart from every other process sharing the database, past or present."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


class Ledger:
    """Accounts, entries and generations behind atomic operations.

    ``owner`` names this process on the generations it holds: only it may
    settle them until their lease runs out. Owns ``engine`` from here on:
    ``close`` disposes of it.
    """

    def __init__(self, engine: AsyncEngine, clock: Clock = utc_now, *, owner: str = "") -> None:
        self.engine = engine
        self.owner = owner or process_identity()
        self._clock = clock
        self._database = Database(engine)

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        await self._database.read(lambda connection: connection.execute(select(1)).one())

    async def close(self) -> None:
        await self._database.close()

    # -- accounts -------------------------------------------------------------

    async def ensure_account(self, account: str, *, starting_credits: int = 0) -> Balance:
        """Create the account if it is new, granting ``starting_credits`` once."""
        existing = await self._database.read(partial(_find_balance, account=account))
        if existing is not None:
            return existing
        return await self._database.write(
            partial(self._open_account, account=account, starting_credits=starting_credits)
        )

    async def account_exists(self, account: str) -> bool:
        return await self._database.read(partial(_find_balance, account=account)) is not None

    async def balance(self, account: str) -> Balance:
        return await self._database.read(partial(_balance, account=account))

    async def grant(
        self, account: str, amount: int, *, actor: str, reason: str, idempotency_key: str
    ) -> Balance:
        """Add ``amount`` available credits, creating the account if it is new."""
        _require_positive(amount)
        line = rules.Line(EntryKind.GRANT, amount, amount, 0, actor, reason, idempotency_key)

        def work(connection: Connection) -> Balance:
            if not _replayed(connection, account, line):
                self._insert_account(connection, account, available=0)
                self._apply(connection, account, line)
            return _balance(connection, account)

        return await self._idempotent_write(work)

    async def revoke(
        self, account: str, amount: int, *, actor: str, reason: str, idempotency_key: str
    ) -> Balance:
        """Take back ``amount`` available credits (never held ones)."""
        _require_positive(amount)
        line = rules.Line(EntryKind.ADJUSTMENT, amount, -amount, 0, actor, reason, idempotency_key)

        def work(connection: Connection) -> Balance:
            if not _replayed(connection, account, line) and not self._apply(
                connection, account, line
            ):
                raise InsufficientFunds(account, amount, _balance(connection, account).available)
            return _balance(connection, account)

        return await self._idempotent_write(work)

    # -- generations ----------------------------------------------------------

    async def create_quote(self, new: NewGeneration) -> Generation:
        """Record a quote; no credits move until ``hold``."""
        stored = self._quote_row(new)
        await self._database.write(
            lambda connection: connection.execute(insert(generations), stored)
        )
        return _quoted_generation(stored)

    async def open_quote(
        self, new: NewGeneration, *, starting_credits: int = 0
    ) -> tuple[Balance, Generation]:
        """Open the quoting account if it is new (as ``ensure_account``) and record the quote.

        One transaction for a user's first command. Refused with
        ``InsufficientFunds``, recording no quote, when the available balance
        does not cover the price; the account stays opened.
        """
        stored = self._quote_row(new)

        def work(connection: Connection) -> Balance:
            balance = self._open_account(connection, new.account_id, starting_credits)
            if balance.available >= new.price:
                connection.execute(insert(generations), stored)
            return balance

        balance = await self._database.write(work)
        if balance.available < new.price:
            raise InsufficientFunds(new.account_id, new.price, balance.available)
        return balance, _quoted_generation(stored)

    async def generation(self, generation_id: str) -> Generation:
        return await self._database.read(partial(_generation, generation_id=generation_id))

    async def hold(
        self, generation_id: str, account: str, *, lease: timedelta = DEFAULT_LEASE
    ) -> Generation:
        """Confirm a quote: move its price from available to held, exactly once (``rules.hold``).

        The generation is then this process's to settle for ``lease``, by the
        database's clock, and for as long again each time it renews it.
        """
        held = await self._database.write(
            partial(self._hold, generation_id=generation_id, account=account, lease=lease)
        )
        if held is None:
            # The quote's change to expired is committed by now.
            raise QuoteExpired(generation_id)
        return held

    def _hold(
        self, connection: Connection, generation_id: str, account: str, lease: timedelta
    ) -> Generation | None:
        now = self._clock()
        quote, database_now = _locked_generation(connection, generation_id)
        balance = _find_balance(connection, account)
        try:
            hold = rules.hold(quote, account, balance.available if balance else 0, now)
        except QuoteExpired:
            _close_quote(connection, generation_id, GenerationStatus.EXPIRED, now)
            return None
        if not self._apply(connection, account, hold.line, generation_id):
            # Spent by another connection after the read above (PostgreSQL).
            raise InsufficientFunds(account, hold.price, _balance(connection, account).available)
        return _update_generation(
            connection,
            generation_id,
            status=GenerationStatus.RUNNING,
            credits_held=hold.price,
            confirmed_at=now,
            owner=self.owner,
            lease_until=database_now + lease,
        )

    async def cancel(self, generation_id: str, account: str) -> Generation:
        """Withdraw a quote that was never confirmed."""

        def work(connection: Connection) -> Generation:
            quote, _ = _locked_generation(connection, generation_id)
            if quote.account_id != account:
                raise WrongAccount(generation_id, account)
            if quote.status != GenerationStatus.QUOTED:
                raise InvalidTransition(generation_id, quote.status, "cancel")
            _close_quote(connection, generation_id, GenerationStatus.CANCELLED, self._clock())
            return _generation(connection, generation_id)

        return await self._database.write(work)

    async def capture(self, generation_id: str, images_delivered: int) -> Generation:
        """Charge for the images delivered and release the rest of the hold (``rules.settlement``).

        Settling twice returns the first settlement unchanged, whoever made it:
        compare its ``images_delivered`` with what was posted.
        """
        return await self._database.write(
            partial(self._settle, generation_id=generation_id, images_delivered=images_delivered)
        )

    async def release(
        self, generation_id: str, *, error_code: str, error_message: str
    ) -> Generation:
        """Release the whole hold of a generation that delivered nothing; as ``capture``."""
        return await self._database.write(
            partial(
                self._settle,
                generation_id=generation_id,
                images_delivered=0,
                error_code=error_code,
                error_message=error_message,
            )
        )

    def _settle(
        self,
        connection: Connection,
        generation_id: str,
        images_delivered: int,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> Generation:
        running, database_now = _locked_generation(connection, generation_id)
        if rules.already_settled(running):
            return running
        rules.check_settler(running, self.owner, database_now)
        return self._apply_settlement(
            connection, rules.settlement(running, images_delivered, error_code, error_message)
        )

    def _apply_settlement(self, connection: Connection, settlement: rules.Settlement) -> Generation:
        running = settlement.running
        for line in settlement.lines:
            if not self._apply(connection, running.account_id, line, running.id):
                raise rules.missing_hold(running.id)
        return _update_generation(
            connection,
            running.id,
            status=settlement.status,
            images_delivered=settlement.delivered,
            credits_held=0,
            credits_charged=settlement.charged,
            error_code=settlement.error_code,
            error_message=settlement.error_message,
            finished_at=self._clock(),
        )

    async def renew_leases(self, generation_ids: Collection[str], lease: timedelta) -> None:
        """Say this process still answers for these running generations, for ``lease`` from now."""
        if not generation_ids:
            return

        def work(connection: Connection) -> None:
            database_now = connection.scalar(select(_database_now(connection)))
            connection.execute(
                update(generations)
                .where(
                    generations.c.id.in_(list(generation_ids)),
                    generations.c.status == GenerationStatus.RUNNING,
                    generations.c.owner == self.owner,
                )
                .values(lease_until=database_now + lease)
            )

        await self._database.write(work)

    async def mark_posted(self, generation_id: str, images: int) -> None:
        """Record that the platform took ``images`` images, before they are captured.

        If this process dies between the post and the capture, whoever settles
        the generation charges for what the user received instead of giving it away.
        """
        await self._database.write(
            lambda connection: connection.execute(
                update(generations)
                .where(
                    generations.c.id == generation_id,
                    generations.c.status == GenerationStatus.RUNNING,
                )
                .values(images_posted=images)
            )
        )

    async def expired_leases(self) -> list[str]:
        """The running generations whose lease has run out: their owner no longer answers for them."""

        def work(connection: Connection) -> list[str]:
            query = select(generations.c.id).where(
                generations.c.status == GenerationStatus.RUNNING,
                or_(
                    generations.c.lease_until.is_(None),
                    generations.c.lease_until <= _database_now(connection),
                ),
            )
            return list(connection.scalars(query))

        return await self._database.read(work)

    async def settle_abandoned(
        self, generation_id: str, *, reason: str, posted_reason: str
    ) -> Generation | None:
        """Settle ``generation_id`` if its lease has run out (``rules.abandoned``), else None.

        Decided on the row as locked now, not as ``expired_leases`` saw it: its
        owner may have renewed the lease, recorded images posted, or settled it since.
        """

        def work(connection: Connection) -> Generation | None:
            running, database_now = _locked_generation(connection, generation_id)
            if running.status != GenerationStatus.RUNNING or not rules.lease_expired(
                running, database_now
            ):
                return None
            return self._apply_settlement(
                connection, rules.abandoned(running, reason=reason, posted_reason=posted_reason)
            )

        return await self._database.write(work)

    async def expire_quotes(self) -> int:
        """Mark quotes past their expiry as expired; returns how many."""
        now = self._clock()
        statement = (
            update(generations)
            .where(generations.c.status == GenerationStatus.QUOTED, generations.c.expires_at <= now)
            .values(status=GenerationStatus.EXPIRED, finished_at=now)
        )
        return await self._database.write(lambda connection: connection.execute(statement).rowcount)

    async def read_state(self, key: str) -> str | None:
        """A value the bot remembered with ``write_state``, or None."""
        query = select(bot_state.c.value).where(bot_state.c.key == key)
        return await self._database.read(lambda connection: connection.scalar(query))

    async def write_state(self, key: str, value: str) -> None:
        """Remember ``value`` under ``key``, replacing what was there."""
        now = self._clock()

        def work(connection: Connection) -> None:
            connection.execute(
                _dialect_insert(connection, bot_state)
                .values(key=key, value=value, updated_at=now)
                .on_conflict_do_update(
                    index_elements=["key"], set_={"value": value, "updated_at": now}
                )
            )

        await self._database.write(work)

    async def history(
        self, account: str, *, limit: int = 10, include_unconfirmed: bool = False
    ) -> list[Generation]:
        """The account's generations, newest first."""
        query = select(generations).where(generations.c.account_id == account)
        if not include_unconfirmed:
            query = query.where(generations.c.confirmed_at.is_not(None))
        query = query.order_by(generations.c.created_at.desc(), generations.c.id).limit(limit)
        return await self._database.read(
            lambda connection: [_generation_from(row) for row in connection.execute(query)]
        )

    async def entries(self, account: str, *, limit: int = 50) -> list[Entry]:
        """The account's ledger entries, newest first."""
        query = (
            select(ledger_entries)
            .where(ledger_entries.c.account_id == account)
            .order_by(ledger_entries.c.id.desc())
            .limit(limit)
        )
        return await self._database.read(
            lambda connection: [
                Entry(**{**row._mapping, "kind": EntryKind(row.kind)})
                for row in connection.execute(query)
            ]
        )

    async def verify(self) -> list[Discrepancy]:
        """Recompute every balance from its entries and running holds; an empty list means all agree."""
        entry_sums = (
            select(
                ledger_entries.c.account_id,
                func.coalesce(func.sum(ledger_entries.c.available_delta), 0).label("available"),
                func.coalesce(func.sum(ledger_entries.c.held_delta), 0).label("held"),
            )
            .group_by(ledger_entries.c.account_id)
            .subquery()
        )
        running_sums = (
            select(
                generations.c.account_id,
                func.coalesce(func.sum(generations.c.credits_held), 0).label("held"),
            )
            .where(generations.c.status == GenerationStatus.RUNNING)
            .group_by(generations.c.account_id)
            .subquery()
        )
        query = (
            select(
                accounts.c.id,
                accounts.c.available,
                accounts.c.held,
                func.coalesce(entry_sums.c.available, 0).label("entries_available"),
                func.coalesce(entry_sums.c.held, 0).label("entries_held"),
                func.coalesce(running_sums.c.held, 0).label("running_holds"),
            )
            .select_from(accounts)
            .outerjoin(entry_sums, entry_sums.c.account_id == accounts.c.id)
            .outerjoin(running_sums, running_sums.c.account_id == accounts.c.id)
            .order_by(accounts.c.id)
        )
        rows = await self._database.read(lambda connection: connection.execute(query).all())
        return [
            Discrepancy(
                account=row.id,
                stored_available=row.available,
                stored_held=row.held,
                entries_available=int(row.entries_available),
                entries_held=int(row.entries_held),
                running_holds=int(row.running_holds),
            )
            for row in rows
            if row.available != int(row.entries_available)
            or not row.held == int(row.entries_held) == int(row.running_holds)
        ]

    # -- helpers --------------------------------------------------------------

    async def _idempotent_write(self, work: Work[T]) -> T:
        """Run ``work``; if a concurrent twin inserted the same key first, replay it."""
        try:
            return await self._database.write(work)
        except IntegrityError:
            return await self._database.write(work)

    def _open_account(self, connection: Connection, account: str, starting_credits: int) -> Balance:
        existing = _find_balance(connection, account)
        if existing is not None:
            return existing
        if not self._insert_account(connection, account, available=starting_credits):
            # Another process opened it after the read above.
            return _balance(connection, account)
        for line in rules.opening(account, starting_credits):
            self._write_entry(connection, account, line)
        return Balance(account=account, available=starting_credits, held=0)

    def _insert_account(self, connection: Connection, account: str, *, available: int) -> bool:
        """Open ``account`` with ``available`` credits (its entries are the caller's); False if it exists."""
        now = self._clock()
        opened = connection.execute(
            _dialect_insert(connection, accounts)
            .values(id=account, available=available, held=0, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        return opened.rowcount == 1

    def _apply(
        self,
        connection: Connection,
        account: str,
        line: rules.Line,
        generation_id: str | None = None,
    ) -> bool:
        """Change ``account``'s balance by ``line`` and record it; False (nothing done) if a part
        of the balance would go below zero or the account does not exist."""
        changed = connection.execute(
            update(accounts)
            .where(
                accounts.c.id == account,
                accounts.c.available >= -line.available_delta,
                accounts.c.held >= -line.held_delta,
            )
            .values(
                available=accounts.c.available + line.available_delta,
                held=accounts.c.held + line.held_delta,
                updated_at=self._clock(),
            )
        )
        if changed.rowcount != 1:
            return False
        self._write_entry(connection, account, line, generation_id)
        return True

    def _write_entry(
        self,
        connection: Connection,
        account: str,
        line: rules.Line,
        generation_id: str | None = None,
    ) -> None:
        connection.execute(
            insert(ledger_entries),
            {
                "account_id": account,
                "kind": line.kind,
                "amount": line.amount,
                "available_delta": line.available_delta,
                "held_delta": line.held_delta,
                "actor": line.actor,
                "reason": line.reason[:_REASON_LENGTH],
                "idempotency_key": line.idempotency_key,
                "generation_id": generation_id,
                "created_at": self._clock(),
            },
        )

    def _quote_row(self, new: NewGeneration) -> dict[str, Any]:
        return {
            "id": new.id,
            "account_id": new.account_id,
            "model_id": new.model_id,
            "provider": new.provider,
            "provider_model": new.provider_model,
            "prompt": new.prompt,
            "options": new.options,
            "channel": new.channel,
            "images_requested": new.images_requested,
            "images_delivered": 0,
            "credits_per_image": new.credits_per_image,
            "credits_held": 0,
            "credits_charged": 0,
            "status": GenerationStatus.QUOTED,
            "created_at": self._clock().astimezone(UTC),
            "expires_at": new.expires_at.astimezone(UTC),
        }


def _require_positive(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidAmount(amount)


def _dialect_insert(connection: Connection, table: Any) -> Any:
    """An INSERT with the dialect's ``ON CONFLICT`` clauses, which SQLAlchemy keeps per dialect."""
    return (sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert)(table)


def _database_now(connection: Connection) -> ColumnElement[datetime]:
    """The database's clock, which every process sharing it reads alike: leases are timed by it."""
    if connection.dialect.name == "sqlite":
        # In the form SQLite's timestamps are stored in, microseconds included, so they compare as text.
        return type_coerce(func.strftime("%Y-%m-%d %H:%M:%f000", "now"), UTCDateTime)
    return type_coerce(func.now(), UTCDateTime)


def _replayed(connection: Connection, account: str, line: rules.Line) -> bool:
    """Whether ``line``'s key was used already, for the same change; a different one is refused."""
    row = connection.execute(
        select(ledger_entries.c.account_id, ledger_entries.c.kind, ledger_entries.c.amount).where(
            ledger_entries.c.idempotency_key == line.idempotency_key
        )
    ).first()
    if row is None:
        return False
    if tuple(row) != (account, line.kind, line.amount):
        raise IdempotencyConflict(line.idempotency_key)
    return True


def _find_balance(connection: Connection, account: str) -> Balance | None:
    row = connection.execute(
        select(accounts.c.available, accounts.c.held).where(accounts.c.id == account)
    ).first()
    return None if row is None else Balance(account=account, available=row[0], held=row[1])


def _balance(connection: Connection, account: str) -> Balance:
    found = _find_balance(connection, account)
    if found is None:
        raise AccountNotFound(account)
    return found


def _generation(connection: Connection, generation_id: str) -> Generation:
    row = connection.execute(select(generations).where(generations.c.id == generation_id)).first()
    if row is None:
        raise GenerationNotFound(generation_id)
    return _generation_from(row)


def _locked_generation(connection: Connection, generation_id: str) -> tuple[Generation, datetime]:
    """The generation, locked until the transaction ends, and the database's clock."""
    row = connection.execute(
        select(generations, _database_now(connection).label("database_now"))
        .where(generations.c.id == generation_id)
        .with_for_update(of=generations)
    ).first()
    if row is None:
        raise GenerationNotFound(generation_id)
    return _generation_from(row), row.database_now


def _close_quote(
    connection: Connection, generation_id: str, status: GenerationStatus, now: datetime
) -> None:
    """A quote's end without a hold: cancelled or expired."""
    connection.execute(
        update(generations)
        .where(generations.c.id == generation_id, generations.c.status == GenerationStatus.QUOTED)
        .values(status=status, finished_at=now)
    )


def _update_generation(connection: Connection, generation_id: str, **values: Any) -> Generation:
    row = connection.execute(
        update(generations)
        .where(generations.c.id == generation_id)
        .values(**values)
        .returning(*generations.c)
    ).one()
    return _generation_from(row)


_GENERATION_COLUMNS = tuple(column.name for column in generations.c if column.name != "status")


def _generation_from(row: Row[Any]) -> Generation:
    """The generation in ``row``, which may hold other columns besides."""
    values: Mapping[str, Any] = row._mapping
    return Generation(
        **{name: values[name] for name in _GENERATION_COLUMNS},
        status=GenerationStatus(values["status"]),
    )


def _quoted_generation(stored: Mapping[str, Any]) -> Generation:
    """What reading a new quote's row back would give, without the read."""
    return Generation(
        **stored, error_code=None, error_message=None, confirmed_at=None, finished_at=None
    )
