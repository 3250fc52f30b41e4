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

import asyncio
import hashlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Row,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import accounts as account_search
from ledger import dashboard_sessions, prices, purchases, rules, slots, subjects
from ledger.clock import database_clock as _database_clock
from ledger.clock import database_now as _database_now
from ledger.dashboard_sessions import DashboardSession
from ledger.errors import (
    AccountNotFound,
    AccountReferencesFull,
    CreditsOwed,
    GenerationNotFound,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidTransition,
    LedgerError,
    PurchaseNotFound,
    QuoteExpired,
    ReferenceCorrupt,
    ReferenceStorageFull,
    TooManyQuotes,
    WrongAccount,
)
from ledger.schema import (
    UTCDateTime,
    account_settings,
    accounts,
    bot_state,
    credit_lots,
    entry_parts,
    generations,
    ledger_entries,
    quote_references,
)
from ledger.subjects import SubjectSummary
from ledger.transactions import Database, Work, create_engine
from ledger.values import (
    PRICE_OPTION,
    REFERENCE_COUNT_OPTION,
    Balance,
    Discrepancy,
    Entry,
    EntryKind,
    Generation,
    GenerationStatus,
    Lot,
    LotKind,
    NewGeneration,
    NewPurchase,
    PaymentEvent,
    PriceOverride,
    Purchase,
    PurchaseChange,
    PurchaseStatus,
    QuoteLimits,
    QuoteReference,
    QuoteTerms,
    StatementLine,
)

__all__ = ["DEFAULT_LEASE", "Clock", "Ledger", "create_engine", "process_identity", "utc_now"]

Clock = Callable[[], datetime]
T = TypeVar("T")

DEFAULT_LEASE = timedelta(minutes=3)
"""How long a hold's owner answers for its generation unless it says otherwise."""

_REASON_LENGTH = 500
"""The longest reason an entry keeps; longer ones are cut."""

