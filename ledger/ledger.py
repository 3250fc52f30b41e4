"""The credit ledger: balances, holds, captures and releases, each one transaction.

Every balance change is a conditional ``UPDATE`` (never read-then-write in
Python) in the same transaction as its append-only entry. On SQLite writes run
under ``BEGIN IMMEDIATE`` and one in-process writer lock (SQLite skips its busy
handler when a reader upgrades to a writer); on PostgreSQL the generation row
is locked ``FOR UPDATE`` so concurrent confirms of one request serialise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, event, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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
from ledger.schema import accounts, bot_state, generations, ledger_entries
from ledger.values import (
    Balance,
    Discrepancy,
    Entry,
    EntryKind,
    Generation,
    GenerationStatus,
    NewGeneration,
)

Clock = Callable[[], datetime]

SQLITE_BUSY_TIMEOUT_MS = 10_000


def utc_now() -> datetime:
    return datetime.now(UTC)


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine set up for the ledger: WAL, busy timeout and immediate writes on SQLite."""
    sqlite = database_url.startswith("sqlite")
    engine = create_async_engine(
        database_url,
        pool_pre_ping=not sqlite,
        # Every ledger transaction ends in an explicit commit or rollback, so the
        # extra rollback on each checkin only costs SQLite a thread hop.
        pool_reset_on_return=None if sqlite else "rollback",
    )
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so "begin" below decides the BEGIN kind.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("ledger_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Ledger:
    """Accounts, entries and generations behind atomic operations."""

    def __init__(self, engine: AsyncEngine, clock: Clock = utc_now) -> None:
        self.engine = engine
        self._clock = clock
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock() if self._is_sqlite else None

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        async with self.engine.connect() as connection:
            await connection.execute(select(1))

    async def close(self) -> None:
        await self.engine.dispose()

    # -- transactions ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self.engine.connect() as connection:
            await connection.execution_options(ledger_write=True)
            async with connection.begin():
                yield connection

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as connection, connection.begin():
            yield connection

    # -- accounts -------------------------------------------------------------

    async def ensure_account(self, account: str, *, starting_credits: int = 0) -> Balance:
        """Create the account if it is new, granting ``starting_credits`` once."""
        with contextlib.suppress(AccountNotFound):
            return await self.balance(account)
        async with self._write() as connection:
            created = await self._insert_account(connection, account)
            if created and starting_credits > 0:
                await self._apply_grant(
                    connection,
                    account,
                    starting_credits,
                    actor="system",
                    reason="starting credits",
                    idempotency_key=f"starting-credits:{account}",
                )
            return await self._balance(connection, account)

    async def account_exists(self, account: str) -> bool:
        async with self._read() as connection:
            row = await connection.execute(select(accounts.c.id).where(accounts.c.id == account))
            return row.first() is not None

    async def balance(self, account: str) -> Balance:
        async with self._read() as connection:
            return await self._balance(connection, account)

    async def grant(
        self, account: str, amount: int, *, actor: str, reason: str, idempotency_key: str
    ) -> Balance:
        """Add ``amount`` available credits, creating the account if it is new."""
        _require_positive(amount)

        async def attempt() -> Balance:
            async with self._write() as connection:
                if await self._replayed(
                    connection, idempotency_key, account, EntryKind.GRANT, amount
                ):
                    return await self._balance(connection, account)
                await self._insert_account(connection, account)
                await self._apply_grant(connection, account, amount, actor, reason, idempotency_key)
                return await self._balance(connection, account)

        return await self._idempotent(attempt)

    async def revoke(
        self, account: str, amount: int, *, actor: str, reason: str, idempotency_key: str
    ) -> Balance:
        """Take back ``amount`` available credits (never held ones)."""
        _require_positive(amount)

        async def attempt() -> Balance:
            async with self._write() as connection:
                if await self._replayed(
                    connection, idempotency_key, account, EntryKind.ADJUSTMENT, amount
                ):
                    return await self._balance(connection, account)
                changed = await connection.execute(
                    update(accounts)
                    .where(accounts.c.id == account, accounts.c.available >= amount)
                    .values(available=accounts.c.available - amount, updated_at=self._clock())
                )
                if changed.rowcount != 1:
                    current = await self._balance(connection, account)
                    raise InsufficientFunds(account, amount, current.available)
                await self._insert_entry(
                    connection,
                    account,
                    EntryKind.ADJUSTMENT,
                    amount,
                    -amount,
                    0,
                    actor,
                    reason,
                    idempotency_key,
                )
                return await self._balance(connection, account)

        return await self._idempotent(attempt)

    # -- generations ----------------------------------------------------------

    async def create_quote(self, new: NewGeneration) -> Generation:
        """Record a quote; no credits move until ``hold``."""
        now = self._clock()
        async with self._write() as connection:
            await connection.execute(
                insert(generations).values(
                    id=new.id,
                    account_id=new.account_id,
                    model_id=new.model_id,
                    provider=new.provider,
                    provider_model=new.provider_model,
                    prompt=new.prompt,
                    options=new.options,
                    channel=new.channel,
                    images_requested=new.images_requested,
                    images_delivered=0,
                    credits_per_image=new.credits_per_image,
                    credits_held=0,
                    credits_charged=0,
                    status=GenerationStatus.QUOTED,
                    created_at=now,
                    expires_at=new.expires_at,
                )
            )
            return await self._generation(connection, new.id)

    async def generation(self, generation_id: str) -> Generation:
        async with self._read() as connection:
            return await self._generation(connection, generation_id)

    async def hold(self, generation_id: str, account: str) -> Generation:
        """Confirm a quote: move its price from available to held, exactly once."""
        now = self._clock()
        async with self._write() as connection:
            quote = await self._locked_generation(connection, generation_id)
            if quote.account_id != account:
                raise WrongAccount(generation_id, account)
            if quote.status != GenerationStatus.QUOTED:
                raise InvalidTransition(generation_id, quote.status, "confirm")
            if quote.expires_at <= now:
                await self._set_status(connection, generation_id, GenerationStatus.EXPIRED, now)
            else:
                price = quote.price
                changed = await connection.execute(
                    update(accounts)
                    .where(accounts.c.id == account, accounts.c.available >= price)
                    .values(
                        available=accounts.c.available - price,
                        held=accounts.c.held + price,
                        updated_at=now,
                    )
                )
                if changed.rowcount != 1:
                    current = await self._balance(connection, account)
                    raise InsufficientFunds(account, price, current.available)
                await self._insert_entry(
                    connection,
                    account,
                    EntryKind.HOLD,
                    price,
                    -price,
                    price,
                    actor=account,
                    reason=f"hold for generation {generation_id}",
                    idempotency_key=f"hold:{generation_id}",
                    generation_id=generation_id,
                )
                held = await connection.execute(
                    update(generations)
                    .where(generations.c.id == generation_id)
                    .values(
                        status=GenerationStatus.RUNNING,
                        credits_held=price,
                        confirmed_at=now,
                        heartbeat_at=now,
                    )
                    # Read back in the same statement: a second query costs a round trip.
                    .returning(*generations.c)
                )
                return _generation_from(held.one())
        # Reached only for an expired quote, after its status change is committed.
        raise QuoteExpired(generation_id)

    async def cancel(self, generation_id: str, account: str) -> Generation:
        """Withdraw a quote that was never confirmed."""
        now = self._clock()
        async with self._write() as connection:
            quote = await self._locked_generation(connection, generation_id)
            if quote.account_id != account:
                raise WrongAccount(generation_id, account)
            if quote.status != GenerationStatus.QUOTED:
                raise InvalidTransition(generation_id, quote.status, "cancel")
            await self._set_status(connection, generation_id, GenerationStatus.CANCELLED, now)
            return await self._generation(connection, generation_id)

    async def capture(self, generation_id: str, images_delivered: int) -> Generation:
        """Charge for the images delivered and release the rest of the hold.

        Settling twice returns the first settlement unchanged.
        """
        return await self._settle(generation_id, images_delivered, None, None)

    async def release(
        self, generation_id: str, *, error_code: str, error_message: str
    ) -> Generation:
        """Release the whole hold of a generation that delivered nothing."""
        return await self._settle(generation_id, 0, error_code, error_message)

    async def _settle(
        self,
        generation_id: str,
        images_delivered: int,
        error_code: str | None,
        error_message: str | None,
    ) -> Generation:
        now = self._clock()
        async with self._write() as connection:
            running = await self._locked_generation(connection, generation_id)
            if running.status.is_final and running.confirmed_at is not None:
                return running
            if running.status != GenerationStatus.RUNNING:
                raise InvalidTransition(generation_id, running.status, "settle")
            delivered = max(0, min(images_delivered, running.images_requested))
            charged = delivered * running.credits_per_image
            released = running.credits_held - charged
            changed = await connection.execute(
                update(accounts)
                .where(accounts.c.id == running.account_id, accounts.c.held >= running.credits_held)
                .values(
                    held=accounts.c.held - running.credits_held,
                    available=accounts.c.available + released,
                    updated_at=now,
                )
            )
            if changed.rowcount != 1:
                raise InvalidTransition(generation_id, "missing its hold", "settle")
            if charged:
                await self._insert_entry(
                    connection,
                    running.account_id,
                    EntryKind.CAPTURE,
                    charged,
                    0,
                    -charged,
                    actor="system",
                    reason=f"{delivered} of {running.images_requested} images delivered",
                    idempotency_key=f"capture:{generation_id}",
                    generation_id=generation_id,
                )
            if released:
                await self._insert_entry(
                    connection,
                    running.account_id,
                    EntryKind.RELEASE,
                    released,
                    released,
                    -released,
                    actor="system",
                    reason=error_code
                    or f"{released // running.credits_per_image} of {running.images_requested} images not delivered",
                    idempotency_key=f"release:{generation_id}",
                    generation_id=generation_id,
                )
            if delivered == running.images_requested:
                status = GenerationStatus.COMPLETED
            elif delivered:
                status = GenerationStatus.PARTIAL
            else:
                status = GenerationStatus.FAILED
            settled = await connection.execute(
                update(generations)
                .where(generations.c.id == generation_id)
                .values(
                    status=status,
                    images_delivered=delivered,
                    credits_held=0,
                    credits_charged=charged,
                    error_code=error_code,
                    error_message=error_message,
                    finished_at=now,
                )
                .returning(*generations.c)
            )
            return _generation_from(settled.one())

    async def heartbeat(self, generation_ids: Collection[str]) -> None:
        """Say these running generations are still being worked on by a live process."""
        if not generation_ids:
            return
        async with self._write() as connection:
            await connection.execute(
                update(generations)
                .where(
                    generations.c.id.in_(list(generation_ids)),
                    generations.c.status == GenerationStatus.RUNNING,
                )
                .values(heartbeat_at=self._clock())
            )

    async def mark_posted(self, generation_id: str, images: int) -> None:
        """Record that the platform took ``images`` images, before they are captured.

        If the process dies between the post and the capture, recovery charges
        for what the user received instead of giving it away.
        """
        async with self._write() as connection:
            await connection.execute(
                update(generations)
                .where(
                    generations.c.id == generation_id,
                    generations.c.status == GenerationStatus.RUNNING,
                )
                .values(images_posted=images)
            )

    async def release_stale_holds(
        self,
        silent_since: datetime,
        *,
        reason: str,
        posted_reason: str = "",
        keep: frozenset[str] = frozenset(),
    ) -> list[Generation]:
        """Settle every running generation not heard from since ``silent_since``, except ``keep``.

        One whose images were already posted is captured for them, recorded with
        ``posted_reason``; the rest are released, recorded with ``reason``.
        """
        last_heard = func.coalesce(generations.c.heartbeat_at, generations.c.confirmed_at)
        async with self._read() as connection:
            rows = await connection.execute(
                select(generations.c.id, generations.c.images_posted).where(
                    generations.c.status == GenerationStatus.RUNNING, last_heard < silent_since
                )
            )
            stale = [(row.id, row.images_posted) for row in rows if row.id not in keep]
        settled = []
        for generation_id, posted in stale:
            with contextlib.suppress(InvalidTransition):
                if posted:
                    settled.append(
                        await self._settle(generation_id, posted, None, posted_reason or None)
                    )
                else:
                    settled.append(
                        await self.release(
                            generation_id, error_code="interrupted", error_message=reason
                        )
                    )
        return settled

    async def expire_quotes(self) -> int:
        """Mark quotes past their expiry as expired; returns how many."""
        now = self._clock()
        async with self._write() as connection:
            result = await connection.execute(
                update(generations)
                .where(
                    generations.c.status == GenerationStatus.QUOTED, generations.c.expires_at <= now
                )
                .values(status=GenerationStatus.EXPIRED, finished_at=now)
            )
            return result.rowcount

    async def read_state(self, key: str) -> str | None:
        """A value the bot remembered with ``write_state``, or None."""
        async with self._read() as connection:
            return await connection.scalar(select(bot_state.c.value).where(bot_state.c.key == key))

    async def write_state(self, key: str, value: str) -> None:
        """Remember ``value`` under ``key``, replacing what was there."""
        dialect_insert = sqlite_insert if self._is_sqlite else postgresql_insert
        now = self._clock()
        statement = dialect_insert(bot_state).values(key=key, value=value, updated_at=now)
        async with self._write() as connection:
            await connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["key"], set_={"value": value, "updated_at": now}
                )
            )

    async def history(
        self, account: str, *, limit: int = 10, include_unconfirmed: bool = False
    ) -> list[Generation]:
        """The account's generations, newest first."""
        query = select(generations).where(generations.c.account_id == account)
        if not include_unconfirmed:
            query = query.where(generations.c.confirmed_at.is_not(None))
        query = query.order_by(generations.c.created_at.desc(), generations.c.id).limit(limit)
        async with self._read() as connection:
            return [_generation_from(row) for row in await connection.execute(query)]

    async def entries(self, account: str, *, limit: int = 50) -> list[Entry]:
        """The account's ledger entries, newest first."""
        async with self._read() as connection:
            rows = await connection.execute(
                select(ledger_entries)
                .where(ledger_entries.c.account_id == account)
                .order_by(ledger_entries.c.id.desc())
                .limit(limit)
            )
            return [Entry(**{**row._mapping, "kind": EntryKind(row.kind)}) for row in rows]

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
        async with self._read() as connection:
            rows = (await connection.execute(query)).all()
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

    async def _idempotent(self, attempt: Callable[[], Any]) -> Any:
        """Run ``attempt``; if a concurrent twin inserted the same key first, replay it."""
        try:
            return await attempt()
        except IntegrityError:
            return await attempt()

    async def _replayed(
        self,
        connection: AsyncConnection,
        key: str,
        account: str,
        kind: EntryKind,
        amount: int,
    ) -> bool:
        row = (
            await connection.execute(
                select(ledger_entries).where(ledger_entries.c.idempotency_key == key)
            )
        ).first()
        if row is None:
            return False
        if (row.account_id, row.kind, row.amount) != (account, kind, amount):
            raise IdempotencyConflict(key)
        return True

    async def _insert_account(self, connection: AsyncConnection, account: str) -> bool:
        now = self._clock()
        values = {"id": account, "available": 0, "held": 0, "created_at": now, "updated_at": now}
        dialect_insert = sqlite_insert if self._is_sqlite else postgresql_insert
        result = await connection.execute(
            dialect_insert(accounts).values(**values).on_conflict_do_nothing(index_elements=["id"])
        )
        return result.rowcount == 1

    async def _apply_grant(
        self,
        connection: AsyncConnection,
        account: str,
        amount: int,
        actor: str,
        reason: str,
        idempotency_key: str,
    ) -> None:
        await connection.execute(
            update(accounts)
            .where(accounts.c.id == account)
            .values(available=accounts.c.available + amount, updated_at=self._clock())
        )
        await self._insert_entry(
            connection, account, EntryKind.GRANT, amount, amount, 0, actor, reason, idempotency_key
        )

    async def _insert_entry(
        self,
        connection: AsyncConnection,
        account: str,
        kind: EntryKind,
        amount: int,
        available_delta: int,
        held_delta: int,
        actor: str,
        reason: str,
        idempotency_key: str,
        generation_id: str | None = None,
    ) -> None:
        await connection.execute(
            insert(ledger_entries).values(
                account_id=account,
                kind=kind,
                amount=amount,
                available_delta=available_delta,
                held_delta=held_delta,
                actor=actor,
                reason=reason[:500],
                idempotency_key=idempotency_key,
                generation_id=generation_id,
                created_at=self._clock(),
            )
        )

    async def _balance(self, connection: AsyncConnection, account: str) -> Balance:
        row = (
            await connection.execute(
                select(accounts.c.available, accounts.c.held).where(accounts.c.id == account)
            )
        ).first()
        if row is None:
            raise AccountNotFound(account)
        return Balance(account=account, available=row.available, held=row.held)

    async def _generation(self, connection: AsyncConnection, generation_id: str) -> Generation:
        row = (
            await connection.execute(select(generations).where(generations.c.id == generation_id))
        ).first()
        if row is None:
            raise GenerationNotFound(generation_id)
        return _generation_from(row)

    async def _locked_generation(
        self, connection: AsyncConnection, generation_id: str
    ) -> Generation:
        row = (
            await connection.execute(
                select(generations).where(generations.c.id == generation_id).with_for_update()
            )
        ).first()
        if row is None:
            raise GenerationNotFound(generation_id)
        return _generation_from(row)

    async def _set_status(
        self,
        connection: AsyncConnection,
        generation_id: str,
        status: GenerationStatus,
        now: datetime,
    ) -> None:
        await connection.execute(
            update(generations)
            .where(generations.c.id == generation_id)
            .values(status=status, finished_at=now)
        )


def _require_positive(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidAmount(amount)


def _generation_from(row: Row[Any]) -> Generation:
    values: Mapping[str, Any] = row._mapping
    return Generation(**{**values, "status": GenerationStatus(values["status"])})
