"""Purchases in the ledger: a pack granted once per purchase whatever the events, refunds and
disputes taken back and given back to match, on both databases."""

from __future__ import annotations

import asyncio

import pytest

from ledger import (
    EntryKind,
    Ledger,
    LotKind,
    NewPurchase,
    PaymentEvent,
    PurchaseNotFound,
    PurchaseStatus,
)
from tests.test_ledger import ALICE

PAID = PaymentEvent("evt_paid", "checkout.session.completed")


async def opened(ledger: Ledger, purchase_id: str = "p1", credits: int = 500) -> None:
    await ledger.open_purchase(
        NewPurchase(
            id=purchase_id,
            source="stripe",
            account_id=ALICE,
            pack="starter",
            credits=credits,
            amount=499,
            currency="usd",
            external_id=f"cs_{purchase_id}",
        )
    )


async def available(ledger: Ledger) -> tuple[int, int]:
    balance = await ledger.balance(ALICE)
    return balance.available, balance.owed


async def spend(ledger: Ledger, credits: int) -> None:
    await ledger.revoke(ALICE, credits, actor="test", reason="spent", idempotency_key="spent")


async def test_a_paid_purchase_grants_its_credits_as_a_paid_lot(ledger: Ledger) -> None:
    await opened(ledger)

    change = await ledger.fulfil_purchase("p1", PAID, payment_reference="pi_1")

    balance = await ledger.balance(ALICE)
    assert change.granted == 500
    assert [(lot.kind, lot.available, lot.expires_at) for lot in balance.lots] == [
        (LotKind.PAID, 500, None)
    ]
    bought = await ledger.purchase("p1")
    assert bought is not None
    assert (bought.status, bought.payment_reference) == (PurchaseStatus.PAID, "pi_1")


async def test_one_event_delivered_five_times_grants_once(ledger: Ledger) -> None:
    await opened(ledger)

    changes = [await ledger.fulfil_purchase("p1", PAID) for _ in range(5)]

    assert [change.repeated for change in changes] == [False, True, True, True, True]
    assert await available(ledger) == (500, 0)


async def test_two_events_saying_paid_grant_once(ledger: Ledger) -> None:
    await opened(ledger)

    await ledger.fulfil_purchase("p1", PaymentEvent("evt_1", "checkout.session.completed"))
    second = await ledger.fulfil_purchase(
        "p1", PaymentEvent("evt_2", "checkout.session.async_payment_succeeded")
    )

    assert (second.repeated, second.granted) == (False, 0)
    assert await available(ledger) == (500, 0)


async def test_the_same_event_delivered_at_once_by_several_workers_grants_once(
    ledger: Ledger,
) -> None:
    await opened(ledger)

    await asyncio.gather(*(ledger.fulfil_purchase("p1", PAID) for _ in range(8)))

    assert await available(ledger) == (500, 0)
    assert await ledger.verify() == []


async def test_a_partial_refund_takes_back_the_refunded_share_rounded_down(
    ledger: Ledger,
) -> None:
    await opened(ledger)
    await ledger.fulfil_purchase("p1", PAID)

    change = await ledger.reverse_purchase(
        "p1", PaymentEvent("evt_r1", "charge.refunded"), amount_refunded=250
    )

    # 500 * 250 / 499 = 250.5
    assert change.taken_back == 250
    assert await available(ledger) == (250, 0)
    assert change.purchase.status == PurchaseStatus.PAID


async def test_refunds_are_cumulative_and_a_full_refund_takes_back_the_whole_pack(
    ledger: Ledger,
) -> None:
    await opened(ledger)
    await ledger.fulfil_purchase("p1", PAID)
    await ledger.reverse_purchase("p1", PaymentEvent("r1", "charge.refunded"), amount_refunded=250)

    change = await ledger.reverse_purchase(
        "p1", PaymentEvent("r2", "charge.refunded"), amount_refunded=499
    )

    assert (change.taken_back, change.purchase.status) == (250, PurchaseStatus.REFUNDED)
    assert await available(ledger) == (0, 0)