_QUOTE_WINDOW = timedelta(minutes=1)
"""``QuoteLimits.quotes_per_minute`` counts an account's quotes created this long before a new one."""


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

    def now(self) -> datetime:
        """The ledger's time (its injected clock), which times quotes and expiry."""
        return self._clock()

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        await self._database.read(lambda connection: connection.execute(select(1)).one())

    async def close(self) -> None:
        await self._database.close()

    # -- accounts -------------------------------------------------------------

    async def ensure_account(self, account: str, *, starting_credits: int = 0) -> Balance:
        """Create the account if it is new, granting ``starting_credits`` once."""
        existing = await self._database.read(
            partial(_find_balance, account=account, now=self._clock())
        )
        if existing is not None:
            return existing
        return await self._database.write(
            partial(self._open_account, account=account, starting_credits=starting_credits)
        )

    async def account_exists(self, account: str) -> bool:
        found = await self._database.read(
            partial(_find_balance, account=account, now=self._clock())
        )
        return found is not None

    async def key_used(self, idempotency_key: str) -> bool:
        """Whether an entry carries ``idempotency_key`` already, so a repeat would change nothing."""
        return (
            await self._database.read(
                lambda connection: connection.execute(
                    _ENTRY_BY_KEY, {"key": idempotency_key}
                ).first()
            )
            is not None
        )

    async def balance(self, account: str) -> Balance:
        """The account's balance and lots; credits of a lot past its expiry are not counted,
        whether or not its ``expire`` entry has been written yet."""
        return await self._database.read(partial(_balance, account=account, now=self._clock()))

    async def grant(
        self,
        account: str,
        amount: int,
        *,
        actor: str,
        reason: str,
        idempotency_key: str,
        kind: LotKind = LotKind.PROMO,
        expires_at: datetime | None = None,
    ) -> Balance:
        """Add ``amount`` available credits in a new lot of ``kind``, spendable until
        ``expires_at`` (never, if None), creating the account if it is new.

        Replaying the key answers the balance and changes nothing; the same key for
        another account, amount, kind or expiry is refused (``IdempotencyConflict``).
        """
        _require_positive(amount)
        if kind == LotKind.PAID and expires_at is not None:
            raise ValueError("paid credits never expire")
        line = rules.Line(EntryKind.GRANT, amount, amount, 0, actor, reason, idempotency_key)

        def work(connection: Connection) -> Balance:
            now = self._clock()
            if _replayed(connection, account, line):
                _check_granted_lot(connection, idempotency_key, kind, expires_at)
            else:
                self._grant(connection, account, line, kind, expires_at)
            return _balance(connection, account, now)

        return await self._idempotent_write(work)

    async def revoke(
        self, account: str, amount: int, *, actor: str, reason: str, idempotency_key: str
    ) -> Balance:
        """Take back ``amount`` available credits (never held or expired ones), from the
        lots in the order a hold draws from them."""
        _require_positive(amount)
        line = rules.Line(EntryKind.ADJUSTMENT, amount, -amount, 0, actor, reason, idempotency_key)

        def work(connection: Connection) -> Balance:
            now = self._clock()
            if _replayed(connection, account, line):
                return _balance(connection, account, now)
            balance = self._touch(connection, account, now)
            if balance is None:
                raise AccountNotFound(account)
            taken = rules.drawn(line, balance.lots, now)
            if taken is None or not self._apply(connection, account, taken):
                raise InsufficientFunds(account, amount, balance.available)
            return _balance(connection, account, now)

        return await self._idempotent_write(work)

    async def take_back(
        self,
        account: str,
        amount: int,
        *,
        actor: str,
        reason: str,
        idempotency_key: str,
        from_grant: str | None = None,
    ) -> Balance:
        """Take back ``amount`` credits whose payment was refunded or disputed: from the lot
        granted by the entry keyed ``from_grant`` first, then the others in draw order, and
        what they do not hold (spent, or held by a running generation) becomes owed
        (``rules.taken_back``). Replaying the key changes nothing."""
        _require_positive(amount)
        line = rules.Line(EntryKind.TAKE_BACK, amount, 0, 0, actor, reason, idempotency_key)

        def work(connection: Connection) -> Balance:
            now = self._clock()
            if not _replayed(connection, account, line):
                self._take_back(connection, account, line, from_grant)
            return _balance(connection, account, now)

        return await self._idempotent_write(work)

    # -- generations ----------------------------------------------------------

    async def create_quote(self, new: NewGeneration) -> Generation:
        """Record a quote; no credits move until ``hold``."""
        stored = self._quote_row(new)
        await self._database.write(lambda connection: connection.execute(_NEW_GENERATION, stored))
        return _quoted_generation(stored)

    async def open_quote(
        self,
        new: NewGeneration,
        *,
        starting_credits: int = 0,
        references: Sequence[QuoteReference] = (),
        limits: QuoteLimits | None = None,
    ) -> tuple[Balance, Generation]:
        """Open the quoting account if it is new (as ``ensure_account``) and record the quote
        with its reference images, which any process reads back with ``references``.

        One transaction for a user's first command, and no quote without its
        references. Refused, recording nothing of the quote (the account stays
        opened), with ``InsufficientFunds`` when the available balance does not
        cover the price, and, given ``limits``, with ``TooManyQuotes``,
        ``AccountReferencesFull`` or ``ReferenceStorageFull``. The limits are
        read with the account's row locked, and for a quote with references the
        storage's lock held, so that two concurrent quotes cannot both slip past one.
        """
        stored = self._quote_row(new, len(references))
        reference_rows = (
            await asyncio.to_thread(_reference_rows, new, references) if references else []
        )
        adding = sum(row["byte_size"] for row in reference_rows)

        def work(connection: Connection) -> tuple[Balance, LedgerError | None]:
            balance = self._open_account(connection, new.account_id, starting_credits)
            refusal: LedgerError | None = None
            if balance.owed:
                refusal = CreditsOwed(new.account_id, balance.owed)
            elif balance.available < new.price:
                refusal = InsufficientFunds(new.account_id, new.price, balance.available)
            elif limits is not None:
                refusal = _over_limit(connection, new.account_id, adding, limits, self._clock())
            if refusal is None:
                connection.execute(_NEW_GENERATION, stored)
                if reference_rows:
                    connection.execute(_NEW_REFERENCE, reference_rows)
            return balance, refusal

        balance, refusal = await self._database.write(work)
        if refusal is not None:
            try:
                raise refusal
            finally:
                # Named here, the refusal would form a cycle with this frame through its
                # traceback, keeping the references' megabytes until the garbage collector ran.
                del refusal
        return balance, _quoted_generation(stored)

    async def references(self, generation_id: str) -> tuple[QuoteReference, ...]:
        """The reference images stored with the generation's quote, in order.

        Empty once the generation has settled or its quote expired. Raises
        ``ReferenceCorrupt`` for one whose bytes no longer match their digest.
        """
        rows = await self._database.read(
            lambda connection: connection.execute(
                _REFERENCES, {"generation_id": generation_id}
            ).all()
        )
        if not rows:
            return ()
        return await asyncio.to_thread(_verified_references, generation_id, rows)

    # -- subjects -------------------------------------------------------------

    async def save_subject(
        self, account: str, name: str, images: Sequence[QuoteReference], *, limit_bytes: int
    ) -> bool:
        """Store ``images`` as ``account``'s subject ``name``, replacing one of that name (whether
        there was one), in one transaction; ``SubjectStorageFull`` (nothing changed) past
        ``limit_bytes`` for the account."""
        rows = await asyncio.to_thread(subjects.rows, account, name, images, self._clock())
        return await self._database.write(
            partial(subjects.save, account=account, name=name, new_rows=rows, limit=limit_bytes)
        )

    async def list_subjects(self, account: str) -> list[SubjectSummary]:
        """``account``'s subjects, by name; nobody else's."""
        return await self._database.read(partial(subjects.listed, account=account))

    async def subject_images(self, account: str, name: str) -> tuple[QuoteReference, ...]:
        """The images of ``account``'s subject ``name``, in order; empty if it has none of that name.

        Raises ``ReferenceCorrupt`` for one whose bytes no longer match their digest.
        """
        found = await self._database.read(partial(subjects.images, account=account, name=name))
        if not found:
            return ()
        return await asyncio.to_thread(subjects.verified, account, name, found)

    async def delete_subject(self, account: str, name: str) -> bool:
        """Delete ``account``'s subject ``name``; whether there was one."""
        return await self._database.write(partial(subjects.remove, account=account, name=name))

    async def generation(self, generation_id: str) -> Generation:
        return await self._database.read(partial(_generation, generation_id=generation_id))

    async def hold(
        self,
        generation_id: str,
        account: str,
        *,
        lease: timedelta = DEFAULT_LEASE,
        accept: Callable[[Generation], None] | None = None,
    ) -> Generation:
        """Confirm a quote: move its price from available to held, exactly once (``rules.hold``).

        The generation is then this process's to settle for ``lease``, by the
        database's clock, and for as long again each time it renews it.
        ``accept``, the caller's own last word on a quote the rules allow, may
        raise to refuse it; nothing is held then.
        """
        held = await self._database.write(
            partial(
                self._hold,
                generation_id=generation_id,
                account=account,
                lease=lease,
                accept=accept,
            )
        )
        if held is None:
            # The quote's change to expired is committed by now.
            raise QuoteExpired(generation_id)
        return held

    def _hold(
        self,
        connection: Connection,
        generation_id: str,
        account: str,
        lease: timedelta,
        accept: Callable[[Generation], None] | None,
    ) -> Generation | None:
        now = self._clock()
        quote, database_now = _locked_generation(connection, generation_id)
        balance = self._touch(connection, account, now)
        available = balance.available if balance else 0
        try:
            hold = rules.hold(quote, account, available, now, balance.owed if balance else 0)
        except QuoteExpired:
            _close_quote(connection, quote, GenerationStatus.EXPIRED, now)
            return None
        if accept is not None:
            accept(quote)
        line = rules.drawn(hold.line, balance.lots if balance else (), now)
        if line is None or not self._apply(connection, account, line, generation_id):
            # The account's row is locked and its lots read after the lock: never expected.
            raise InsufficientFunds(account, hold.price, available)
        started = connection.execute(
            _START_GENERATION,
            {
                "generation_id": generation_id,
                "credits_held": hold.price,
                "confirmed_at": now,
                "owner": self.owner,
                "lease_until": database_now + lease,
            },
        )
        return _generation_from(started.one())

    async def open_quotes(
        self,
        news: Sequence[NewGeneration],
        *,
        starting_credits: int = 0,
        limits: QuoteLimits | None = None,
    ) -> tuple[Balance, list[Generation]]:
        """Record several quotes meant to be confirmed together (``hold_all``), in one
        transaction: all of them, or none with the refusal ``open_quote`` would give
        for their total price (no reference images)."""
        if not news:
            raise ValueError("no quotes to open")
        account = news[0].account_id
        if any(new.account_id != account for new in news):
            raise ValueError("quotes opened together belong to one account")
        stored = [self._quote_row(new) for new in news]
        total = sum(new.price for new in news)

        def work(connection: Connection) -> tuple[Balance, LedgerError | None]:
            balance = self._open_account(connection, account, starting_credits)
            refusal: LedgerError | None = None
            if balance.owed:
                refusal = CreditsOwed(account, balance.owed)
            elif balance.available < total:
                refusal = InsufficientFunds(account, total, balance.available)
            elif limits is not None:
                refusal = _over_limit(connection, account, 0, limits, self._clock())
            if refusal is None:
                connection.execute(_NEW_GENERATION, stored)
            return balance, refusal

        balance, refusal = await self._database.write(work)
        if refusal is not None:
            raise refusal
        return balance, [_quoted_generation(row) for row in stored]

    async def hold_all(
        self,
        generation_ids: Sequence[str],
        account: str,
        *,
        lease: timedelta = DEFAULT_LEASE,
        accept: Callable[[Generation], None] | None = None,
    ) -> list[Generation]:
        """``hold`` each quote, all in one transaction: every hold or none.

        Refused with the total price against the available balance
        (``rules.cover_all``), or with the first refusal ``hold`` gives one of
        them; a second confirm finds them running and is refused as ``hold`` is.
        An expired quote refuses them all (``QuoteExpired``) and stays quoted
        until the sweep expires it, since nothing of the transaction is kept.
        """
        # Locked in one order, so that two confirms of overlapping sets cannot deadlock.
        ordered = sorted(set(generation_ids))

        def work(connection: Connection) -> list[Generation]:
            now = self._clock()
            quotes = [_locked_generation(connection, each)[0] for each in ordered]
            balance = self._touch(connection, account, now)
            for quote in quotes:
                # The rules' own refusals first (another account's, already confirmed, expired).
                rules.hold(quote, account, quote.price, now)
            rules.cover_all(
                account, [quote.price for quote in quotes], balance.available if balance else 0
            )
            held = {}
            for quote in quotes:
                generation = self._hold(connection, quote.id, account, lease, accept)
                if generation is None:
                    raise QuoteExpired(quote.id)
                held[quote.id] = generation
            return [held[each] for each in generation_ids]

        return await self._database.write(work)

    async def cancel(self, generation_id: str, account: str) -> Generation:
        """Withdraw a quote that was never confirmed."""

        def work(connection: Connection) -> Generation:
            quote, _ = _locked_generation(connection, generation_id)
            if quote.account_id != account:
                raise WrongAccount(generation_id, account)
            if quote.status != GenerationStatus.QUOTED:
                raise InvalidTransition(generation_id, quote.status, "cancel")
            _close_quote(connection, quote, GenerationStatus.CANCELLED, self._clock())
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
        now = self._clock()
        # The account's lots change only under its row's lock (``_touch``).
        owed = connection.execute(_LOCKED_BALANCE, {"account": running.account_id}).one().owed
        held_parts = [
            (
                Lot(row.lot_id, LotKind(row.kind), 0, row.held, row.expires_at),
                row.held,
            )
            for row in connection.execute(_HOLD_PARTS, {"key": rules.hold_key(running.id)})
        ]
        for line in rules.by_lot(settlement, held_parts, now):
            if not self._apply(connection, running.account_id, line, running.id):
                raise rules.missing_hold(running.id)
        if owed and settlement.returned:
            self._repay(connection, running.account_id, now, f"release:{running.id}")
        finished = connection.execute(
            _FINISH_GENERATION,
            {
                "generation_id": running.id,
                "status": settlement.status,
                "images_delivered": settlement.delivered,
                "credits_charged": settlement.charged,
                "error_code": settlement.error_code,
                "error_message": settlement.error_message,
                "finished_at": self._clock(),
            },
        )
        _forget_references(connection, running)
        return _generation_from(finished.one())

    async def renew_leases(self, generation_ids: Collection[str], lease: timedelta) -> None:
        """Say this process still answers for these running generations, for ``lease`` from now,
        and still runs or waits for them under the limits shared across processes (``slots``)."""
        if not generation_ids:
            return

        def work(connection: Connection) -> None:
            database_now = connection.scalar(select(_database_now(connection)))
            assert database_now is not None
            connection.execute(
                update(generations)
                .where(
                    generations.c.id.in_(list(generation_ids)),
                    generations.c.status == GenerationStatus.RUNNING,
                    generations.c.owner == self.owner,
                )
                .values(lease_until=database_now + lease)
            )
            slots.renew(
                connection,
                generation_ids=generation_ids,
                owner=self.owner,
                lease_until=database_now + lease,
            )

        await self._database.write(work)

    # -- limits shared across processes (PostgreSQL) ---------------------------

    async def claim_slot(
        self, generation_id: str, scope: str, limit: int, lease: timedelta
    ) -> slots.SlotPlace:
        """Give ``generation_id`` one of ``scope``'s ``limit`` slots (``user:<account>``,
        ``provider:<name>``) if one is free and nobody waits ahead, else its place in line
        (1: next), owned by this process for ``lease``: asked first to join the line, then
        again while it waits.

        A generation not in line yet, or whose row expired meanwhile (its process stalled
        past its lease), joins at the back, under a new ``claim_id``.
        """
        return await self._database.write(
            partial(
                slots.claim,
                generation_id=generation_id,
                scope=scope,
                owner=self.owner,
                limit=limit,
                lease=lease,
            )
        )

    async def free_slot(self, generation_id: str, scope: str) -> None:
        """Give up ``generation_id``'s slot, or its place in line, under ``scope``."""
        await self._database.write(partial(slots.free, generation_id=generation_id, scope=scope))

    async def drop_expired_slots(self) -> int:
        """Free the slots and places in line of processes that stopped renewing them."""
        return await self._database.write(slots.drop_expired)

    async def mark_posted(self, generation_id: str, images: int, link: str | None = None) -> None:
        """Record that the platform took ``images`` images, before they are captured, and
        ``link``, where they were posted (for ``history``).

        If this process dies between the post and the capture, whoever settles
        the generation charges for what the user received instead of giving it away.
        """
        values = {"generation_id": generation_id, "images": images, "link": link}
        await self._database.write(lambda connection: connection.execute(_MARK_POSTED, values))

    async def record_attempts(
        self,
        generation_id: str,
        attempts: Sequence[Mapping[str, Any]],
        provider_cost_microusd: int | None = None,
    ) -> None:
        """Keep the calls made to the provider for ``generation_id``, in order, once they have
        ended, and what the provider charged for them.

        Written whatever the outcome, so that a call the provider may have billed
        is on record even when the user was charged nothing.
        """
        values = {
            "generation_id": generation_id,
            "attempts": [dict(each) for each in attempts],
            "cost": provider_cost_microusd,
        }
        await self._database.write(lambda connection: connection.execute(_RECORD_ATTEMPTS, values))

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
        """Mark quotes past their expiry as expired and delete their references; returns how many."""
        now = self._clock()
        statement = (
            update(generations)
            .where(generations.c.status == GenerationStatus.QUOTED, generations.c.expires_at <= now)
            .values(status=GenerationStatus.EXPIRED, finished_at=now)
        )

        def work(connection: Connection) -> int:
            expired = connection.execute(statement).rowcount
            connection.execute(_PURGE_REFERENCES, {"now": now})
            return expired

        return await self._database.write(work)

    async def expire_lots(self) -> int:
        """Write the ``expire`` entries of every lot past its expiry that still has available
        credits, one transaction per account; returns how many lots expired.

        The sweep runs it; every write to an account does the same for that account.
        """
        now = self._clock()
        due = await self._database.read(
            lambda connection: list(connection.scalars(_ACCOUNTS_WITH_LOTS_DUE, {"now": now}))
        )
        expired = 0
        for account in due:
            expired += await self._database.write(partial(self._expire_account, account=account))
        return expired

    def _expire_account(self, connection: Connection, account: str) -> int:
        now = self._clock()
        locked = _locked_lots(connection, account)
        return 0 if locked is None else self._expire_due(connection, account, locked[1], now)

    async def read_state(self, key: str) -> str | None:
        """A value the bot remembered with ``write_state``, or None."""
        query = select(bot_state.c.value).where(bot_state.c.key == key)
        return await self._database.read(lambda connection: connection.scalar(query))

    async def claim_state(self, key: str, value: str) -> bool:
        """Remember ``value`` under ``key`` unless something is there already: True for the
        one caller, of any process, that wrote it (a thing to do once, such as an alert)."""
        now = self._clock()

        def work(connection: Connection) -> bool:
            claimed = connection.execute(
                _dialect_insert(connection, bot_state)
                .values(key=key, value=value, updated_at=now)
                .on_conflict_do_nothing(index_elements=["key"])
            )
            return claimed.rowcount == 1

        return await self._database.write(work)

    @asynccontextmanager
    async def exclusive(
        self, name: str, *, lease: timedelta, poll_seconds: float = 0.25
    ) -> AsyncIterator[None]:
        """Run the ``async with`` body in one holder at a time, across every process sharing
        the database; the others wait for it, looking again every ``poll_seconds``.

        The lock is a ``bot_state`` row naming its holder; it is freed on exit. A holder
        that died without freeing it (a crash, a kill) is taken over once the row is
        ``lease`` old by the database's clock, so every holder of ``name`` must give the
        same lease, longer than the body takes: past it, another may run the body too.
        """
        key = f"lock:{name}"
        holder = f"{self.owner}:{secrets.token_hex(8)}"
        # The holder may be another process, which no in-process event could announce.
        while not await self._database.write(partial(_claim_lock, key, holder, lease)):  # noqa: ASYNC110
            await asyncio.sleep(poll_seconds)
        try:
            yield
        finally:
            # Shielded: a body cancelled (a shutdown) still frees the lock for the next one.
            await asyncio.shield(self._database.write(partial(_free_lock, key, holder)))

    async def provider_spend(self, provider: str, since: datetime) -> int:
        """What ``provider`` has been committed to since ``since``, in millionths of a US dollar:
        what the generations settled since then cost, and for each one still running what it
        cost so far, or, before that is known, its images at the price quoted."""
        return await self._database.read(
            lambda connection: int(
                connection.scalar(_PROVIDER_SPEND, {"provider": provider, "since": since}) or 0
            )
        )

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

    # -- an account's own settings ------------------------------------------

    async def auto_confirm_under(self, account: str) -> int:
        """The price at or under which the account's quotes generate without a button (0: never)."""
        return await self._database.read(partial(_auto_confirm_under, account=account))

    async def quote_terms(self, account: str) -> QuoteTerms:
        """The account's price overrides and auto-confirm limit, in one read: what every quote
        needs before it is recorded."""

        def read(connection: Connection) -> QuoteTerms:
            return QuoteTerms(
                tuple(prices.overrides(connection, account)),
                _auto_confirm_under(connection, account),
            )

        return await self._database.read(read)

    async def set_auto_confirm_under(self, account: str, credits: int) -> None:
        if credits < 0:
            raise InvalidAmount(credits)
        now = self._clock()

        def work(connection: Connection) -> None:
            connection.execute(
                _dialect_insert(connection, account_settings)
                .values(account_id=account, auto_confirm_under=credits, updated_at=now)
                .on_conflict_do_update(
                    index_elements=["account_id"],
                    set_={"auto_confirm_under": credits, "updated_at": now},
                )
            )

        await self._database.write(work)

    # -- price overrides (``ledger.prices``) ----------------------------------

    async def set_price_override(
        self,
        account: str,
        *,
        model_id: str | None,
        credits_per_image: int | None = None,
        percent_off: int | None = None,
        until: datetime | None = None,
        actor: str,
        reason: str,
    ) -> PriceOverride:
        """Give ``account`` its own price, replacing its rule of the same scope (the model, or
        every model): a fixed ``credits_per_image`` for ``model_id``, or ``percent_off`` every
        model (``model_id`` None)."""
        return await self._database.write(
            partial(
                prices.set_override,
                account=account,
                model_id=model_id,
                credits_per_image=credits_per_image,
                percent_off=percent_off,
                until=until,
                actor=actor,
                reason=reason[:_REASON_LENGTH],
                now=self._clock(),
            )
        )

    async def price_overrides(self, account: str | None = None) -> list[PriceOverride]:
        """``account``'s price overrides, or everyone's; expired ones included."""
        return await self._database.read(partial(prices.overrides, account=account))

    async def clear_price_overrides(self, account: str, model_id: str | None = None) -> int:
        """Remove ``account``'s override for ``model_id``, or all of them; how many there were."""
        return await self._database.write(
            partial(prices.clear_overrides, account=account, model_id=model_id)
        )

    async def find_accounts(self, text: str = "", *, limit: int = 50) -> list[Balance]:
        """Accounts whose id contains ``text``, most recently active first, with their balances
        (without lots); every account when ``text`` is empty."""
        return await self._database.read(
            partial(account_search.find, text=text.strip(), limit=limit, now=self._clock())
        )

    async def running_by_provider(self) -> dict[str, int]:
        """Generations running now, in every process, by provider (``ix_generations_status``)."""
        query = (
            select(generations.c.provider, func.count())
            .where(generations.c.status == GenerationStatus.RUNNING)
            .group_by(generations.c.provider)
        )
        return await self._database.read(
            lambda connection: {provider: count for provider, count in connection.execute(query)}
        )

    # -- the admin dashboard's logins (``ledger.dashboard_sessions``) ----------

    async def new_dashboard_link(self, account: str, lifetime: timedelta) -> str:
        """A one-time login link's token for ``account``, valid for ``lifetime``."""
        return await self._database.write(
            partial(
                dashboard_sessions.new_token,
                kind=dashboard_sessions.LINK,
                account=account,
                lifetime=lifetime,
                now=self._clock(),
            )
        )

    async def dashboard_link(self, token: str) -> DashboardSession | None:
        """Whom an unused, unexpired login link is for; None otherwise. Uses nothing up."""
        return await self._database.read(
            partial(
                dashboard_sessions.valid,
                token=token,
                kind=dashboard_sessions.LINK,
                now=self._clock(),
            )
        )

    async def exchange_dashboard_link(
        self, token: str, session_lifetime: timedelta
    ) -> tuple[str, DashboardSession] | None:
        """Use a login link up for a session: its token and account; None for a link that is
        unknown, used or expired."""
        return await self._database.write(
            partial(
                dashboard_sessions.exchange_link,
                token=token,
                session_lifetime=session_lifetime,
                now=self._clock(),
            )
        )

    async def dashboard_session(self, token: str) -> DashboardSession | None:
        """The account of a session that has neither expired nor logged out; None otherwise."""
        return await self._database.read(
            partial(
                dashboard_sessions.valid,
                token=token,
                kind=dashboard_sessions.SESSION,
                now=self._clock(),
            )
        )

    async def end_dashboard_session(self, token: str) -> bool:
        """Log a session out; False if it had ended already."""
        return await self._database.write(
            partial(dashboard_sessions.end_session, token=token, now=self._clock())
        )

    # -- purchases ------------------------------------------------------------

    async def open_purchase(self, new: NewPurchase) -> Purchase:
        """Record a pack being bought, opening the buyer's account if new; one whose id is
        recorded already is answered as it is."""

        def work(connection: Connection) -> Purchase:
            self._insert_account(connection, new.account_id)
            return purchases.open_purchase(connection, new, self._clock())

        return await self._database.write(work)

    async def set_purchase_external_id(self, purchase_id: str, external_id: str) -> Purchase:
        """Name the purchase's Checkout Session (or entitlement), once it exists."""
        return await self._database.write(
            lambda connection: purchases.change(
                connection, purchase_id, self._clock(), external_id=external_id
            )
        )

    async def purchase(self, purchase_id: str) -> Purchase | None:
        return await self._database.read(lambda connection: purchases.find(connection, purchase_id))

    async def purchase_by_external_id(self, source: str, external_id: str) -> Purchase | None:
        return await self._database.read(
            lambda connection: purchases.find_by(connection, source=source, external_id=external_id)
        )

    async def purchase_by_payment(self, payment_reference: str) -> Purchase | None:
        """The purchase a refund or dispute names by its payment (a Stripe PaymentIntent)."""
        return await self._database.read(
            lambda connection: purchases.find_by(connection, payment_reference=payment_reference)
        )

    async def purchases(
        self, account: str | None = None, *, limit: int = 100, reversed_only: bool = False
    ) -> list[Purchase]:
        """Newest first: ``account``'s purchases, or everyone's; with ``reversed_only``, only
        those refunded, disputed or with credits taken back."""
        return await self._database.read(
            lambda connection: purchases.listed(connection, account, limit, reversed_only)
        )

    async def record_payment_event(self, event: PaymentEvent) -> bool:
        """Remember an event that concerns no purchase of ours; False if seen before."""
        return await self._database.write(
            lambda connection: purchases.record_event(connection, event, None, self._clock())
        )

    async def fulfil_purchase(
        self, purchase_id: str, event: PaymentEvent, *, payment_reference: str | None = None
    ) -> PurchaseChange:
        """The purchase is paid: grant its credits as a ``paid`` lot, once per purchase however
        many events say so, in whatever order; a refund or dispute recorded before it is then
        taken back at once."""

        def work(connection: Connection) -> PurchaseChange:
            now = self._clock()
            bought = self._locked_purchase(connection, purchase_id)
            if not purchases.record_event(connection, event, purchase_id, now):
                return PurchaseChange(bought, repeated=True)
            if bought.status in (PurchaseStatus.PAID, PurchaseStatus.REFUNDED):
                return PurchaseChange(bought)
            line = rules.Line(
                EntryKind.GRANT,
                bought.credits,
                bought.credits,
                0,
                bought.source,
                f"bought the {bought.pack} pack",
                purchases.grant_key(bought.id),
            )
            self._grant(connection, bought.account_id, line, LotKind.PAID, None)
            paid = purchases.change(
                connection,
                purchase_id,
                now,
                status=PurchaseStatus.PAID,
                paid_at=now,
                payment_reference=bought.payment_reference or payment_reference,
            )
            change = self._match_reversals(connection, paid, event)
            return replace(change, granted=bought.credits)

        return await self._idempotent_write(work)

    async def close_purchase(
        self, purchase_id: str, event: PaymentEvent, status: PurchaseStatus
    ) -> PurchaseChange:
        """An open purchase that will never be paid: ``failed`` or ``expired``; one already paid
        is left as it is."""

        def work(connection: Connection) -> PurchaseChange:
            now = self._clock()
            bought = self._locked_purchase(connection, purchase_id)
            if not purchases.record_event(connection, event, purchase_id, now):
                return PurchaseChange(bought, repeated=True)
            if bought.status != PurchaseStatus.OPEN:
                return PurchaseChange(bought)
            return PurchaseChange(purchases.change(connection, purchase_id, now, status=status))

        return await self._idempotent_write(work)

    async def reverse_purchase(
        self,
        purchase_id: str,
        event: PaymentEvent,
        *,
        amount_refunded: int | None = None,
        disputed: bool | None = None,
        payment_reference: str | None = None,
    ) -> PurchaseChange:
        """A refund (``amount_refunded``: the total refunded so far) or a dispute opened or
        closed in the buyer's favour (``disputed``): the purchase's credits are taken back, or
        given back, to match (``rules.purchase_taken_back``). Recorded on a purchase not yet
        paid, it takes effect when it is."""

        def work(connection: Connection) -> PurchaseChange:
            now = self._clock()
            bought = self._locked_purchase(connection, purchase_id)
            if not purchases.record_event(connection, event, purchase_id, now):
                return PurchaseChange(bought, repeated=True)
            values: dict[str, Any] = {}
            if amount_refunded is not None:
                values["amount_refunded"] = max(bought.amount_refunded, amount_refunded)
            if disputed is not None:
                values["disputed"] = int(disputed)
            if payment_reference is not None and bought.payment_reference is None:
                values["payment_reference"] = payment_reference
            changed = purchases.change(connection, purchase_id, now, **values)
            return self._match_reversals(connection, changed, event)

        return await self._idempotent_write(work)

    def _locked_purchase(self, connection: Connection, purchase_id: str) -> Purchase:
        found = purchases.find(connection, purchase_id, lock=True)
        if found is None:
            raise PurchaseNotFound(purchase_id)
        return found

    def _match_reversals(
        self, connection: Connection, bought: Purchase, event: PaymentEvent
    ) -> PurchaseChange:
        """Take back or give back the paid purchase's credits so that what is taken back
        matches its refunds and disputes, keyed by ``event``."""
        if bought.status not in (PurchaseStatus.PAID, PurchaseStatus.REFUNDED):
            return PurchaseChange(bought)
        now = self._clock()
        target = rules.purchase_taken_back(
            bought.credits, bought.amount, bought.amount_refunded, bought.disputed
        )
        more = target - bought.credits_taken_back
        reason = f"{event.type} for the {bought.pack} pack"
        if more > 0:
            line = rules.Line(
                EntryKind.TAKE_BACK, more, 0, 0, bought.source, reason, f"take-back:{event.id}"
            )
            self._take_back(
                connection, bought.account_id, line, from_grant=purchases.grant_key(bought.id)
            )
        elif more < 0:
            line = rules.Line(
                EntryKind.GRANT, -more, -more, 0, bought.source, reason, f"give-back:{event.id}"
            )
            self._grant(connection, bought.account_id, line, LotKind.PAID, None)
        refunded = bought.amount_refunded >= bought.amount
        changed = purchases.change(
            connection,
            bought.id,
            now,
            credits_taken_back=target,
            status=PurchaseStatus.REFUNDED if refunded else PurchaseStatus.PAID,
        )
        return PurchaseChange(
            changed,
            taken_back=max(more, 0),
            given_back=max(-more, 0),
            balance=_balance(connection, bought.account_id, now),
        )

    async def statement(
        self, account: str, *, since: datetime | None = None
    ) -> list[StatementLine]:
        """Every change to the account's lots, oldest first, with the balance after each.

        The running balance counts from the account's first entry, so a statement
        ``since`` a date starts from the balance the account had then.
        """
        rows = await self._database.read(
            lambda connection: connection.execute(_STATEMENT, {"account": account}).all()
        )
        available = held = owed = 0
        lines = []
        for row in rows:
            available += row.available_delta
            held += row.held_delta
            owed += row.owed_delta
            if since is not None and row.created_at < since:
                continue
            lines.append(
                StatementLine(
                    entry_id=row.id,
                    at=row.created_at,
                    kind=EntryKind(row.kind),
                    lot_id=row.lot_id,
                    lot_kind=None if row.lot_kind is None else LotKind(row.lot_kind),
                    available_delta=row.available_delta,
                    held_delta=row.held_delta,
                    generation_id=row.generation_id,
                    model_id=row.model_id,
                    reason=row.reason,
                    available_after=available,
                    held_after=held,
                    owed_delta=row.owed_delta,
                    owed_after=owed,
                )
            )
        return lines

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
        """Recompute every balance from its entries and running holds, and every lot from its
        entries' parts; an empty list means all agree (``_disagreements``)."""
        found = await self._database.read(_disagreements)
        if found:
            # On PostgreSQL each statement of a read sees what had committed when it began:
            # a write landing between two of them is no disagreement, and is gone on a second look.
            found = await self._database.read(_disagreements)
        return found

    # -- helpers --------------------------------------------------------------

    async def _idempotent_write(self, work: Work[T]) -> T:
        """Run ``work``; if a concurrent twin inserted the same key first, replay it."""
        try:
            return await self._database.write(work)
        except IntegrityError:
            return await self._database.write(work)

    def _open_account(self, connection: Connection, account: str, starting_credits: int) -> Balance:
        """The account's balance, opened with ``starting_credits`` (a never-expiring ``promo``
        lot) if it is new; its row stays locked until the transaction ends (``_touch``), so the
        account's quotes take turns."""
        now = self._clock()
        existing = self._touch(connection, account, now)
        if existing is not None:
            return existing
        if not self._insert_account(connection, account):
            # Another process opened it after the read above; that one has committed by now.
            found = self._touch(connection, account, now)
            if found is None:
                raise AccountNotFound(account)
            return found
        # The new row is this transaction's until it commits: no lock to take.
        for line in rules.opening(account, starting_credits):
            self._grant_lot(connection, account, line, LotKind.PROMO, None, now)
        return _balance(connection, account, now)

    def _insert_account(self, connection: Connection, account: str) -> bool:
        """Open ``account`` with nothing (its lots and entries are the caller's); False if it exists."""
        now = self._clock()
        opened = connection.execute(
            _OPEN_ACCOUNT[connection.dialect.name],
            {"id": account, "available": 0, "held": 0, "created_at": now, "updated_at": now},
        )
        return opened.rowcount == 1

    def _touch(self, connection: Connection, account: str, now: datetime) -> Balance | None:
        """Lock the account's row, expire its lots that are due, and answer its balance with
        every lot that still has credits; None if there is no such account.

        Every change to an account's lots happens after this lock, so the lots read here
        stay as read until the transaction ends.
        """
        locked = _locked_lots(connection, account)
        if locked is None:
            return None
        (available, held, owed), lots = locked
        self._expire_due(connection, account, lots, now)
        return _balance_from(account, available, held, lots, now, owed)

    def _expire_due(
        self, connection: Connection, account: str, lots: Sequence[Lot], now: datetime
    ) -> int:
        """Write the ``expire`` entries of ``lots`` past their expiry; how many lots expired."""
        expiring = rules.expiry(lots, now)
        for line in expiring:
            self._apply(connection, account, line)
        return len(expiring)

    def _grant(
        self,
        connection: Connection,
        account: str,
        line: rules.Line,
        kind: LotKind,
        expires_at: datetime | None,
    ) -> None:
        """``line``'s credits in a new lot, opening the account if new; what it owes is paid
        from them first."""
        now = self._clock()
        self._insert_account(connection, account)
        touched = self._touch(connection, account, now)
        self._grant_lot(connection, account, line, kind, expires_at, now)
        if touched is not None and touched.owed:
            self._repay(connection, account, now, line.idempotency_key)

    def _take_back(
        self, connection: Connection, account: str, line: rules.Line, from_grant: str | None
    ) -> None:
        """``line``, a take-back, split by ``rules.taken_back``."""
        now = self._clock()
        balance = self._touch(connection, account, now)
        if balance is None:
            raise AccountNotFound(account)
        first_lot = None
        if from_grant is not None:
            first_lot = connection.scalar(_GRANT_LOT_ID, {"key": from_grant})
        self._apply(connection, account, rules.taken_back(line, balance.lots, now, first_lot))

    def _repay(self, connection: Connection, account: str, now: datetime, cause: str) -> None:
        """Pay what the account owes from what it can spend now (``rules.repayment``), keyed
        by ``cause``, the key of the entry that brought the credits in."""
        locked = _locked_lots(connection, account)
        if locked is None:
            return
        (_, _, owed), lots = locked
        line = rules.repayment(owed, lots, now, f"repay:{cause}")
        if line is not None:
            self._apply(connection, account, line)

    def _grant_lot(
        self,
        connection: Connection,
        account: str,
        line: rules.Line,
        kind: LotKind,
        expires_at: datetime | None,
        now: datetime,
    ) -> None:
        """A new lot holding ``line``'s grant, and the grant's entry."""
        lot_id = connection.execute(
            _NEW_LOT,
            {
                "account_id": account,
                "kind": kind,
                "granted": line.amount,
                "available": 0,
                "held": 0,
                "expires_at": expires_at,
                "created_at": now,
            },
        ).inserted_primary_key[0]
        self._apply(connection, account, replace(line, parts=(rules.Part(lot_id, line.amount, 0),)))

    def _apply(
        self,
        connection: Connection,
        account: str,
        line: rules.Line,
        generation_id: str | None = None,
    ) -> bool:
        """Change ``account``'s balance and lots by ``line`` and record it; False (nothing
        done) if a part of the balance would go below zero or the account does not exist.

        The lots are changed without a condition: the caller holds the account's lock and
        split the line over lots it read after it; their CHECK constraints still refuse a
        negative lot, failing the whole transaction.
        """
        changed = connection.execute(
            _CHANGE_BALANCE,
            {
                "account": account,
                "available_delta": line.available_delta,
                "held_delta": line.held_delta,
                "owed_delta": line.owed_delta,
                "now": self._clock(),
            },
        )
        if changed.rowcount != 1:
            return False
        entry_id = self._write_entry(connection, account, line, generation_id)
        if line.parts:
            connection.execute(
                _CHANGE_LOT,
                [
                    {
                        "lot": part.lot_id,
                        "available_delta": part.available_delta,
                        "held_delta": part.held_delta,
                    }
                    for part in line.parts
                ],
            )
            connection.execute(
                _NEW_PARTS,
                [
                    {
                        "entry_id": entry_id,
                        "lot_id": part.lot_id,
                        "available_delta": part.available_delta,
                        "held_delta": part.held_delta,
                    }
                    for part in line.parts
                ],
            )
        return True

    def _write_entry(
        self,
        connection: Connection,
        account: str,
        line: rules.Line,
        generation_id: str | None = None,
    ) -> int:
        """Record ``line``; its entry's id."""
        return connection.execute(
            _NEW_ENTRY,
            {
                "account_id": account,
                "kind": line.kind,
                "amount": line.amount,
                "available_delta": line.available_delta,
                "held_delta": line.held_delta,
                "owed_delta": line.owed_delta,
                "actor": line.actor,
                "reason": line.reason[:_REASON_LENGTH],
                "idempotency_key": line.idempotency_key,
                "generation_id": generation_id,
                "created_at": self._clock(),
            },
        ).inserted_primary_key[0]

    def _quote_row(self, new: NewGeneration, references: int = 0) -> dict[str, Any]:
        return {
            "id": new.id,
            "account_id": new.account_id,
            "model_id": new.model_id,
            "provider": new.provider,
            "provider_model": new.provider_model,
            "prompt": new.prompt,
            "options": {**new.options, REFERENCE_COUNT_OPTION: references, PRICE_OPTION: new.price},
            "channel": new.channel,
            "images_requested": new.images_requested,
            "images_delivered": 0,
            "credits_per_image": new.credits_per_image,
            "credits_held": 0,
            "credits_charged": 0,
            "cost_per_image_microusd": new.cost_per_image_microusd,
            "status": GenerationStatus.QUOTED,
            "created_at": self._clock().astimezone(UTC),
            "expires_at": new.expires_at.astimezone(UTC),
        }


