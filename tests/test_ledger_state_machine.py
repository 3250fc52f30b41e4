"""Random sequences of ledger operations, checked against a model after every step (Hypothesis).

Grants of every kind of lot with and without an expiry, the free allowance's
first touch in a period (from two processes), revokes, accounts' price
overrides set and cleared, quotes priced with them and with batch discounts,
holds, captures of all or part of a request and releases, in any order, the
clock moving on and the expiry sweep running between them, with replayed
idempotency keys and operations that must be refused mixed in. After every
step: no lot and no balance is negative, every account and every lot matches
the model, per lot granted − revoked − expired − captured = available + held
as its entries' parts say, per account granted − revoked − expired =
available + held + captured, and ``verify`` is clean. On SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, case, func, select
from sqlalchemy.engine import Connection

from bot.credits import Credits
from bot.pricing import Allowance, BatchDiscounts, price
from ledger import (
    Balance,
    Discrepancy,
    EntryKind,
    Generation,
    GenerationStatus,
    Ledger,
    LedgerError,
    LotKind,
    NewGeneration,
    create_engine,
    migrate,
)
from ledger.ledger import _disagreements as disagreements
from ledger.ledger import _find_balance as find_balance
from ledger.schema import credit_lots, entry_parts, ledger_entries
from tests.conftest import FakeClock, SessionPostgres, postgres_database

ACCOUNTS = ("discord:1", "discord:2", "slack:T1:U3")
T = TypeVar("T")
Quote = tuple[str, str, int, int]
"""A quote as the machine keeps it: generation id, account, images, the price of them all."""
Snapshot = tuple[list[Balance], list[Any], list[Discrepancy]]
"""What the invariants read: each account's balance, each lot's figures, ``verify``'s findings."""
Held = tuple[Quote, Generation]
"""A held quote, and the generation as the hold answered it."""


_KIND_ORDER = (LotKind.ALLOWANCE, LotKind.PROMO, LotKind.PAID)
_NEVER = datetime.max.replace(tzinfo=UTC)
EXPIRIES = (None, timedelta(minutes=30), timedelta(hours=2), timedelta(days=1))
"""When a granted lot expires, from the grant on; a clock step moves on by up to 3 hours."""
LIST_PRICES = {"m1": 10, "m2": 7}
"""Credits per image of each model at list price."""
BATCH = BatchDiscounts({4: 10, 8: 20})
ALLOWANCE = Allowance(credits=25, period="day")
PROCESSES = 2
"""Each with its own ``Credits``, and so its own memory of whose allowance it granted."""
Override = tuple[int | None, int | None, datetime | None]
"""An account's own price as the model keeps it: credits per image, percent off, until."""


