"""The money rules by themselves: what a hold and a settlement change, before any database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ledger import (
    EntryKind,
    Generation,
    GenerationStatus,
    InsufficientFunds,
    InvalidTransition,
    QuoteExpired,
    WrongAccount,
    rules,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
ALICE = "discord:1001"


def quote(**changes: object) -> Generation:
    quoted = Generation(
        id="g1",
        account_id=ALICE,
        model_id="local-sketch",
        provider="local",
        provider_model="procedural-v1",
        prompt="a lighthouse at dusk",
        options={},
        channel=None,
        images_requested=3,
        images_delivered=0,
        credits_per_image=10,
        credits_held=0,
        credits_charged=0,
        status=GenerationStatus.QUOTED,
        error_code=None,
        error_message=None,
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=10),
        confirmed_at=None,
        finished_at=None,
    )
    return replace(quoted, **changes)


def running() -> Generation:
    return quote(status=GenerationStatus.RUNNING, credits_held=30, confirmed_at=NOW)


def test_a_hold_moves_the_price_from_available_to_held_with_one_line() -> None:
    hold = rules.hold(quote(), ALICE, available=30, now=NOW)

    assert hold.price == 30
    assert hold.line == rules.Line(
        EntryKind.HOLD, 30, -30, 30, ALICE, "hold for generation g1", "hold:g1"
    )


def test_a_hold_of_another_accounts_quote_is_refused_before_anything_else() -> None:
    with pytest.raises(WrongAccount):
        rules.hold(quote(status=GenerationStatus.CANCELLED), "discord:1002", 0, NOW)


def test_a_hold_of_a_quote_no_longer_waiting_is_refused_before_its_expiry_or_price() -> None:
    with pytest.raises(InvalidTransition):
        rules.hold(quote(status=GenerationStatus.RUNNING, expires_at=NOW), ALICE, 0, NOW)


def test_a_hold_at_the_moment_of_expiry_is_refused_as_expired() -> None:
    with pytest.raises(QuoteExpired):
        rules.hold(quote(expires_at=NOW), ALICE, available=1_000, now=NOW)


def test_a_hold_not_covered_says_what_it_needs_and_what_is_there() -> None:
    with pytest.raises(InsufficientFunds) as refusal:
        rules.hold(quote(), ALICE, available=29, now=NOW)

    assert (refusal.value.need, refusal.value.available) == (30, 29)


def test_a_settlement_charges_each_delivered_image_and_returns_the_rest() -> None:
    settlement = rules.settlement(running(), 1)

    assert (settlement.status, settlement.delivered, settlement.charged, settlement.returned) == (
        GenerationStatus.PARTIAL,
        1,
        10,
        20,
    )
    assert settlement.lines == (
        rules.Line(
            EntryKind.CAPTURE, 10, 0, -10, "system", "1 of 3 images delivered", "capture:g1"
        ),
        rules.Line(
            EntryKind.RELEASE, 20, 20, -20, "system", "2 of 3 images not delivered", "release:g1"
        ),
    )


def test_a_settlement_of_every_image_completes_with_a_capture_line_only() -> None:
    settlement = rules.settlement(running(), 3)

    assert settlement.status == GenerationStatus.COMPLETED
    assert [line.kind for line in settlement.lines] == [EntryKind.CAPTURE]


def test_a_release_fails_the_generation_and_gives_its_error_code_as_the_reason() -> None:
    settlement = rules.settlement(running(), 0, "blocked", "The filter blocked it.")

    assert (settlement.status, settlement.charged, settlement.error_message) == (
        GenerationStatus.FAILED,
        0,
        "The filter blocked it.",
    )
    assert [(line.kind, line.amount, line.reason) for line in settlement.lines] == [
        (EntryKind.RELEASE, 30, "blocked")
    ]


@pytest.mark.parametrize(("reported", "charged_for"), [(-1, 0), (7, 3)])
def test_a_settlement_charges_no_fewer_than_none_and_no_more_than_asked_for(
    reported: int, charged_for: int
) -> None:
    settlement = rules.settlement(running(), reported)

    assert (settlement.delivered, settlement.charged) == (charged_for, charged_for * 10)


def test_only_a_running_generation_can_be_settled() -> None:
    with pytest.raises(InvalidTransition):
        rules.settlement(quote(), 1)


def test_a_generation_confirmed_and_finished_counts_as_settled_already() -> None:
    settled = replace(running(), status=GenerationStatus.COMPLETED)

    assert rules.already_settled(settled)
    assert not rules.already_settled(quote(status=GenerationStatus.EXPIRED))
    assert not rules.already_settled(running())


def test_a_new_account_opens_with_one_grant_line_only_when_given_credits() -> None:
    assert rules.opening(ALICE, 50) == (
        rules.Line(
            EntryKind.GRANT, 50, 50, 0, "system", "starting credits", f"starting-credits:{ALICE}"
        ),
    )
    assert rules.opening(ALICE, 0) == ()


@pytest.mark.parametrize(
    ("held", "requested", "delivered", "charged"),
    [
        (36, 4, 4, 36),  # every image: the whole hold, to the credit
        (36, 4, 1, 9),
        (36, 4, 3, 27),
        (25, 3, 2, 16),  # 16.67, rounded down
        (1, 4, 1, 0),  # a request at the 1-credit minimum: one image of four is no whole credit
        (36, 4, 0, 0),
        (30, 3, 2, 20),  # before price rules: exactly per image x delivered
    ],
)
def test_a_partial_delivery_pays_its_share_of_the_hold_rounded_down(
    held: int, requested: int, delivered: int, charged: int
) -> None:
    assert rules.delivered_charge(held, requested, delivered) == charged


def test_a_discounted_partial_settlement_charges_the_share_and_returns_the_rest() -> None:
    discounted = quote(
        status=GenerationStatus.RUNNING, images_requested=4, credits_held=36, confirmed_at=NOW
    )
    settled = rules.settlement(discounted, 3)
    assert (settled.charged, settled.returned) == (27, 9)
    assert [line.reason for line in settled.lines] == [
        "3 of 4 images delivered",
        "1 of 4 images not delivered",
    ]