def _auto_confirm_under(connection: Connection, account: str) -> int:
    return int(connection.scalar(_AUTO_CONFIRM_UNDER, {"account": account}) or 0)


def _require_positive(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidAmount(amount)


def _dialect_insert(connection: Connection, table: Any) -> Any:
    """An INSERT with the dialect's ``ON CONFLICT`` clauses, which SQLAlchemy keeps per dialect."""
    return _DIALECT_INSERTS[connection.dialect.name](table)


_DIALECT_INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}


def _claim_lock(key: str, holder: str, lease: timedelta, connection: Connection) -> bool:
    """Make ``holder`` the holder of lock ``key`` if it is free or its holder's lease ran out.

    One conditional upsert: two processes claiming at once are serialized on the
    row, and the second finds the first's claim fresh.
    """
    database_now = connection.scalar(select(_database_now(connection)))
    connection.execute(
        _dialect_insert(connection, bot_state)
        .values(key=key, value=holder, updated_at=database_now)
        .on_conflict_do_update(
            index_elements=["key"],
            set_={"value": holder, "updated_at": database_now},
            where=bot_state.c.updated_at <= database_now - lease,
        )
    )
    held_by = connection.scalar(select(bot_state.c.value).where(bot_state.c.key == key))
    return bool(held_by == holder)


