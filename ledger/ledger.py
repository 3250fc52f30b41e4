"""The credit ledger: balances, holds, captures and releases, each one transaction.

What a hold or a settlement changes is decided by ``ledger.rules``; this module
reads what the rules need and applies their answers. Every balance change is a
conditional ``UPDATE`` in the same transaction as its append-only entry. Each
operation is a plain function of a connection, run whole by
``ledger.transactions`` (on SQLite, writes one at a time under ``BEGIN
IMMEDIATE``, so nothing changes between the read and the write); on PostgreSQL
the hot path reads, then applies in one statement guarded on what it read, and
decides again if that changed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import rules, statements
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
from ledger.transactions import Work, create_engine, transactions_for
from ledger.values import (
    Balance,
    Discrepancy,
    Entry,
    EntryKind,
    Generation,
    GenerationStatus,
    NewGeneration,
)

__all__ = ["Clock", "Ledger", "create_engine", "utc_now"]

Clock = Callable[[], datetime]
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Ledger:
    """Accounts, entries and generations behind atomic operations.

    Owns ``engine`` from here on: ``close`` disposes of it.
    """

    def __init__(self, engine: AsyncEngine, clock: Clock = utc_now) -> None:
        self.engine = engine
        self._clock = clock
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._transactions = transactions_for(engine)

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        await self._transactions.read(lambda connection: connection.execute(select(1)).one())

    async def close(self) -> None:
        await self._transactions.close()

    # -- accounts -------------------------------------------------------------

    async def ensure_account(self, account: str, *, starting_credits: int = 0) -> Balance:
        """Create the account if it is new, granting ``starting_credits`` once."""
        existing = await self._read_balance(account)
        if existing is not None:
            return existing
        return await self._transactions.write(
            partial(self._open_account, account=account, starting_credits=starting_credits)
        )

    def _open_account(self, connection: Connection, account: str, starting_credits: int) -> Balance:
        existing = self._find_balance(connection, account)
        if existing is not None:
            return existing
        if not self._insert_account(connection, account, available=starting_credits):
            # Another process opened it after the read above.
            return self._balance(connection, account)
        for line in rules.opening(account, starting_credits):
            self._insert_line(connection, account, line)
        return Balance(account=account, available=starting_credits, held=0)

    async def account_exists(self, account: str) -> bool:
        return await self._read_balance(account) is not None

    async def balance(self, account: str) -> Balance:
        found = await self._read_balance(account)
        if found is None:
            raise AccountNotFound(account)
        return found

    async def _read_balance(self, account: str) -> Balance | None:
        if self._is_sqlite:
            return await self._transactions.read(partial(self._find_balance, account=account))
        # One statement, one round trip; a transaction around it would add two.
        row = await self._transactions.statement(statements.BALANCE, {"account": account})
        return _balance_from(account, row)

    async def grant(
        self, account: str, amount: int, *, actor: str, reason: str, idempotency_key: str
    ) -> Balance:
        """Add ``amount`` available credits, creating the account if it is new."""
        _require_positive(amount)

        def work(connection: Connection) -> Balance:
            if self._replayed(connection, idempotency_key, account, EntryKind.GRANT, amount):
                return self._balance(connection, account)
            self._insert_account(connection, account)
            self._apply_grant(connection, account, amount, actor, reason, idempotency_key)
            return self._balance(connection, account)

        return await self._idempotent_write(work)

    async def revoke(
        self, account: str, amount: int, *, actor: str, reason: str, idempotency_key: str
    ) -> Balance:
        """Take back ``amount`` available credits (never held ones)."""
        _require_positive(amount)

        def work(connection: Connection) -> Balance:
            if self._replayed(connection, idempotency_key, account, EntryKind.ADJUSTMENT, amount):
                return self._balance(connection, account)
            changed = statements.run(
                connection,
                statements.TAKE_CREDITS,
                {"account": account, "amount": amount, "now": self._clock()},
            )
            if changed.rowcount != 1:
                current = self._balance(connection, account)
                raise InsufficientFunds(account, amount, current.available)
            self._insert_line(
                connection,
                account,
                rules.Line(
                    EntryKind.ADJUSTMENT, amount, -amount, 0, actor, reason, idempotency_key
                ),
            )
            return self._balance(connection, account)

        return await self._idempotent_write(work)

    # -- generations ----------------------------------------------------------

    async def create_quote(self, new: NewGeneration) -> Generation:
        """Record a quote; no credits move until ``hold``."""
        return await self._transactions.write(partial(self._insert_quote, new=new))

    async def open_quote(
        self, new: NewGeneration, *, starting_credits: int = 0
    ) -> tuple[Balance, Generation]:
        """Open the quoting account if it is new (as ``ensure_account``) and record the quote.

        One transaction, where a user's first command would otherwise take
        three; on PostgreSQL one statement (``statements.OPEN_QUOTE_AT_ONCE``),
        since each statement there is a round trip on the event loop, and
        under a burst several quotes to a round trip (``Transactions.grouped``).
        Refused with ``InsufficientFunds``, recording no quote, when the
        available balance does not cover the price; the account stays opened.
        """
        stored = self._quote_row(new)
        if not self._is_sqlite:
            opening = rules.opening(new.account_id, starting_credits)
            at_once = await self._transactions.grouped(
                statements.OPEN_QUOTE_AT_ONCE[len(opening)],
                {
                    **stored,
                    **_line_values(opening),
                    "account": new.account_id,
                    "starting_credits": starting_credits,
                    "price": new.price,
                },
            )
            available, held, quotes_recorded = at_once
            if available is not None:
                balance = Balance(account=new.account_id, available=available, held=held)
                quoted = _quoted_generation(stored) if quotes_recorded else None
                return _quote_or_refusal(new, balance, quoted)

        def work(connection: Connection) -> tuple[Balance, Generation | None]:
            balance = self._open_account(connection, new.account_id, starting_credits)
            if balance.available < new.price:
                return balance, None
            statements.run(connection, statements.NEW_GENERATION, stored)
            return balance, _quoted_generation(stored)

        return _quote_or_refusal(new, *await self._transactions.write(work))

    def _quote_row(self, new: NewGeneration) -> dict[str, Any]:
        """The new quote's row: ``statements.QUOTED_COLUMNS``."""
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

    def _insert_quote(self, connection: Connection, new: NewGeneration) -> Generation:
        stored = self._quote_row(new)
        statements.run(connection, statements.NEW_GENERATION, stored)
        return _quoted_generation(stored)

    async def generation(self, generation_id: str) -> Generation:
        if self._is_sqlite:
            return await self._transactions.read(
                partial(self._generation, generation_id=generation_id)
            )
        row = await self._transactions.typed_statement(
            statements.GENERATION, {"generation_id": generation_id}
        )
        if row is None:
            raise GenerationNotFound(generation_id)
        return _generation_from(row)

    async def hold(self, generation_id: str, account: str) -> Generation:
        """Confirm a quote: move its price from available to held, exactly once (``rules.hold``)."""
        if not self._is_sqlite:
            return await self._hold_at_once(generation_id, account)
        held = await self._transactions.write(
            partial(self._hold, generation_id=generation_id, account=account)
        )
        if held is None:
            # The quote's change to expired is committed by now.
            raise QuoteExpired(generation_id)
        return held

    def _hold(self, connection: Connection, generation_id: str, account: str) -> Generation | None:
        now = self._clock()
        quote = self._locked_generation(connection, generation_id)
        balance = self._find_balance(connection, account)
        try:
            hold = rules.hold(quote, account, balance.available if balance else 0, now)
        except QuoteExpired:
            self._set_status(connection, generation_id, GenerationStatus.EXPIRED, now)
            return None
        # Read, decided and applied under the writer's lock: nothing changed in between.
        statements.run(connection, statements.HOLD_CREDITS, _hold_values(hold, now))
        self._insert_line(connection, account, hold.line, generation_id)
        # Reads the row back in the same statement: a second query costs a round trip.
        held = connection.execute(statements.START_GENERATION, _hold_values(hold, now))
        return _generation_from(held.one())

    async def _hold_at_once(self, generation_id: str, account: str) -> Generation:
        """``hold`` on PostgreSQL: read, decide, and apply in one guarded statement.

        Two round trips, none inside a transaction. If the quote or the balance
        changed after the read (a second click, another hold), the statement
        applies nothing and the rule decides again on what is there now.
        """
        for _ in range(_DECISIONS):
            now = self._clock()
            row = await self._transactions.typed_statement(
                statements.QUOTE_AND_BALANCE, {"generation_id": generation_id, "account": account}
            )
            if row is None:
                raise GenerationNotFound(generation_id)
            try:
                hold = rules.hold(_generation_from(row), account, row["available"] or 0, now)
            except QuoteExpired:
                await self._transactions.statement(
                    statements.CLOSE_QUOTE,
                    {
                        "generation_id": generation_id,
                        "new_status": GenerationStatus.EXPIRED,
                        "now": now,
                    },
                )
                raise
            held = await self._transactions.typed_statement(
                statements.HOLD_AT_ONCE,
                {**_hold_values(hold, now), **_line_values((hold.line,))},
            )
            if held is not None:
                return _generation_from(held)
        raise _changing(generation_id, "confirm")

    async def cancel(self, generation_id: str, account: str) -> Generation:
        """Withdraw a quote that was never confirmed."""

        def work(connection: Connection) -> Generation:
            quote = self._locked_generation(connection, generation_id)
            if quote.account_id != account:
                raise WrongAccount(generation_id, account)
            if quote.status != GenerationStatus.QUOTED:
                raise InvalidTransition(generation_id, quote.status, "cancel")
            self._set_status(connection, generation_id, GenerationStatus.CANCELLED, self._clock())
            return self._generation(connection, generation_id)

        return await self._transactions.write(work)

    async def capture(
        self, generation_id: str, images_delivered: int, *, running: Generation | None = None
    ) -> Generation:
        """Charge for the images delivered and release the rest of the hold (``rules.settlement``).

        Settling twice returns the first settlement unchanged. ``running``, the
        generation as ``hold`` answered it, saves PostgreSQL a read.
        """
        return await self._settle_once(generation_id, images_delivered, None, None, running)

    async def release(
        self,
        generation_id: str,
        *,
        error_code: str,
        error_message: str,
        running: Generation | None = None,
    ) -> Generation:
        """Release the whole hold of a generation that delivered nothing; as ``capture``."""
        return await self._settle_once(generation_id, 0, error_code, error_message, running)

    async def _settle_once(
        self,
        generation_id: str,
        images_delivered: int,
        error_code: str | None,
        error_message: str | None,
        running: Generation | None,
    ) -> Generation:
        if self._is_sqlite:
            return await self._transactions.write(
                partial(
                    self._settle,
                    generation_id=generation_id,
                    images_delivered=images_delivered,
                    error_code=error_code,
                    error_message=error_message,
                )
            )
        # What is handed in is only a first guess, taken while it says it is running:
        # the statement's guard checks it against the stored row.
        if running is None or (running.id, running.status) != (
            generation_id,
            GenerationStatus.RUNNING,
        ):
            running = await self.generation(generation_id)
        for _ in range(_DECISIONS):
            if rules.already_settled(running):
                return running
            settlement = rules.settlement(running, images_delivered, error_code, error_message)
            now = self._clock()
            settled = await self._transactions.typed_statement(
                statements.SETTLE_AT_ONCE[len(settlement.lines)],
                {**_settlement_values(settlement, now), **_line_values(settlement.lines)},
            )
            if settled is not None:
                return _generation_from(settled)
            read, running = running, await self.generation(generation_id)
            if _as_read(running, statements.SETTLEMENT_READS) == _as_read(
                read, statements.SETTLEMENT_READS
            ):
                # The generation is as the rule read it, so its account lacks the hold.
                raise rules.missing_hold(generation_id)
        raise _changing(generation_id, "settle")

    def _settle(
        self,
        connection: Connection,
        generation_id: str,
        images_delivered: int,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> Generation:
        running = self._locked_generation(connection, generation_id)
        if rules.already_settled(running):
            return running
        settlement = rules.settlement(running, images_delivered, error_code, error_message)
        now = self._clock()
        values = _settlement_values(settlement, now)
        if statements.run(connection, statements.SETTLE_CREDITS, values).rowcount != 1:
            raise rules.missing_hold(generation_id)
        for line in settlement.lines:
            self._insert_line(connection, running.account_id, line, generation_id)
        settled = connection.execute(statements.FINISH_GENERATION, values)
        return _generation_from(settled.one())

    async def heartbeat(self, generation_ids: Collection[str]) -> None:
        """Say these running generations are still being worked on by a live process."""
        if not generation_ids:
            return
        values = {"generation_ids": list(generation_ids), "now": self._clock()}
        await self._transactions.write(
            lambda connection: connection.execute(statements.HEARTBEAT, values)
        )

    async def mark_posted(self, generation_id: str, images: int) -> None:
        """Record that the platform took ``images`` images, before they are captured.

        If the process dies between the post and the capture, recovery charges
        for what the user received instead of giving it away.
        """
        values = {"generation_id": generation_id, "images": images}
        if not self._is_sqlite:
            await self._transactions.statement(statements.MARK_POSTED, values)
            return
        await self._transactions.write(
            lambda connection: statements.run(connection, statements.MARK_POSTED, values)
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
        query = select(generations.c.id, generations.c.images_posted).where(
            generations.c.status == GenerationStatus.RUNNING, last_heard < silent_since
        )
        rows = await self._transactions.read(lambda connection: connection.execute(query).all())
        settled = []
        for row in rows:
            if row.id in keep:
                continue
            if row.images_posted:
                settle = partial(
                    self._settle,
                    generation_id=row.id,
                    images_delivered=row.images_posted,
                    error_message=posted_reason or None,
                )
            else:
                settle = partial(
                    self._settle,
                    generation_id=row.id,
                    images_delivered=0,
                    error_code="interrupted",
                    error_message=reason,
                )
            try:
                settled.append(await self._transactions.write(settle))
            except InvalidTransition:
                continue
        return settled

    async def expire_quotes(self) -> int:
        """Mark quotes past their expiry as expired; returns how many."""
        now = self._clock()
        statement = (
            update(generations)
            .where(generations.c.status == GenerationStatus.QUOTED, generations.c.expires_at <= now)
            .values(status=GenerationStatus.EXPIRED, finished_at=now)
        )
        return await self._transactions.write(
            lambda connection: connection.execute(statement).rowcount
        )

    async def read_state(self, key: str) -> str | None:
        """A value the bot remembered with ``write_state``, or None."""
        query = select(bot_state.c.value).where(bot_state.c.key == key)
        return await self._transactions.read(lambda connection: connection.scalar(query))

    async def write_state(self, key: str, value: str) -> None:
        """Remember ``value`` under ``key``, replacing what was there."""
        dialect_insert = sqlite_insert if self._is_sqlite else postgresql_insert
        now = self._clock()
        statement = (
            dialect_insert(bot_state)
            .values(key=key, value=value, updated_at=now)
            .on_conflict_do_update(index_elements=["key"], set_={"value": value, "updated_at": now})
        )
        await self._transactions.write(lambda connection: connection.execute(statement))

    async def history(
        self, account: str, *, limit: int = 10, include_unconfirmed: bool = False
    ) -> list[Generation]:
        """The account's generations, newest first."""
        query = select(generations).where(generations.c.account_id == account)
        if not include_unconfirmed:
            query = query.where(generations.c.confirmed_at.is_not(None))
        query = query.order_by(generations.c.created_at.desc(), generations.c.id).limit(limit)
        return await self._transactions.read(
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
        return await self._transactions.read(
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
        rows = await self._transactions.read(lambda connection: connection.execute(query).all())
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
            return await self._transactions.write(work)
        except IntegrityError:
            return await self._transactions.write(work)

    def _replayed(
        self,
        connection: Connection,
        key: str,
        account: str,
        kind: EntryKind,
        amount: int,
    ) -> bool:
        row = connection.execute(statements.ENTRY_BY_KEY, {"key": key}).first()
        if row is None:
            return False
        if (row.account_id, row.kind, row.amount) != (account, kind, amount):
            raise IdempotencyConflict(key)
        return True

    def _insert_account(self, connection: Connection, account: str, *, available: int = 0) -> bool:
        """Open ``account`` with ``available`` credits (its entry is the caller's); False if it exists."""
        now = self._clock()
        values = {
            "id": account,
            "available": available,
            "held": 0,
            "created_at": now,
            "updated_at": now,
        }
        opened = statements.run(
            connection, statements.OPEN_ACCOUNT[connection.dialect.name], values
        )
        return opened.rowcount == 1

    def _apply_grant(
        self,
        connection: Connection,
        account: str,
        amount: int,
        actor: str,
        reason: str,
        idempotency_key: str,
    ) -> None:
        statements.run(
            connection,
            statements.ADD_CREDITS,
            {"account": account, "amount": amount, "now": self._clock()},
        )
        self._insert_line(
            connection,
            account,
            rules.Line(EntryKind.GRANT, amount, amount, 0, actor, reason, idempotency_key),
        )

    def _insert_line(
        self,
        connection: Connection,
        account: str,
        line: rules.Line,
        generation_id: str | None = None,
    ) -> None:
        statements.run(
            connection,
            statements.NEW_ENTRY,
            {
                **_line_columns(line),
                "account_id": account,
                "generation_id": generation_id,
                "created_at": self._clock(),
            },
        )

    def _find_balance(self, connection: Connection, account: str) -> Balance | None:
        return _balance_from(
            account, statements.run(connection, statements.BALANCE, {"account": account}).row
        )

    def _balance(self, connection: Connection, account: str) -> Balance:
        found = self._find_balance(connection, account)
        if found is None:
            raise AccountNotFound(account)
        return found

    def _generation(self, connection: Connection, generation_id: str) -> Generation:
        row = connection.execute(statements.GENERATION, {"generation_id": generation_id}).first()
        if row is None:
            raise GenerationNotFound(generation_id)
        return _generation_from(row)

    def _locked_generation(self, connection: Connection, generation_id: str) -> Generation:
        row = connection.execute(
            statements.LOCKED_GENERATION, {"generation_id": generation_id}
        ).first()
        if row is None:
            raise GenerationNotFound(generation_id)
        return _generation_from(row)

    def _set_status(
        self,
        connection: Connection,
        generation_id: str,
        status: GenerationStatus,
        now: datetime,
    ) -> None:
        statements.run(
            connection,
            statements.CLOSE_QUOTE,
            {"generation_id": generation_id, "new_status": status, "now": now},
        )


def _require_positive(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidAmount(amount)


def _balance_from(account: str, row: Sequence[Any] | None) -> Balance | None:
    """The balance in a row of ``statements.BALANCE``, if the account has one."""
    if row is None:
        return None
    available, held = row
    return Balance(account=account, available=available, held=held)


def _generation_from(row: Row[Any] | Mapping[str, Any]) -> Generation:
    """The generation in ``row``, which may hold other columns besides."""
    values: Mapping[str, Any] = row._mapping if isinstance(row, Row) else row
    return Generation(
        **{name: values[name] for name in _GENERATION_COLUMNS},
        status=GenerationStatus(values["status"]),
    )


_GENERATION_COLUMNS = tuple(column.name for column in generations.c if column.name != "status")


def _quoted_generation(stored: Mapping[str, Any]) -> Generation:
    """What reading a new quote's row back would give, without the read."""
    return Generation(
        **stored, error_code=None, error_message=None, confirmed_at=None, finished_at=None
    )


def _quote_or_refusal(
    new: NewGeneration, balance: Balance, quoted: Generation | None
) -> tuple[Balance, Generation]:
    if quoted is None:
        raise InsufficientFunds(new.account_id, new.price, balance.available)
    return balance, quoted


_DECISIONS = 3
"""How often PostgreSQL's hold or settlement reads and decides before giving up.

A guarded statement applies nothing only when what the rule read changed, and
each such change is final for the rule (the quote confirmed, the balance spent,
the generation settled), so the second decision is a refusal or an answer. A
third would mean the guard and the read disagree: a bug, reported as such.
"""

_REASON_LENGTH = 500
"""The longest reason an entry keeps; longer ones are cut."""


def _line_columns(line: rules.Line) -> dict[str, Any]:
    """``line``'s own columns of its entry (``statements.LINE_FIELDS``)."""
    return {
        "kind": line.kind,
        "amount": line.amount,
        "available_delta": line.available_delta,
        "held_delta": line.held_delta,
        "actor": line.actor,
        "reason": line.reason[:_REASON_LENGTH],
        "idempotency_key": line.idempotency_key,
    }


def _line_values(lines: Sequence[rules.Line]) -> dict[str, Any]:
    """``lines`` as the parameters of a statement that writes them, by index."""
    return {
        f"{name}_{index}": value
        for index, line in enumerate(lines)
        for name, value in _line_columns(line).items()
    }


def _hold_values(hold: rules.Hold, now: datetime) -> dict[str, Any]:
    """The parameters of the statements that apply ``hold``, guarded on the quote as read."""
    return {
        **_as_read(hold.quote, statements.HOLD_READS),
        "generation_id": hold.quote.id,
        "account": hold.quote.account_id,
        "amount": hold.price,
        "now": now,
    }


def _settlement_values(settlement: rules.Settlement, now: datetime) -> dict[str, Any]:
    """The parameters of the statements that apply ``settlement``, guarded on the generation as read."""
    running = settlement.running
    return {
        **_as_read(running, statements.SETTLEMENT_READS),
        "generation_id": running.id,
        "account": running.account_id,
        "was_held": running.credits_held,
        "returned": settlement.returned,
        "new_status": settlement.status,
        "delivered": settlement.delivered,
        "charged": settlement.charged,
        "code": settlement.error_code,
        "message": settlement.error_message,
        "now": now,
    }


def _as_read(generation: Generation, columns: tuple[str, ...]) -> dict[str, Any]:
    """``columns`` of ``generation`` as a guarded statement's ``read_`` parameters."""
    return {f"read_{name}": getattr(generation, name) for name in columns}


def _changing(generation_id: str, operation: str) -> RuntimeError:
    """A guarded statement that applied nothing however often it was decided: a bug, not a refusal."""
    return RuntimeError(
        f"could not {operation} {generation_id}: the guarded statement applied nothing"
        f" after {_DECISIONS} decisions on fresh reads"
    )
