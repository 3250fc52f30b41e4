"""Credits taken back after a refund or dispute: from the paid lot first, the rest owed, paid by
what comes in next; an account that owes holds nothing. On both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from ledger import CreditsOwed, EntryKind, Ledger, LotKind
from ledger.schema import accounts
from tests.conftest import FakeClock
from tests.test_ledger import ALICE, new_quote, quoted


async def bought(ledger: Ledger, credits: int = 100, key: str = "purchase:p1") -> None:
    await ledger.grant(
        ALICE, credits, actor="stripe", reason="pack", idempotency_key=key, kind=LotKind.PAID
    )


async def promo(ledger: Ledger, credits: int) -> None:
    await ledger.grant(ALICE, credits, actor="admin", reason="", idempotency_key=f"promo:{credits}")


async def take_back(ledger: Ledger, credits: int, key: str = "refund:1") -> None:
    await ledger.take_back(
        ALICE,
        credits,
        actor="stripe",
        reason="refunded",
        idempotency_key=key,
        from_grant="purchase:p1",
    )


async def test_a_take_back_comes_from_the_lot_the_payment_granted_first(ledger: Ledger) -> None:
    await promo(ledger, 30)
    await bought(ledger, 100)

    await take_back(ledger, 100)

    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.owed) == (30, 0)
    assert [(lot.kind, lot.available) for lot in balance.lots] == [(LotKind.PROMO, 30)]


async def test_credits_spent_before_the_take_back_come_from_other_lots_then_become_owed(
    ledger: Ledger,
) -> None:
    await bought(ledger, 100)
    await ledger.revoke(ALICE, 80, actor="admin", reason="spent", idempotency_key="spent")
    await promo(ledger, 30)

    await take_back(ledger, 100)

    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.held, balance.owed) == (0, 0, 50)


async def test_an_account_that_owes_credits_cannot_quote_or_hold(
    ledger: Ledger, clock: FakeClock
) -> None:
    await bought(ledger, 100)
    await quoted(ledger, clock, "g1")
    await ledger.revoke(ALICE, 90, actor="admin", reason="spent", idempotency_key="spent")
    await take_back(ledger, 100)

    with pytest.raises(CreditsOwed) as refusal:
        await ledger.hold("g1", ALICE)
    with pytest.raises(CreditsOwed):
        await ledger.open_quote(new_quote(clock, "g2"))
    assert refusal.value.owed == 90


async def test_the_next_grant_pays_what_is_owed_first(ledger: Ledger) -> None:
    await bought(ledger, 100)
    await ledger.revoke(ALICE, 100, actor="admin", reason="spent", idempotency_key="spent")
    await take_back(ledger, 100)

    await bought(ledger, 250, key="purchase:p2")

    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.owed) == (150, 0)
    assert [entry.kind for entry in (await ledger.entries(ALICE))[:2]] == [
        EntryKind.REPAY,
        EntryKind.GRANT,
    ]


async def test_a_grant_smaller_than_the_debt_pays_part_of_it(ledger: Ledger) -> None:
    await bought(ledger, 100)
    await ledger.revoke(ALICE, 100, actor="admin", reason="spent", idempotency_key="spent")
    await take_back(ledger, 100)

    await promo(ledger, 40)

    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.owed) == (0, 60)


async def test_credits_held_at_the_take_back_are_owed_and_their_release_pays_it(
    ledger: Ledger, clock: FakeClock
) -> None:
    await bought(ledger, 100)
    await quoted(ledger, clock, "g1", images=2, credits_per_image=30)
    await ledger.hold("g1", ALICE)

    await take_back(ledger, 100)
    owing = await ledger.balance(ALICE)
    await ledger.release("g1", error_code="x", error_message="x")

    balance = await ledger.balance(ALICE)
    assert (owing.available, owing.held, owing.owed) == (0, 60, 60)
    assert (balance.available, balance.held, balance.owed) == (0, 0, 0)
    assert await ledger.verify() == []


async def test_a_take_back_replayed_with_its_key_changes_nothing(ledger: Ledger) -> None:
    await bought(ledger, 100)
    await ledger.revoke(ALICE, 70, actor="admin", reason="spent", idempotency_key="spent")

    for _ in range(3):
        await take_back(ledger, 100)

    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.owed) == (0, 70)


async def test_verify_recomputes_what_is_owed_from_the_entries(ledger: Ledger) -> None:
    await bought(ledger, 100)
    await ledger.revoke(ALICE, 70, actor="admin", reason="spent", idempotency_key="spent")
    await take_back(ledger, 100)
    assert await ledger.verify() == []

    async with ledger.engine.begin() as connection:
        await connection.execute(update(accounts).where(accounts.c.id == ALICE).values(owed=5))

    [found] = await ledger.verify()
    assert (found.stored_owed, found.entries_owed) == (5, 70)


async def test_a_statement_shows_what_became_owed_and_what_paid_it(ledger: Ledger) -> None:
    await bought(ledger, 100)
    await ledger.revoke(ALICE, 70, actor="admin", reason="spent", idempotency_key="spent")
    await take_back(ledger, 100)
    await promo(ledger, 100)

    lines = await ledger.statement(ALICE)

    assert [
        (line.kind, line.lot_kind, line.available_delta, line.owed_delta, line.owed_after)
        for line in lines[2:]
    ] == [
        (EntryKind.TAKE_BACK, LotKind.PAID, -30, 0, 0),
        (EntryKind.TAKE_BACK, None, 0, 70, 70),
        (EntryKind.GRANT, LotKind.PROMO, 100, 0, 70),
        (EntryKind.REPAY, LotKind.PROMO, -70, 0, 70),
        (EntryKind.REPAY, None, 0, -70, 0),
    ]
    assert lines[-1].available_after == 30