def _free_lock(key: str, holder: str, connection: Connection) -> None:
    # Only its own claim: past the lease another holder may have taken it over.
    connection.execute(delete(bot_state).where(bot_state.c.key == key, bot_state.c.value == holder))


def _replayed(connection: Connection, account: str, line: rules.Line) -> bool:
    """Whether ``line``'s key was used already, for the same change; a different one is refused."""
    row = connection.execute(_ENTRY_BY_KEY, {"key": line.idempotency_key}).first()
    if row is None:
        return False
    if tuple(row) != (account, line.kind, line.amount):
        raise IdempotencyConflict(line.idempotency_key)
    return True


def _find_balance(connection: Connection, account: str, now: datetime) -> Balance | None:
    """The account's balance at ``now``, in one statement (a read on PostgreSQL is one)."""
    rows = connection.execute(_BALANCE_AND_LOTS, {"account": account}).all()
    if not rows:
        return None
    lots = [
        Lot(row.lot_id, LotKind(row.kind), row.lot_available, row.lot_held, row.expires_at)
        for row in rows
        if row.lot_id is not None
    ]
    return _balance_from(account, rows[0].available, rows[0].held, lots, now, rows[0].owed)


def _locked_lots(
    connection: Connection, account: str
) -> tuple[tuple[int, int, int], list[Lot]] | None:
    """The account's stored totals (available, held, owed), its row locked until the
    transaction ends (SQLite's writer lock covers it), and its lots that still have credits,
    read after the lock."""
    row = connection.execute(_LOCKED_BALANCE, {"account": account}).first()
    if row is None:
        return None
    lots = [
        Lot(lot.id, LotKind(lot.kind), lot.available, lot.held, lot.expires_at)
        for lot in connection.execute(_LIVE_LOTS, {"account": account})
    ]
    return (row.available, row.held, row.owed), lots