class ModelLot:
    """One lot as the model keeps it: what went in and where it went."""

    def __init__(self, number: int, kind: LotKind, granted: int, expires_at: datetime | None):
        self.number = number
        self.kind = kind
        self.expires_at = expires_at
        self.granted = granted
        self.available = granted
        self.held = 0
        self.captured = 0
        self.revoked = 0
        self.expired = 0

    def draw_order(self) -> tuple[int, datetime, int]:
        return _KIND_ORDER.index(self.kind), self.expires_at or _NEVER, self.number

    def expired_at(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def expire_if_due(self, now: datetime) -> None:
        """What an expiry entry does; the model writes it whenever the ledger may have."""
        if self.expired_at(now):
            self.expired += self.available
            self.available = 0


_SQLITE_TEMPLATE: list[Path] = []
"""A SQLite file migrated once per test session, copied for every run of the machine."""


@contextlib.asynccontextmanager
async def sqlite_file() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        if not _SQLITE_TEMPLATE:
            template = Path(tempfile.mkdtemp()) / "template.db"
            engine = create_engine(f"sqlite+aiosqlite:///{template}")
            await migrate.upgrade(engine)
            await engine.dispose()
            _SQLITE_TEMPLATE.append(template)
        shutil.copyfile(_SQLITE_TEMPLATE[0], Path(folder) / "l.db")
        yield f"sqlite+aiosqlite:///{Path(folder) / 'l.db'}"


def _moved(kind: EntryKind, column: Any) -> Any:
    return func.coalesce(func.sum(case((ledger_entries.c.kind == kind, column), else_=0)), 0)


LOT_FIGURES = (
    select(
        credit_lots.c.available,
        credit_lots.c.held,
        credit_lots.c.granted,
        _moved(EntryKind.GRANT, entry_parts.c.available_delta).label("grants"),
        (-_moved(EntryKind.ADJUSTMENT, entry_parts.c.available_delta)).label("revoked"),
        (
            -_moved(EntryKind.EXPIRE, entry_parts.c.available_delta)
            - _moved(EntryKind.EXPIRE, entry_parts.c.held_delta)
        ).label("expired"),
        (-_moved(EntryKind.CAPTURE, entry_parts.c.held_delta)).label("captured"),
    )
    .select_from(
        credit_lots.join(entry_parts, entry_parts.c.lot_id == credit_lots.c.id).join(
            ledger_entries, ledger_entries.c.id == entry_parts.c.entry_id
        )
    )
    .group_by(credit_lots.c.id, credit_lots.c.available, credit_lots.c.held, credit_lots.c.granted)
)
"""Each lot as stored, beside what its entries' parts say it was granted and lost, by kind.

Built once: the invariant runs after every step of every example."""


class LedgerMachine(RuleBasedStateMachine):
    """The real ledger on a fresh database per run, and a plain-Python model of what it should hold."""

    quotes = Bundle("quotes")
    holds = Bundle("holds")
    database: contextlib.AbstractAsyncContextManager[str]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.database = self.new_database()
        self.clock = FakeClock(datetime(2026, 11, 25, tzinfo=UTC))
        url = self.run(self.database.__aenter__())
        self.engine = create_engine(url)
        self.reader = self.new_reader(url)
        self.ledger = Ledger(self.engine, self.clock)
        self.lots: dict[str, list[ModelLot]] = {account: [] for account in ACCOUNTS}
        self.grant_keys: dict[str, tuple[str, int, LotKind, datetime | None]] = {}
        self.parts: dict[str, list[tuple[ModelLot, int]]] = {}
        """Each running generation's hold: the lots it drew from, in draw order, and how much."""
        self.quote_count = 0
        self.processes = [Credits(self.ledger, allowance=ALLOWANCE) for _ in range(PROCESSES)]
        self.allowances: set[tuple[str, datetime]] = set()
        """Which account has had which day's allowance."""
        self.overrides: dict[tuple[str, str | None], Override] = {}
        """Each account's own prices, by account and model (None: every model)."""

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    def new_database(self) -> contextlib.AbstractAsyncContextManager[str]:
        return sqlite_file()

    def new_reader(self, url: str) -> Engine | None:
        return sqlalchemy.create_engine(url.replace("+aiosqlite", ""))

    def teardown(self) -> None:
        if self.reader is not None:
            self.reader.dispose()
        self.run(self.ledger.close())
        self.run(self.database.__aexit__(None, None, None))
        self.loop.close()

    # -- the model -------------------------------------------------------------------

    def touch(self, account: str) -> None:
        """The ledger wrote (or may have) the expiry of the account's due lots."""
        for lot in self.lots[account]:
            lot.expire_if_due(self.clock.now)

    def spendable(self, account: str) -> int:
        now = self.clock.now
        return sum(lot.available for lot in self.lots[account] if not lot.expired_at(now))

    def draw(self, account: str, amount: int) -> list[tuple[ModelLot, int]]:
        """Take ``amount`` from the account's unexpired lots in draw order."""
        taken = []
        for lot in sorted(self.lots[account], key=ModelLot.draw_order):
            if amount and lot.available and not lot.expired_at(self.clock.now):
                part = min(amount, lot.available)
                lot.available -= part
                amount -= part
                taken.append((lot, part))
        assert not amount
        return taken

    # -- rules -----------------------------------------------------------------------

    @initialize()
    def open_accounts(self) -> None:
        for account in ACCOUNTS:
            self.run(self.ledger.ensure_account(account))

    @rule(
        account=st.sampled_from(ACCOUNTS),
        amount=st.integers(1, 500),
        key=st.integers(0, 5),
        kind=st.sampled_from(_KIND_ORDER),
        expiry=st.sampled_from(EXPIRIES),
    )
    def grant(
        self, account: str, amount: int, key: int, kind: LotKind, expiry: timedelta | None
    ) -> None:
        idempotency_key = f"grant:{key}"
        expires_at = None if expiry is None or kind == LotKind.PAID else self.clock.now + expiry
        asked = (account, amount, kind, expires_at)
        first = self.grant_keys.get(idempotency_key)
        try:
            self.run(
                self.ledger.grant(
                    account,
                    amount,
                    actor="test",
                    reason="",
                    idempotency_key=idempotency_key,
                    kind=kind,
                    expires_at=expires_at,
                )
            )
        except LedgerError:
            # A key reused with other parameters is refused and changes nothing.
            assert first is not None and first != asked
            return
        if first is None:
            self.touch(account)
            self.grant_keys[idempotency_key] = asked
            number = sum(len(lots) for lots in self.lots.values())
            self.lots[account].append(ModelLot(number, kind, amount, expires_at))
        else:
            assert first == asked

    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 500))
    def revoke(self, account: str, amount: int) -> None:
        self.quote_count += 1
        try:
            self.run(
                self.ledger.revoke(
                    account, amount, actor="test", reason="", idempotency_key=f"r{self.quote_count}"
                )
            )
        except LedgerError:
            assert amount > self.spendable(account)
            return
        self.touch(account)
        for lot, part in self.draw(account, amount):
            lot.revoked += part

    @rule(minutes=st.integers(1, 180))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)

    @rule()
    def sweep(self) -> None:
        self.run(self.ledger.expire_lots())
        for account in ACCOUNTS:
            self.touch(account)

    @rule(account=st.sampled_from(ACCOUNTS), process=st.integers(0, PROCESSES - 1))
    def first_touch_of_the_day(self, account: str, process: int) -> None:
        """A command from the account, which tops up the day's allowance if it has not had it."""
        self.run(self.processes[process].top_up_allowance(account))
        day = self.clock.now.replace(hour=0, minute=0, second=0, microsecond=0)
        if (account, day) in self.allowances:
            return
        self.allowances.add((account, day))
        self.touch(account)
        number = sum(len(lots) for lots in self.lots.values())
        self.lots[account].append(
            ModelLot(number, LotKind.ALLOWANCE, ALLOWANCE.credits, day + timedelta(days=1))
        )

    @rule(
        account=st.sampled_from(ACCOUNTS),
        model=st.sampled_from((None, *LIST_PRICES)),
        amount=st.integers(1, 100),
        lasts=st.sampled_from((None, timedelta(hours=1), timedelta(days=1))),
    )
    def set_price_override(
        self, account: str, model: str | None, amount: int, lasts: timedelta | None
    ) -> None:
        """A fixed price per image for one model (``amount`` capped at 15), or ``amount`` percent
        off every model."""
        credits = None if model is None else min(amount, 15)
        percent = amount if model is None else None
        until = None if lasts is None else self.clock.now + lasts
        self.run(
            self.ledger.set_price_override(
                account,
                model_id=model,
                credits_per_image=credits,
                percent_off=percent,
                until=until,
                actor="test",
                reason="r",
            )
        )
        self.overrides[account, model] = (credits, percent, until)

    @rule(account=st.sampled_from(ACCOUNTS), model=st.sampled_from((None, *LIST_PRICES)))
    def clear_price_overrides(self, account: str, model: str | None) -> None:
        cleared = self.run(self.ledger.clear_price_overrides(account, model))
        scopes = [scope for scope in self.overrides if scope[0] == account]
        gone = scopes if model is None else [s for s in scopes if s == (account, model)]
        for scope in gone:
            del self.overrides[scope]
        assert cleared == len(gone)

    def model_price(self, account: str, model: str, images: int) -> int:
        """The price rule as the model states it, to check ``bot.pricing.price`` against."""

        def in_force(scope: str | None) -> Override | None:
            rule = self.overrides.get((account, scope))
            now = self.clock.now
            return rule if rule is not None and (rule[2] is None or rule[2] > now) else None

        per_image = Fraction(LIST_PRICES[model])
        own, every = in_force(model), in_force(None)
        if own is not None and own[0] is not None:
            per_image = Fraction(own[0])
        elif every is not None and every[1] is not None:
            per_image = per_image * (100 - every[1]) / 100
        batch = 20 if images >= 8 else 10 if images >= 4 else 0
        return max(1, int(per_image * images * (100 - batch) / 100))

    @rule(
        target=quotes,
        account=st.sampled_from(ACCOUNTS),
        model=st.sampled_from(tuple(LIST_PRICES)),
        images=st.integers(1, 8),
    )
    def quote(self, account: str, model: str, images: int) -> Quote:
        self.quote_count += 1
        generation_id = f"q{self.quote_count}"
        priced = price(
            LIST_PRICES[model],
            images,
            batch=BATCH,
            overrides=self.run(self.ledger.price_overrides(account)),
            model_id=model,
            now=self.clock.now,
        )
        assert priced.total == self.model_price(account, model, images)
        self.run(
            self.ledger.create_quote(
                NewGeneration(
                    id=generation_id,
                    account_id=account,
                    model_id=model,
                    provider="local",
                    provider_model="p",
                    prompt="p",
                    options={},
                    images_requested=images,
                    credits_per_image=LIST_PRICES[model],
                    price_total=priced.total,
                    # Never expires within a run: the clock moves on by days at most.
                    expires_at=self.clock.now + timedelta(days=365),
                )
            )
        )
        return generation_id, account, images, priced.total

    @rule(target=holds, quote=consumes(quotes))
    def hold(self, quote: Quote) -> Held | MultipleResults[Held]:
        generation_id, account, _, total = quote
        try:
            # A lease that has run out at once: the owner or a sweep may settle it.
            held = self.run(self.ledger.hold(generation_id, account, lease=timedelta(0)))
        except LedgerError:
            assert total > self.spendable(account)
            return multiple()
        self.touch(account)
        parts = self.draw(account, total)
        for lot, part in parts:
            lot.held += part
        self.parts[generation_id] = parts
        return quote, held

    @rule(quote=quotes)
    def hold_as_someone_else(self, quote: Quote) -> None:
        generation_id, account, _, _ = quote
        stranger = next(other for other in ACCOUNTS if other != account)
        try:
            self.run(self.ledger.hold(generation_id, stranger))
        except LedgerError:
            return
        raise AssertionError("another account held someone's quote")

    def settled(self, generation_id: str, charged: int) -> None:
        """The model's settlement: ``charged`` from the parts in draw order, the rest back to
        each part's lot, or expired at once if that lot has expired."""
        for lot, part in self.parts.pop(generation_id):
            taken = min(part, charged)
            charged -= taken
            lot.held -= part
            lot.captured += taken
            if lot.expired_at(self.clock.now):
                lot.expired += part - taken
            else:
                lot.available += part - taken

    @rule(held=consumes(holds), data=st.data())
    def capture(self, held: Held, data: st.DataObject) -> None:
        (generation_id, _, images, total), _ = held
        delivered = data.draw(st.integers(0, images))
        # Each delivered image's share of the price, rounded down; all of them, all of it.
        charged = total if delivered == images else total * delivered // images
        # By its owner, as the flow settles, or by a sweep, after the owner recorded the posts.
        if data.draw(st.booleans()):
            settled = self.run(self.ledger.capture(generation_id, delivered))
        else:
            self.run(self.ledger.mark_posted(generation_id, delivered))
            swept = self.run(
                self.ledger.settle_abandoned(generation_id, reason="", posted_reason="")
            )
            assert swept is not None
            settled = swept
        self.settled(generation_id, charged)
        assert settled.credits_charged == charged
        again = self.run(self.ledger.release(generation_id, error_code="x", error_message="x"))
        assert again == settled, "settling twice changed it"

    @rule(held=consumes(holds), data=st.data())
    def release(self, held: Held, data: st.DataObject) -> None:
        (generation_id, _, _, _), _ = held
        if data.draw(st.booleans()):
            settled = self.run(
                self.ledger.release(generation_id, error_code="x", error_message="x")
            )
        else:
            swept = self.run(
                self.ledger.settle_abandoned(generation_id, reason="", posted_reason="")
            )
            assert swept is not None
            settled = swept
        assert settled.status == GenerationStatus.FAILED
        self.settled(generation_id, 0)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def the_ledger_matches_the_model_and_adds_up(self) -> None:
        """From one read of the database after every step: each balance and lot matches the
        model; per lot, as its entries' parts say, no part is negative and granted − revoked
        − expired − captured = available + held; and ``verify`` finds nothing."""
        balances, lot_figures, discrepancies = self.read_everything()
        now = self.clock.now
        for account, balance in zip(ACCOUNTS, balances, strict=True):
            lots = sorted(self.lots[account], key=ModelLot.draw_order)
            expected = [
                (lot.kind, 0 if lot.expired_at(now) else lot.available, lot.held) for lot in lots
            ]
            assert [(lot.kind, lot.available, lot.held) for lot in balance.lots] == [
                each for each in expected if each[1] or each[2]
            ]
            assert (balance.available, balance.held) == (
                self.spendable(account),
                sum(lot.held for lot in lots),
            )
            for lot in lots:
                unspent = lot.available + lot.held
                assert lot.granted - lot.revoked - lot.expired - lot.captured == unspent
        for row in lot_figures:
            assert row.available >= 0 and row.held >= 0
            assert row.granted == row.grants
            assert row.grants - row.revoked - row.expired - row.captured == (
                row.available + row.held
            )
        assert discrepancies == []

    def read_everything(self) -> Snapshot:
        """The balances, the lots' figures and what ``verify`` finds, in one transaction of a
        plain synchronous connection to the SQLite file: the checks run after every step of
        every example, and through the async driver its thread hops cost most of the run."""
        assert self.reader is not None
        with self.reader.connect() as connection:
            return snapshot(connection, self.clock.now)