async def test_a_refund_recorded_before_the_payment_is_taken_back_when_it_is_paid(
    ledger: Ledger,
) -> None:
    await opened(ledger)
    early = await ledger.reverse_purchase(
        "p1", PaymentEvent("r1", "charge.refunded"), amount_refunded=499
    )

    change = await ledger.fulfil_purchase("p1", PAID)

    assert early.taken_back == 0
    assert (change.granted, change.taken_back) == (500, 500)
    assert await available(ledger) == (0, 0)


async def test_a_refund_after_the_credits_were_spent_leaves_them_owed(ledger: Ledger) -> None:
    await opened(ledger)
    await ledger.fulfil_purchase("p1", PAID)
    await spend(ledger, 400)

    await ledger.reverse_purchase("p1", PaymentEvent("r1", "charge.refunded"), amount_refunded=499)

    assert await available(ledger) == (0, 400)


async def test_the_next_purchase_pays_what_is_owed_first(ledger: Ledger) -> None:
    await opened(ledger)
    await ledger.fulfil_purchase("p1", PAID)
    await spend(ledger, 400)
    await ledger.reverse_purchase("p1", PaymentEvent("r1", "charge.refunded"), amount_refunded=499)
    await opened(ledger, "p2")

    await ledger.fulfil_purchase("p2", PaymentEvent("evt_paid_2", "checkout.session.completed"))

    assert await available(ledger) == (100, 0)
    assert (await ledger.entries(ALICE))[0].kind == EntryKind.REPAY
    assert await ledger.verify() == []


async def test_a_dispute_takes_back_the_whole_pack_and_its_reinstatement_gives_it_back(
    ledger: Ledger,
) -> None:
    await opened(ledger)
    await ledger.fulfil_purchase("p1", PAID)

    disputed = await ledger.reverse_purchase(
        "p1", PaymentEvent("d1", "charge.dispute.created"), disputed=True
    )
    during = await available(ledger)
    won = await ledger.reverse_purchase(
        "p1", PaymentEvent("d2", "charge.dispute.funds_reinstated"), disputed=False
    )

    assert (disputed.taken_back, during) == (500, (0, 0))
    assert (won.given_back, await available(ledger)) == (500, (500, 0))
    assert await ledger.verify() == []


async def test_an_unpaid_purchase_that_expires_is_closed_and_grants_nothing(
    ledger: Ledger,
) -> None:
    await opened(ledger)

    change = await ledger.close_purchase(
        "p1", PaymentEvent("e1", "checkout.session.expired"), PurchaseStatus.EXPIRED
    )

    assert change.purchase.status == PurchaseStatus.EXPIRED
    assert await available(ledger) == (0, 0)


async def test_closing_a_paid_purchase_leaves_it_paid(ledger: Ledger) -> None:
    await opened(ledger)
    await ledger.fulfil_purchase("p1", PAID)

    change = await ledger.close_purchase(
        "p1", PaymentEvent("e1", "checkout.session.expired"), PurchaseStatus.EXPIRED
    )

    assert change.purchase.status == PurchaseStatus.PAID
    assert await available(ledger) == (500, 0)


async def test_an_event_for_a_purchase_that_does_not_exist_is_refused(ledger: Ledger) -> None:
    with pytest.raises(PurchaseNotFound):
        await ledger.fulfil_purchase("nope", PAID)


async def test_purchases_are_found_by_their_external_id_and_payment_and_listed(
    ledger: Ledger,
) -> None:
    await opened(ledger, "p1")
    await opened(ledger, "p2")
    await ledger.fulfil_purchase("p2", PAID, payment_reference="pi_2")

    by_session = await ledger.purchase_by_external_id("stripe", "cs_p1")
    by_payment = await ledger.purchase_by_payment("pi_2")

    assert (by_session and by_session.id, by_payment and by_payment.id) == ("p1", "p2")
    assert {bought.id for bought in await ledger.purchases(ALICE)} == {"p1", "p2"}