def _balance_from(
    account: str, available: int, held: int, lots: Sequence[Lot], now: datetime, owed: int = 0
) -> Balance:
    """The balance the stored totals and lots make at ``now``: an expired lot's credits count
    for nothing, whether or not its entry is written."""
    expired = sum(lot.available for lot in lots if rules.lot_expired(lot, now))
    shown = tuple(
        replace(lot, available=0) if rules.lot_expired(lot, now) else lot
        for lot in rules.in_draw_order(lots)
    )
    return Balance(
        account=account,
        available=available - expired,
        held=held,
        lots=tuple(lot for lot in shown if lot.available or lot.held),
        owed=owed,
    )


def _check_granted_lot(
    connection: Connection, key: str, kind: LotKind, expires_at: datetime | None
) -> None:
    """Refuse a replayed grant that asks for another kind of lot or another expiry."""
    row = connection.execute(_GRANTED_LOT, {"key": key}).first()
    if row is None or (row.kind, row.expires_at) != (kind, expires_at):
        raise IdempotencyConflict(key)


def _over_limit(
    connection: Connection, account: str, adding: int, limits: QuoteLimits, now: datetime
) -> LedgerError | None:
    """Why a quote of ``account`` with ``adding`` bytes of references passes ``limits``, if it does.

    The caller holds the account's row lock, so the account's own quotes are
    counted one after another.
    """
    recent = connection.execute(
        _RECENT_QUOTES, {"account": account, "since": now - _QUOTE_WINDOW}
    ).scalar_one()
    if recent >= limits.quotes_per_minute:
        return TooManyQuotes(account, limits.quotes_per_minute)
    if not adding:
        return None
    if connection.dialect.name == "postgresql":
        # Every account's references add to the total: quotes with references take turns
        # here, and the statement below reads what the one before committed (read committed
        # takes a snapshot per statement). On SQLite the one writer already takes turns.
        connection.execute(_REFERENCE_STORAGE_LOCK)
    pending = connection.execute(_PENDING_REFERENCE_BYTES, {"account": account, "now": now}).one()
    if pending.account + adding > limits.reference_bytes_per_account:
        return AccountReferencesFull(
            account, int(pending.account), adding, limits.reference_bytes_per_account
        )
    if pending.total + adding > limits.reference_bytes_total:
        return ReferenceStorageFull(int(pending.total), adding, limits.reference_bytes_total)
    return None