def snapshot(connection: Connection, now: datetime) -> Snapshot:
    """What the invariants check, read with the ledger's own functions (``verify`` runs
    ``_disagreements``)."""
    balances = []
    for account in ACCOUNTS:
        balance = find_balance(connection, account, now)
        assert balance is not None
        balances.append(balance)
    return balances, list(connection.execute(LOT_FIGURES).all()), disagreements(connection)


# 100 runs of 30 steps: a tenth of the whole suite's CPU. Breaking a rule fails it within them.
LedgerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestLedgerStateMachine = LedgerMachine.TestCase


_POSTGRES = SessionPostgres()
"""Migrated once, emptied for each run: creating a database per run took most of the test's time."""


@contextlib.asynccontextmanager
async def emptied_postgres() -> AsyncIterator[str]:
    yield await _POSTGRES.emptied()


class PostgresLedgerMachine(LedgerMachine):
    """The same on PostgreSQL, emptied for each run."""

    def new_database(self) -> contextlib.AbstractAsyncContextManager[str]:
        return emptied_postgres()

    def new_reader(self, url: str) -> Engine | None:
        # No synchronous PostgreSQL driver here: the async engine's connection reads instead.
        return None

    def read_everything(self) -> Snapshot:
        async def read() -> Snapshot:
            async with self.engine.connect() as connection:
                return await connection.run_sync(snapshot, self.clock.now)

        return self.run(read())


@pytest.mark.postgres
def test_random_ledger_operations_on_postgresql_keep_every_balance_exact() -> None:
    async def reachable() -> None:
        # Skips, or fails under REQUIRE_POSTGRES=1, here rather than inside Hypothesis.
        async with postgres_database():
            pass

    asyncio.run(reachable())
    try:
        run_state_machine_as_test(
            PostgresLedgerMachine,
            settings=settings(max_examples=12, stateful_step_count=30, deadline=None),
        )
    finally:
        asyncio.run(_POSTGRES.drop())
