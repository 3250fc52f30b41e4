"""Credit lots: the draw order, releases back to their lots, expiry as entries, on both databases."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from ledger import (
    EntryKind,
    IdempotencyConflict,
    InsufficientFunds,
    Ledger,
    LotKind,
    create_engine,
    migrate,
)
from ledger.schema import credit_lots, entry_parts, generations, ledger_entries
from tests.conftest import FakeClock
from tests.test_ledger import ALICE, quoted

Lots = list[tuple[LotKind, int, int]]
"""Each lot of a balance as (kind, available, held), in the order the balance lists them."""


async def grant(
    ledger: Ledger,
    amount: int,
    kind: LotKind = LotKind.PROMO,
    expires_at: datetime | None = None,
    key: str | None = None,
) -> None:
    await ledger.grant(
        ALICE,
        amount,
        actor="admin",
        reason="",
        idempotency_key=key or f"{kind}:{amount}:{expires_at}",
        kind=kind,
        expires_at=expires_at,
    )


async def lots(ledger: Ledger) -> Lots:
    return [(lot.kind, lot.available, lot.held) for lot in (await ledger.balance(ALICE)).lots]


async def entry_kinds(ledger: Ledger) -> list[EntryKind]:
    return [entry.kind for entry in reversed(await ledger.entries(ALICE))]


async def five_kinds_of_lots(ledger: Ledger, clock: FakeClock) -> None:
    """10 credits each, granted in no particular order: paid, promo never expiring, promo
    expiring in two days, promo expiring tomorrow, allowance."""
    await grant(ledger, 10, LotKind.PAID)
    await grant(ledger, 10, LotKind.PROMO)
    await grant(ledger, 10, LotKind.PROMO, clock.now + timedelta(days=2))
    await grant(ledger, 10, LotKind.PROMO, clock.now + timedelta(days=1))
    await grant(ledger, 10, LotKind.ALLOWANCE, clock.now + timedelta(days=30))


async def test_a_hold_draws_allowance_then_promo_by_soonest_expiry_then_paid(
    ledger: Ledger, clock: FakeClock
) -> None:
    await five_kinds_of_lots(ledger, clock)
    await quoted(ledger, clock, images=5, credits_per_image=9)

    await ledger.hold("g1", ALICE)

    assert await lots(ledger) == [
        (LotKind.ALLOWANCE, 0, 10),
        (LotKind.PROMO, 0, 10),
        (LotKind.PROMO, 0, 10),
        (LotKind.PROMO, 0, 10),
        (LotKind.PAID, 5, 5),
    ]
    assert await ledger.verify() == []


async def test_a_release_returns_each_part_to_the_lot_it_came_from(
    ledger: Ledger, clock: FakeClock
) -> None:
    await five_kinds_of_lots(ledger, clock)
    await quoted(ledger, clock, images=5, credits_per_image=9)
    await ledger.hold("g1", ALICE)

    await ledger.release("g1", error_code="provider_error", error_message="down")

    assert await lots(ledger) == [
        (LotKind.ALLOWANCE, 10, 0),
        (LotKind.PROMO, 10, 0),
        (LotKind.PROMO, 10, 0),
        (LotKind.PROMO, 10, 0),
        (LotKind.PAID, 10, 0),
    ]
    assert await ledger.verify() == []


async def test_a_capture_charges_the_parts_in_draw_order_and_returns_the_rest_to_their_lots(
    ledger: Ledger, clock: FakeClock
) -> None:
    await grant(ledger, 10, LotKind.PAID)
    await grant(ledger, 10, LotKind.ALLOWANCE)
    await quoted(ledger, clock, images=2, credits_per_image=10)
    await ledger.hold("g1", ALICE)

    await ledger.capture("g1", 1)

    assert await lots(ledger) == [(LotKind.PAID, 10, 0)]
    assert await ledger.verify() == []


async def test_a_part_released_to_a_lot_that_expired_meanwhile_expires_at_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    await grant(ledger, 20, LotKind.PROMO, clock.now + timedelta(hours=1))
    await grant(ledger, 5, LotKind.PAID)
    await quoted(ledger, clock, images=2, credits_per_image=10)
    await ledger.hold("g1", ALICE)
    clock.advance(hours=2)

    await ledger.release("g1", error_code="provider_error", error_message="down")

    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.held) == (5, 0)
    assert (await entry_kinds(ledger))[-1] == EntryKind.EXPIRE
    assert await ledger.verify() == []


async def test_a_balance_never_counts_an_expired_lot_even_before_its_entry_is_written(
    ledger: Ledger, clock: FakeClock
) -> None:
    await grant(ledger, 10, LotKind.PROMO, clock.now + timedelta(hours=1))
    await grant(ledger, 5, LotKind.PAID)
    clock.advance(hours=2)

    balance = await ledger.balance(ALICE)

    assert balance.available == 5
    assert EntryKind.EXPIRE not in await entry_kinds(ledger)


async def test_the_sweep_writes_one_expire_entry_per_lot_past_its_expiry_and_only_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    await grant(ledger, 10, LotKind.PROMO, clock.now + timedelta(hours=1))
    await grant(ledger, 7, LotKind.ALLOWANCE, clock.now + timedelta(hours=1))
    await grant(ledger, 5, LotKind.PAID)
    clock.advance(hours=2)

    assert await ledger.expire_lots() == 2
    assert await ledger.expire_lots() == 0

    expired = [entry.amount for entry in await ledger.entries(ALICE) if entry.kind == "expire"]
    assert sorted(expired) == [7, 10]
    assert await lots(ledger) == [(LotKind.PAID, 5, 0)]
    assert await ledger.verify() == []


async def test_a_grant_to_an_account_writes_the_expiry_of_its_lots_that_are_due(
    ledger: Ledger, clock: FakeClock
) -> None:
    await grant(ledger, 10, LotKind.PROMO, clock.now + timedelta(hours=1))
    clock.advance(hours=2)

    await grant(ledger, 5, LotKind.PAID)

    assert await entry_kinds(ledger) == [EntryKind.GRANT, EntryKind.EXPIRE, EntryKind.GRANT]
    assert await ledger.verify() == []


async def test_a_hold_never_spends_an_expired_credit(ledger: Ledger, clock: FakeClock) -> None:
    await grant(ledger, 20, LotKind.PROMO, clock.now + timedelta(hours=1))
    clock.advance(minutes=61)
    await quoted(ledger, clock, images=2, credits_per_image=10)

    with pytest.raises(InsufficientFunds):
        await ledger.hold("g1", ALICE)

    assert (await ledger.balance(ALICE)).held == 0


async def test_a_revoke_takes_from_the_lots_in_the_order_a_hold_draws(
    ledger: Ledger, clock: FakeClock
) -> None:
    await grant(ledger, 10, LotKind.PAID)
    await grant(ledger, 5, LotKind.ALLOWANCE)

    await ledger.revoke(ALICE, 8, actor="admin", reason="", idempotency_key="take-back")

    assert await lots(ledger) == [(LotKind.PAID, 7, 0)]
    assert await ledger.verify() == []


async def test_a_grant_key_replayed_for_another_kind_of_lot_is_refused(ledger: Ledger) -> None:
    await grant(ledger, 10, LotKind.PROMO, key="k")

    with pytest.raises(IdempotencyConflict):
        await grant(ledger, 10, LotKind.ALLOWANCE, key="k")


async def test_paid_credits_cannot_be_given_an_expiry(ledger: Ledger, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="never expire"):
        await grant(ledger, 10, LotKind.PAID, clock.now + timedelta(days=1))


async def test_verify_names_a_lot_that_disagrees_with_its_parts(ledger: Ledger) -> None:
    await grant(ledger, 10, LotKind.PROMO)
    await grant(ledger, 10, LotKind.PAID)
    async with ledger.engine.begin() as connection:
        # Credits moved between two lots by hand: the account's totals still agree.
        await connection.execute(
            update(credit_lots)
            .where(credit_lots.c.kind == LotKind.PROMO)
            .values(available=credit_lots.c.available - 1)
        )
        await connection.execute(
            update(credit_lots)
            .where(credit_lots.c.kind == LotKind.PAID)
            .values(available=credit_lots.c.available + 1)
        )

    [found] = await ledger.verify()

    assert found.account == ALICE
    assert len(found.lot_problems) == 2


async def test_twenty_allowance_grants_at_once_with_one_key_from_several_processes_grant_once(
    database_url: str, clock: FakeClock
) -> None:
    ledgers = [Ledger(create_engine(database_url), clock) for _ in range(4)]
    try:
        await migrate.upgrade(ledgers[0].engine)
        await asyncio.gather(
            *(
                ledgers[number % 4].grant(
                    ALICE,
                    30,
                    actor="system",
                    reason="allowance",
                    idempotency_key=f"allowance:{ALICE}:2026-12",
                    kind=LotKind.ALLOWANCE,
                    expires_at=clock.now + timedelta(days=30),
                )
                for number in range(20)
            )
        )

        assert await lots(ledgers[1]) == [(LotKind.ALLOWANCE, 30, 0)]
        assert await entry_kinds(ledgers[2]) == [EntryKind.GRANT]
        assert await ledgers[3].verify() == []
    finally:
        for each in ledgers:
            await each.close()


async def test_holds_racing_an_expiry_never_spend_an_expired_credit(
    database_url: str, clock: FakeClock
) -> None:
    ledgers = [Ledger(create_engine(database_url), clock) for _ in range(4)]
    try:
        await migrate.upgrade(ledgers[0].engine)
        await grant(ledgers[0], 200, LotKind.PAID)
        for number in range(40):
            await quoted(ledgers[0], clock, generation_id=f"g{number}", images=1)
        # Every reading of the clock is a microsecond later, and a hold reads it about three
        # times: the promo lot expires after a few of the holds below (four, when measured).
        expiry = clock.now + timedelta(microseconds=20)
        await grant(ledgers[0], 100, LotKind.PROMO, expiry)

        await asyncio.gather(
            *(ledgers[number % 4].hold(f"g{number}", ALICE) for number in range(40)),
            *(each.expire_lots() for each in ledgers),
            return_exceptions=True,
        )
        await ledgers[0].expire_lots()

        async with ledgers[0].engine.connect() as connection:
            drawn = (
                await connection.execute(
                    select(generations.c.confirmed_at, entry_parts.c.held_delta)
                    .join(ledger_entries, ledger_entries.c.generation_id == generations.c.id)
                    .join(entry_parts, entry_parts.c.entry_id == ledger_entries.c.id)
                    .join(credit_lots, credit_lots.c.id == entry_parts.c.lot_id)
                    .where(
                        credit_lots.c.kind == LotKind.PROMO,
                        ledger_entries.c.kind == EntryKind.HOLD,
                    )
                )
            ).all()
        assert 0 < len(drawn) < 10, "the lot did not expire during the race"
        assert all(confirmed_at < expiry for confirmed_at, _ in drawn)
        expired = sum(e.amount for e in await ledgers[0].entries(ALICE) if e.kind == "expire")
        assert sum(held for _, held in drawn) + expired == 100
        assert await ledgers[1].verify() == []
    finally:
        for each in ledgers:
            await each.close()


async def test_a_statement_shows_each_part_with_its_lot_model_and_running_balance(
    ledger: Ledger, clock: FakeClock
) -> None:
    await grant(ledger, 10, LotKind.PAID)
    await grant(ledger, 10, LotKind.ALLOWANCE)
    await quoted(ledger, clock, images=2, credits_per_image=10)
    await ledger.hold("g1", ALICE)
    await ledger.capture("g1", 1)

    statement = await ledger.statement(ALICE)

    assert [
        (line.kind, line.lot_kind, line.available_delta, line.held_delta, line.available_after)
        for line in statement
    ] == [
        (EntryKind.GRANT, LotKind.PAID, 10, 0, 10),
        (EntryKind.GRANT, LotKind.ALLOWANCE, 10, 0, 20),
        (EntryKind.HOLD, LotKind.PAID, -10, 10, 10),
        (EntryKind.HOLD, LotKind.ALLOWANCE, -10, 10, 0),
        (EntryKind.CAPTURE, LotKind.ALLOWANCE, 0, -10, 0),
        (EntryKind.RELEASE, LotKind.PAID, 10, -10, 10),
    ]
    model = (await ledger.generation("g1")).model_id
    assert {line.model_id for line in statement if line.generation_id} == {model}
    assert statement[-1].held_after == 0