def _disagreements(connection: Connection) -> list[Discrepancy]:
    """The accounts whose stored figures disagree with their entries.

    Per account: ``available``, ``held`` and ``owed`` are the sums of its entries' deltas, and ``held``
    what its running generations hold. Per lot: ``available`` and ``held`` are the sums of
    its parts, ``granted`` its grant's part. The account's totals are the sums of its lots',
    and every entry's deltas the sums of its parts, each on a lot of the entry's account.
    """
    entry_sums = (
        select(
            ledger_entries.c.account_id,
            func.coalesce(func.sum(ledger_entries.c.available_delta), 0).label("available"),
            func.coalesce(func.sum(ledger_entries.c.held_delta), 0).label("held"),
            func.coalesce(func.sum(ledger_entries.c.owed_delta), 0).label("owed"),
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
            accounts.c.owed,
            func.coalesce(entry_sums.c.available, 0).label("entries_available"),
            func.coalesce(entry_sums.c.held, 0).label("entries_held"),
            func.coalesce(entry_sums.c.owed, 0).label("entries_owed"),
            func.coalesce(running_sums.c.held, 0).label("running_holds"),
        )
        .select_from(accounts)
        .outerjoin(entry_sums, entry_sums.c.account_id == accounts.c.id)
        .outerjoin(running_sums, running_sums.c.account_id == accounts.c.id)
        .order_by(accounts.c.id)
    )
    rows = connection.execute(query).all()
    problems: dict[str, list[str]] = {row.id: [] for row in rows}
    lot_totals = {row.id: [0, 0] for row in rows}
    for lot in connection.execute(_LOT_SUMS):
        totals = lot_totals.setdefault(lot.account_id, [0, 0])
        totals[0] += lot.available
        totals[1] += lot.held
        stored = (lot.granted, lot.available, lot.held)
        summed = (int(lot.parts_granted), int(lot.parts_available), int(lot.parts_held))
        if stored != summed:
            problems.setdefault(lot.account_id, []).append(
                f"lot {lot.id}: stored {stored[0]} granted, {stored[1]} available, {stored[2]}"
                f" held; its parts add up to {summed[0]} / {summed[1]} / {summed[2]}"
            )
    for row in rows:
        if lot_totals[row.id] != [row.available, row.held]:
            problems[row.id].append(
                f"its lots add up to {lot_totals[row.id][0]} available / {lot_totals[row.id][1]} held"
            )
    for entry in connection.execute(_ENTRIES_NOT_SPLIT):
        problems.setdefault(entry.account_id, []).append(
            f"entry {entry.id}: its parts add up to {int(entry.parts_available)} available /"
            f" {int(entry.parts_held)} held, not {entry.available_delta} / {entry.held_delta},"
            f" or lie on another account's lot"
        )
    return [
        Discrepancy(
            account=row.id,
            stored_available=row.available,
            stored_held=row.held,
            entries_available=int(row.entries_available),
            entries_held=int(row.entries_held),
            running_holds=int(row.running_holds),
            lot_problems=tuple(problems[row.id]),
            stored_owed=row.owed,
            entries_owed=int(row.entries_owed),
        )
        for row in rows
        if row.available != int(row.entries_available)
        or row.owed != int(row.entries_owed)
        or not row.held == int(row.entries_held) == int(row.running_holds)
        or problems[row.id]
    ]


def _reference_rows(
    new: NewGeneration, references: Sequence[QuoteReference]
) -> list[dict[str, Any]]:
    """The rows that store a quote's references; called off the event loop, as it hashes megabytes."""
    return [
        {
            "generation_id": new.id,
            "position": position,
            "account_id": new.account_id,
            "media_type": reference.media_type,
            "sha256": hashlib.sha256(reference.data).hexdigest(),
            "byte_size": len(reference.data),
            "data": reference.data,
            "expires_at": new.expires_at.astimezone(UTC),
        }
        for position, reference in enumerate(references)
    ]


def _verified_references(
    generation_id: str, rows: Sequence[Row[Any]]
) -> tuple[QuoteReference, ...]:
    """The stored references, each checked against its digest; called off the event loop."""
    for row in rows:
        if hashlib.sha256(row.data).hexdigest() != row.sha256:
            raise ReferenceCorrupt(generation_id, row.position)
    return tuple(QuoteReference(row.media_type, bytes(row.data)) for row in rows)


def _forget_references(connection: Connection, generation: Generation) -> None:
    """Delete the references of a generation that has just settled, or a quote that has ended."""
    if generation.reference_count:
        connection.execute(_DELETE_REFERENCES, {"generation_id": generation.id})


def _balance(connection: Connection, account: str, now: datetime) -> Balance:
    found = _find_balance(connection, account, now)
    if found is None:
        raise AccountNotFound(account)
    return found


def _generation(connection: Connection, generation_id: str) -> Generation:
    row = connection.execute(_GENERATION, {"generation_id": generation_id}).first()
    if row is None:
        raise GenerationNotFound(generation_id)
    return _generation_from(row)


def _locked_generation(connection: Connection, generation_id: str) -> tuple[Generation, datetime]:
    """The generation, locked until the transaction ends, and the database's clock."""
    row = connection.execute(
        _LOCKED_GENERATION[connection.dialect.name], {"generation_id": generation_id}
    ).first()
    if row is None:
        raise GenerationNotFound(generation_id)
    return _generation_from(row), row.database_now


def _close_quote(
    connection: Connection, quote: Generation, status: GenerationStatus, now: datetime
) -> None:
    """A quote's end without a hold: cancelled or expired."""
    connection.execute(
        _CLOSE_QUOTE, {"generation_id": quote.id, "status": status, "finished_at": now}
    )
    _forget_references(connection, quote)


_LOT_CHANGES = (
    select(
        ledger_entries.c.id,
        ledger_entries.c.created_at,
        ledger_entries.c.kind,
        ledger_entries.c.reason,
        ledger_entries.c.generation_id,
        entry_parts.c.lot_id,
        entry_parts.c.available_delta,
        entry_parts.c.held_delta,
        literal(0, BigInteger).label("owed_delta"),
        credit_lots.c.kind.label("lot_kind"),
        generations.c.model_id,
    )
    .select_from(
        ledger_entries.join(entry_parts, entry_parts.c.entry_id == ledger_entries.c.id)
        .join(credit_lots, credit_lots.c.id == entry_parts.c.lot_id)
        .outerjoin(generations, generations.c.id == ledger_entries.c.generation_id)
    )
    .where(ledger_entries.c.account_id == bindparam("account"))
)
_OWED_CHANGES = (
    select(
        ledger_entries.c.id,
        ledger_entries.c.created_at,
        ledger_entries.c.kind,
        ledger_entries.c.reason,
        ledger_entries.c.generation_id,
        null().label("lot_id"),
        literal(0, BigInteger).label("available_delta"),
        literal(0, BigInteger).label("held_delta"),
        ledger_entries.c.owed_delta,
        null().label("lot_kind"),
        null().label("model_id"),
    )
    .where(ledger_entries.c.account_id == bindparam("account"))
    .where(ledger_entries.c.owed_delta != 0)
)
_CHANGES = union_all(_LOT_CHANGES, _OWED_CHANGES).subquery()
_STATEMENT = select(_CHANGES).order_by(
    _CHANGES.c.id, _CHANGES.c.lot_id.is_(None), _CHANGES.c.lot_id
)
"""Each entry's change to each lot, then to what is owed, in the order they were made."""


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


# -- the statements of every generation's path, built once ------------------------
# SQLAlchemy caches a statement's compiled SQL under a key it computes from the
# statement object; for a statement built afresh on every call, computing that key
# cost more than running the statement (bench.ledger). Each is built here once, per
# dialect where the dialects differ, and every call only binds values.


def _datetime(name: str) -> Any:
    return bindparam(name, type_=UTCDateTime)


# FOR NO KEY UPDATE: serialises the account's writes without holding up the foreign-key
# checks of entries, lots and generations written for it meanwhile.
_LOCKED_BALANCE = (
    select(accounts.c.available, accounts.c.held, accounts.c.owed)
    .where(accounts.c.id == bindparam("account"))
    .with_for_update(key_share=True)
)

_LOT_HAS_CREDITS = or_(credit_lots.c.available > 0, credit_lots.c.held > 0)

_BALANCE_AND_LOTS = (
    select(
        accounts.c.available,
        accounts.c.held,
        accounts.c.owed,
        credit_lots.c.id.label("lot_id"),
        credit_lots.c.kind,
        credit_lots.c.available.label("lot_available"),
        credit_lots.c.held.label("lot_held"),
        credit_lots.c.expires_at,
    )
    .select_from(
        accounts.outerjoin(
            credit_lots, and_(credit_lots.c.account_id == accounts.c.id, _LOT_HAS_CREDITS)
        )
    )
    .where(accounts.c.id == bindparam("account"))
)
"""The account's totals, once per lot that still has credits (once with no lot if none)."""

_LIVE_LOTS = select(
    credit_lots.c.id,
    credit_lots.c.kind,
    credit_lots.c.available,
    credit_lots.c.held,
    credit_lots.c.expires_at,
).where(credit_lots.c.account_id == bindparam("account"), _LOT_HAS_CREDITS)

_NEW_LOT = insert(credit_lots)

_CHANGE_LOT = (
    update(credit_lots)
    .where(credit_lots.c.id == bindparam("lot"))
    .values(
        available=credit_lots.c.available + bindparam("available_delta"),
        held=credit_lots.c.held + bindparam("held_delta"),
    )
)

_NEW_PARTS = insert(entry_parts)

_HOLD_PARTS = (
    select(
        entry_parts.c.lot_id,
        entry_parts.c.held_delta.label("held"),
        credit_lots.c.kind,
        credit_lots.c.expires_at,
    )
    .select_from(
        ledger_entries.join(entry_parts, entry_parts.c.entry_id == ledger_entries.c.id).join(
            credit_lots, credit_lots.c.id == entry_parts.c.lot_id
        )
    )
    .where(ledger_entries.c.idempotency_key == bindparam("key"))
)
"""The lots a hold drew from (by its entry's key), how much from each, and their kind and expiry."""

_GRANTED_LOT = (
    select(credit_lots.c.kind, credit_lots.c.expires_at)
    .select_from(
        ledger_entries.join(entry_parts, entry_parts.c.entry_id == ledger_entries.c.id).join(
            credit_lots, credit_lots.c.id == entry_parts.c.lot_id
        )
    )
    .where(ledger_entries.c.idempotency_key == bindparam("key"))
)

_PROVIDER_SPEND = select(
    func.coalesce(
        func.sum(
            case(
                (
                    generations.c.status == GenerationStatus.RUNNING,
                    func.coalesce(
                        generations.c.provider_cost_microusd,
                        generations.c.images_requested * generations.c.cost_per_image_microusd,
                    ),
                ),
                # A quote that was never confirmed has no cost, and costs nothing.
                else_=generations.c.provider_cost_microusd,
            )
        ),
        0,
    )
).where(
    generations.c.provider == bindparam("provider"),
    or_(
        generations.c.finished_at >= _datetime("since"),
        generations.c.status == GenerationStatus.RUNNING,
    ),
)
"""A provider's committed spend since a moment (``Ledger.provider_spend``); the running
generations are few, and the settled ones are found by ``ix_generations_provider_finished_at``."""

_AUTO_CONFIRM_UNDER = select(account_settings.c.auto_confirm_under).where(
    account_settings.c.account_id == bindparam("account")
)

_GRANT_LOT_ID = (
    select(entry_parts.c.lot_id)
    .join_from(ledger_entries, entry_parts, entry_parts.c.entry_id == ledger_entries.c.id)
    .where(
        ledger_entries.c.idempotency_key == bindparam("key"),
        ledger_entries.c.kind == EntryKind.GRANT,
    )
)
"""The lot a grant made, by the grant's key."""

_ACCOUNTS_WITH_LOTS_DUE = (
    select(credit_lots.c.account_id)
    .where(credit_lots.c.expires_at <= _datetime("now"), credit_lots.c.available > 0)
    .distinct()
)

_OPEN_ACCOUNT = {
    name: insert_for(accounts).on_conflict_do_nothing(index_elements=["id"])
    for name, insert_for in _DIALECT_INSERTS.items()
}
"""Executed with a new account's columns; does nothing if it exists already."""

_CHANGE_BALANCE = (
    update(accounts)
    .where(
        accounts.c.id == bindparam("account"),
        accounts.c.available + bindparam("available_delta") >= 0,
        accounts.c.held + bindparam("held_delta") >= 0,
        accounts.c.owed + bindparam("owed_delta") >= 0,
    )
    .values(
        available=accounts.c.available + bindparam("available_delta"),
        held=accounts.c.held + bindparam("held_delta"),
        owed=accounts.c.owed + bindparam("owed_delta"),
        updated_at=_datetime("now"),
    )
)
"""A line's change to a balance, only if no part of it would go below zero."""

_NEW_ENTRY = insert(ledger_entries)
_NEW_GENERATION = insert(generations)

_ENTRY_BY_KEY = select(
    ledger_entries.c.account_id, ledger_entries.c.kind, ledger_entries.c.amount
).where(ledger_entries.c.idempotency_key == bindparam("key"))

_GENERATION = select(generations).where(generations.c.id == bindparam("generation_id"))

_LOCKED_GENERATION = {
    name: select(generations, _database_clock(name).label("database_now"))
    .where(generations.c.id == bindparam("generation_id"))
    .with_for_update(of=generations)
    for name in _DIALECT_INSERTS
}
"""The generation, locked until the transaction ends (SQLite's writer lock covers it there),
and the database's clock."""

_START_GENERATION = (
    update(generations)
    .where(generations.c.id == bindparam("generation_id"))
    .values(
        status=GenerationStatus.RUNNING,
        credits_held=bindparam("credits_held"),
        confirmed_at=_datetime("confirmed_at"),
        owner=bindparam("owner"),
        lease_until=_datetime("lease_until"),
    )
    .returning(*generations.c)
)

_FINISH_GENERATION = (
    update(generations)
    .where(generations.c.id == bindparam("generation_id"))
    .values(
        status=bindparam("status"),
        images_delivered=bindparam("images_delivered"),
        credits_held=0,
        credits_charged=bindparam("credits_charged"),
        error_code=bindparam("error_code"),
        error_message=bindparam("error_message"),
        finished_at=_datetime("finished_at"),
    )
    .returning(*generations.c)
)

_CLOSE_QUOTE = (
    update(generations)
    .where(
        generations.c.id == bindparam("generation_id"),
        generations.c.status == GenerationStatus.QUOTED,
    )
    .values(status=bindparam("status"), finished_at=_datetime("finished_at"))
)
"""A quote's end without a hold: cancelled or expired."""

_RECORD_ATTEMPTS = (
    update(generations)
    .where(generations.c.id == bindparam("generation_id"))
    .values(
        provider_attempts=bindparam("attempts", type_=generations.c.provider_attempts.type),
        provider_cost_microusd=bindparam("cost"),
    )
)
_MARK_POSTED = (
    update(generations)
    .where(
        generations.c.id == bindparam("generation_id"),
        generations.c.status == GenerationStatus.RUNNING,
    )
    .values(images_posted=bindparam("images"), posted_link=bindparam("link"))
)

_NEW_REFERENCE = insert(quote_references)

_REFERENCES = (
    select(
        quote_references.c.position,
        quote_references.c.media_type,
        quote_references.c.sha256,
        quote_references.c.data,
    )
    .where(quote_references.c.generation_id == bindparam("generation_id"))
    .order_by(quote_references.c.position)
)

_DELETE_REFERENCES = delete(quote_references).where(
    quote_references.c.generation_id == bindparam("generation_id")
)

_PURGE_REFERENCES = delete(quote_references).where(
    quote_references.c.expires_at <= _datetime("now"),
    quote_references.c.generation_id.in_(
        select(generations.c.id).where(
            generations.c.status.not_in([GenerationStatus.QUOTED, GenerationStatus.RUNNING])
        )
    ),
)
"""References left by quotes that ended without settling: expired ones (the same transaction
marks them first). A running generation's stay, however old its quote: it still needs them."""

_RECENT_QUOTES = (
    select(func.count())
    .select_from(generations)
    .where(
        generations.c.account_id == bindparam("account"),
        generations.c.created_at > _datetime("since"),
    )
)

_PENDING_REFERENCE_BYTES = select(
    func.coalesce(
        func.sum(
            case(
                (
                    quote_references.c.account_id == bindparam("account"),
                    quote_references.c.byte_size,
                ),
                else_=0,
            )
        ),
        0,
    ).label("account"),
    func.coalesce(func.sum(quote_references.c.byte_size), 0).label("total"),
).where(
    quote_references.c.generation_id == generations.c.id,
    or_(
        generations.c.status == GenerationStatus.RUNNING,
        and_(
            generations.c.status == GenerationStatus.QUOTED,
            generations.c.expires_at > _datetime("now"),
        ),
    ),
)
"""The bytes of references whose quote is pending (quoted and unexpired, or running): the
account's and everyone's. An expired quote's wait for the sweep counts against no one."""

_REFERENCE_STORAGE_LOCK_KEY = 0x1A6E_5EF
_REFERENCE_STORAGE_LOCK = select(func.pg_advisory_xact_lock(_REFERENCE_STORAGE_LOCK_KEY))
"""PostgreSQL's transaction-scoped lock that quotes with references take turns on."""


_PART_SUMS = (
    select(
        entry_parts.c.lot_id,
        func.sum(entry_parts.c.available_delta).label("available"),
        func.sum(entry_parts.c.held_delta).label("held"),
        func.sum(
            case(
                (ledger_entries.c.kind == EntryKind.GRANT, entry_parts.c.available_delta),
                else_=0,
            )
        ).label("granted"),
    )
    .join_from(entry_parts, ledger_entries, ledger_entries.c.id == entry_parts.c.entry_id)
    .group_by(entry_parts.c.lot_id)
    .subquery()
)

_LOT_SUMS = select(
    credit_lots.c.id,
    credit_lots.c.account_id,
    credit_lots.c.granted,
    credit_lots.c.available,
    credit_lots.c.held,
    func.coalesce(_PART_SUMS.c.granted, 0).label("parts_granted"),
    func.coalesce(_PART_SUMS.c.available, 0).label("parts_available"),
    func.coalesce(_PART_SUMS.c.held, 0).label("parts_held"),
).outerjoin_from(credit_lots, _PART_SUMS, _PART_SUMS.c.lot_id == credit_lots.c.id)
"""Each lot's stored figures beside the sums of its entries' parts."""

_ENTRIES_NOT_SPLIT = (
    select(
        ledger_entries.c.id,
        ledger_entries.c.account_id,
        ledger_entries.c.available_delta,
        ledger_entries.c.held_delta,
        func.coalesce(func.sum(entry_parts.c.available_delta), 0).label("parts_available"),
        func.coalesce(func.sum(entry_parts.c.held_delta), 0).label("parts_held"),
    )
    .select_from(
        ledger_entries.outerjoin(
            entry_parts, entry_parts.c.entry_id == ledger_entries.c.id
        ).outerjoin(credit_lots, credit_lots.c.id == entry_parts.c.lot_id)
    )
    .group_by(
        ledger_entries.c.id,
        ledger_entries.c.account_id,
        ledger_entries.c.available_delta,
        ledger_entries.c.held_delta,
    )
    .having(
        or_(
            func.coalesce(func.sum(entry_parts.c.available_delta), 0)
            != ledger_entries.c.available_delta,
            func.coalesce(func.sum(entry_parts.c.held_delta), 0) != ledger_entries.c.held_delta,
            func.sum(case((credit_lots.c.account_id != ledger_entries.c.account_id, 1), else_=0))
            > 0,
        )
    )
)
"""Entries whose parts do not add up to their change, or lie on another account's lot."""
