"""The ledger's operations and refusals, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import update
from sqlalchemy.engine import make_url

from ledger import (
    AccountNotFound,
    Balance,
    EntryKind,
    Generation,
    GenerationNotFound,
    GenerationStatus,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidTransition,
    LeaseHeld,
    Ledger,
    NewGeneration,
    QuoteExpired,
    WrongAccount,
    create_engine,
    migrate,
    transient,
)
from ledger.schema import accounts
from tests.conftest import POSTGRES_ADMIN_DSN, FakeClock, postgres_database

ALICE = "discord:1001"
BOB = "discord:1002"


async def funded(ledger: Ledger, account: str = ALICE, credits: int = 100) -> None:
    await ledger.grant(
        account, credits, actor="test", reason="funding", idempotency_key=f"fund:{account}"
    )


def new_quote(
    clock: FakeClock,
    generation_id: str = "g1",
    account: str = ALICE,
    images: int = 2,
    credits_per_image: int = 10,
) -> NewGeneration:
    return NewGeneration(
        id=generation_id,
        account_id=account,
        model_id="local-sketch",
        provider="local",
        provider_model="procedural-v1",
        prompt="a lighthouse at dusk",
        options={"resolution": "1K", "aspect_ratio": "1:1"},
        images_requested=images,
        credits_per_image=credits_per_image,
        expires_at=clock.now + timedelta(minutes=10),
    )


async def quoted(
    ledger: Ledger,
    clock: FakeClock,
    generation_id: str = "g1",
    account: str = ALICE,
    images: int = 2,
    credits_per_image: int = 10,
) -> None:
    await ledger.create_quote(new_quote(clock, generation_id, account, images, credits_per_image))


async def test_new_account_receives_starting_credits_once(ledger: Ledger) -> None:
    await ledger.ensure_account(ALICE, starting_credits=25)
    balance = await ledger.ensure_account(ALICE, starting_credits=25)
    assert (balance.available, balance.held) == (25, 0)


async def test_a_first_quote_opens_the_account_with_its_starting_credits_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    balance, first = await ledger.open_quote(new_quote(clock, "g1"), starting_credits=50)
    again, second = await ledger.open_quote(new_quote(clock, "g2"), starting_credits=50)

    assert (balance.available, again.available) == (50, 50)
    assert (first.status, second.status) == (GenerationStatus.QUOTED, GenerationStatus.QUOTED)
    assert [entry.kind for entry in await ledger.entries(ALICE)] == [EntryKind.GRANT]


async def test_a_first_quote_records_the_starting_grant_as_a_grant_does(
    ledger: Ledger, clock: FakeClock
) -> None:
    await ledger.open_quote(new_quote(clock, "g1"), starting_credits=50)

    [entry] = await ledger.entries(ALICE)
    assert (entry.kind, entry.amount, entry.actor, entry.reason) == (
        EntryKind.GRANT,
        50,
        "system",
        "starting credits",
    )
    assert await ledger.verify() == []


async def test_a_first_quote_without_starting_credits_opens_an_empty_account(
    ledger: Ledger, clock: FakeClock
) -> None:
    with pytest.raises(InsufficientFunds):
        await ledger.open_quote(new_quote(clock, "g1"), starting_credits=0)

    assert await ledger.balance(ALICE) == Balance(ALICE, available=0, held=0)
    assert await ledger.entries(ALICE) == []


async def test_first_quotes_at_once_from_one_new_account_grant_its_starting_credits_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    quotes = await asyncio.gather(
        *(
            ledger.open_quote(new_quote(clock, f"g{number}"), starting_credits=50)
            for number in range(8)
        )
    )

    assert {balance.available for balance, _ in quotes} == {50}
    assert [entry.kind for entry in await ledger.entries(ALICE)] == [EntryKind.GRANT]
    assert len(await ledger.history(ALICE, include_unconfirmed=True)) == 8
    assert await ledger.verify() == []


async def test_a_burst_of_quotes_from_new_accounts_opens_each_once_and_records_every_quote(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Enough at once to go in groups on PostgreSQL, each account in several of them.
    accounts = [f"user-{number}" for number in range(10)]
    await asyncio.gather(
        *(
            ledger.open_quote(
                replace(new_quote(clock, f"g{number}"), account_id=accounts[number % 10]),
                starting_credits=50,
            )
            for number in range(60)
        )
    )

    for account in accounts:
        assert await ledger.balance(account) == Balance(account, available=50, held=0)
        assert [entry.kind for entry in await ledger.entries(account)] == [EntryKind.GRANT]
        assert len(await ledger.history(account, include_unconfirmed=True)) == 6
    assert await ledger.verify() == []


async def test_a_quote_reads_back_exactly_as_it_was_returned(
    ledger: Ledger, clock: FakeClock
) -> None:
    in_paris = timezone(timedelta(hours=1))
    new = replace(
        new_quote(clock), expires_at=(clock.now + timedelta(minutes=10)).astimezone(in_paris)
    )

    _, returned = await ledger.open_quote(new, starting_credits=50)

    assert await ledger.generation(new.id) == returned
    assert returned.expires_at.tzinfo == UTC


async def test_a_quote_the_balance_does_not_cover_is_refused_and_not_recorded(
    ledger: Ledger, clock: FakeClock
) -> None:
    with pytest.raises(InsufficientFunds) as refusal:
        await ledger.open_quote(new_quote(clock, "g1", images=3), starting_credits=25)

    assert (refusal.value.need, refusal.value.available) == (30, 25)
    assert (await ledger.balance(ALICE)).available == 25
    assert await ledger.history(ALICE, include_unconfirmed=True) == []


async def test_grant_creates_the_account_and_records_an_entry(ledger: Ledger) -> None:
    balance = await ledger.grant(ALICE, 40, actor="admin", reason="prize", idempotency_key="k1")
    assert balance.available == 40
    [entry] = await ledger.entries(ALICE)
    assert (entry.kind, entry.amount, entry.actor, entry.reason) == (
        EntryKind.GRANT,
        40,
        "admin",
        "prize",
    )


async def test_grant_replayed_with_the_same_key_applies_once(ledger: Ledger) -> None:
    first = await ledger.grant(ALICE, 40, actor="admin", reason="prize", idempotency_key="k1")
    second = await ledger.grant(ALICE, 40, actor="admin", reason="prize", idempotency_key="k1")
    assert first == second
    assert len(await ledger.entries(ALICE)) == 1


async def test_grant_key_reused_with_another_amount_is_refused(ledger: Ledger) -> None:
    await ledger.grant(ALICE, 40, actor="admin", reason="prize", idempotency_key="k1")
    with pytest.raises(IdempotencyConflict):
        await ledger.grant(ALICE, 41, actor="admin", reason="prize", idempotency_key="k1")
    assert (await ledger.balance(ALICE)).available == 40


@pytest.mark.parametrize("amount", [0, -5])
async def test_grant_of_a_non_positive_amount_is_refused(ledger: Ledger, amount: int) -> None:
    with pytest.raises(InvalidAmount):
        await ledger.grant(ALICE, amount, actor="admin", reason="", idempotency_key="k")
    assert not await ledger.account_exists(ALICE)


async def test_revoke_takes_available_credits(ledger: Ledger) -> None:
    await funded(ledger)
    balance = await ledger.revoke(ALICE, 30, actor="admin", reason="refund", idempotency_key="r1")
    assert balance.available == 70
    assert (await ledger.entries(ALICE, limit=1))[0].available_delta == -30


async def test_revoke_beyond_the_available_balance_is_refused(ledger: Ledger) -> None:
    await funded(ledger, credits=20)
    with pytest.raises(InsufficientFunds) as refusal:
        await ledger.revoke(ALICE, 21, actor="admin", reason="", idempotency_key="r1")
    assert refusal.value.available == 20
    assert (await ledger.balance(ALICE)).available == 20


async def test_revoke_of_an_unknown_account_is_refused(ledger: Ledger) -> None:
    with pytest.raises(AccountNotFound):
        await ledger.revoke(ALICE, 1, actor="admin", reason="", idempotency_key="r1")


async def test_balance_of_an_unknown_account_is_refused(ledger: Ledger) -> None:
    with pytest.raises(AccountNotFound):
        await ledger.balance(ALICE)


async def test_hold_moves_the_price_from_available_to_held(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    generation = await ledger.hold("g1", ALICE)
    assert generation.status == GenerationStatus.RUNNING
    assert generation.credits_held == 20
    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.held) == (80, 20)


async def test_hold_without_enough_credits_is_refused_and_the_quote_stays(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger, credits=15)
    await quoted(ledger, clock)
    with pytest.raises(InsufficientFunds) as refusal:
        await ledger.hold("g1", ALICE)
    assert (refusal.value.need, refusal.value.available) == (20, 15)
    assert (await ledger.generation("g1")).status == GenerationStatus.QUOTED
    assert (await ledger.balance(ALICE)).available == 15


async def test_hold_by_another_account_is_refused(ledger: Ledger, clock: FakeClock) -> None:
    await funded(ledger)
    await funded(ledger, BOB)
    await quoted(ledger, clock)
    with pytest.raises(WrongAccount):
        await ledger.hold("g1", BOB)
    assert (await ledger.balance(BOB)).held == 0


async def test_hold_after_expiry_is_refused_and_marks_the_quote_expired(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    clock.advance(minutes=11)
    with pytest.raises(QuoteExpired):
        await ledger.hold("g1", ALICE)
    assert (await ledger.generation("g1")).status == GenerationStatus.EXPIRED
    assert (await ledger.balance(ALICE)).available == 100


async def test_second_hold_of_the_same_quote_is_refused(ledger: Ledger, clock: FakeClock) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    await ledger.hold("g1", ALICE)
    with pytest.raises(InvalidTransition) as refusal:
        await ledger.hold("g1", ALICE)
    assert refusal.value.status == GenerationStatus.RUNNING
    assert (await ledger.balance(ALICE)).held == 20


async def test_cancelled_quote_cannot_be_held(ledger: Ledger, clock: FakeClock) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    await ledger.cancel("g1", ALICE)
    with pytest.raises(InvalidTransition):
        await ledger.hold("g1", ALICE)


async def test_capture_charges_delivered_images_and_releases_the_rest(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock, images=3)
    await ledger.hold("g1", ALICE)
    generation = await ledger.capture("g1", 1)
    assert (generation.status, generation.images_delivered, generation.credits_charged) == (
        GenerationStatus.PARTIAL,
        1,
        10,
    )
    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.held) == (90, 0)
    kinds = [entry.kind for entry in await ledger.entries(ALICE)]
    assert kinds == [EntryKind.RELEASE, EntryKind.CAPTURE, EntryKind.HOLD, EntryKind.GRANT]


async def test_settlement_entries_say_what_was_delivered_and_why_the_rest_returned(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock, "g1", images=3)
    await quoted(ledger, clock, "g2", images=2)
    await ledger.hold("g1", ALICE)
    await ledger.hold("g2", ALICE)
    await ledger.capture("g1", 1)
    await ledger.release("g2", error_code="blocked", error_message="The filter blocked it.")
    entries = await ledger.entries(ALICE)
    assert [(entry.kind, entry.amount, entry.actor, entry.reason) for entry in entries[:3]] == [
        (EntryKind.RELEASE, 20, "system", "blocked"),
        (EntryKind.RELEASE, 20, "system", "2 of 3 images not delivered"),
        (EntryKind.CAPTURE, 10, "system", "1 of 3 images delivered"),
    ]
    released = await ledger.generation("g2")
    assert (released.status, released.error_code, released.error_message) == (
        GenerationStatus.FAILED,
        "blocked",
        "The filter blocked it.",
    )


async def test_capture_of_every_image_completes_the_generation(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    await ledger.hold("g1", ALICE)
    generation = await ledger.capture("g1", 2)
    assert generation.status == GenerationStatus.COMPLETED
    assert (await ledger.balance(ALICE)).available == 80


async def test_release_returns_the_whole_hold_and_records_why(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    await ledger.hold("g1", ALICE)
    generation = await ledger.release("g1", error_code="blocked", error_message="Blocked.")
    assert (generation.status, generation.error_code, generation.credits_charged) == (
        GenerationStatus.FAILED,
        "blocked",
        0,
    )
    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.held) == (100, 0)


async def test_settling_twice_keeps_the_first_settlement(ledger: Ledger, clock: FakeClock) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    await ledger.hold("g1", ALICE)
    first = await ledger.capture("g1", 2)
    again = await ledger.release("g1", error_code="timeout", error_message="late")
    assert again == first
    assert (await ledger.balance(ALICE)).available == 80


async def test_what_a_hold_and_its_settlements_answer_is_the_generation_as_stored(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock)

    held = await ledger.hold("g1", ALICE)
    assert held == await ledger.generation("g1")
    assert (held.confirmed_at.tzinfo, held.options["resolution"]) == (UTC, "1K")
    captured = await ledger.capture("g1", 1)
    assert captured == await ledger.generation("g1")
    assert await ledger.release("g1", error_code="late", error_message="late") == captured


async def test_settling_a_quote_that_was_never_held_is_refused(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    with pytest.raises(InvalidTransition):
        await ledger.capture("g1", 2)


async def test_a_settlement_whose_hold_is_missing_from_the_account_is_refused_and_changes_nothing(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    held = await ledger.hold("g1", ALICE)
    async with ledger.engine.begin() as connection:
        await connection.execute(update(accounts).where(accounts.c.id == ALICE).values(held=0))

    with pytest.raises(InvalidTransition, match="missing its hold"):
        await ledger.capture("g1", 2)

    assert await ledger.generation("g1") == held
    assert len(await ledger.entries(ALICE)) == 2


async def test_concurrent_confirms_hold_only_what_the_balance_covers(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger, credits=50)
    for number in range(20):
        await quoted(ledger, clock, generation_id=f"g{number}", images=1)
    results = await asyncio.gather(
        *(ledger.hold(f"g{number}", ALICE) for number in range(20)), return_exceptions=True
    )
    held = [result for result in results if not isinstance(result, Exception)]
    refused = [result for result in results if isinstance(result, InsufficientFunds)]
    assert (len(held), len(refused)) == (5, 15)
    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.held) == (0, 50)
    assert await ledger.verify() == []


async def test_concurrent_confirms_of_one_quote_hold_once(ledger: Ledger, clock: FakeClock) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    results = await asyncio.gather(
        *(ledger.hold("g1", ALICE) for _ in range(10)), return_exceptions=True
    )
    assert sum(not isinstance(result, Exception) for result in results) == 1
    assert all(isinstance(r, InvalidTransition) for r in results if isinstance(r, Exception))
    assert (await ledger.balance(ALICE)).held == 20


async def test_concurrent_capture_and_release_of_one_hold_apply_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    await ledger.hold("g1", ALICE)
    capture, release = await asyncio.gather(
        ledger.capture("g1", 2), ledger.release("g1", error_code="timeout", error_message="late")
    )
    assert capture == release
    balance = await ledger.balance(ALICE)
    assert balance.held == 0
    assert balance.available in (80, 100)
    assert await ledger.verify() == []


async def test_concurrent_grants_add_up_exactly(ledger: Ledger) -> None:
    await asyncio.gather(
        *(
            ledger.grant(ALICE, 3, actor="admin", reason="", idempotency_key=f"k{number}")
            for number in range(25)
        )
    )
    assert (await ledger.balance(ALICE)).available == 75


async def test_history_lists_confirmed_generations_newest_first(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    for generation_id in ("g1", "g2", "g3"):
        await quoted(ledger, clock, generation_id=generation_id)
    await ledger.hold("g1", ALICE)
    await ledger.hold("g3", ALICE)
    assert [g.id for g in await ledger.history(ALICE)] == ["g3", "g1"]
    assert [g.id for g in await ledger.history(ALICE, include_unconfirmed=True)] == [
        "g3",
        "g2",
        "g1",
    ]


async def test_history_shows_the_link_recorded_when_the_images_were_posted(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    await ledger.hold("g1", ALICE)
    await ledger.mark_posted("g1", 2, "https://chat.example/messages/7")
    await ledger.capture("g1", 2)
    [generation] = await ledger.history(ALICE)
    assert generation.posted_link == "https://chat.example/messages/7"


async def test_auto_confirm_is_off_until_an_account_sets_it(ledger: Ledger) -> None:
    assert await ledger.auto_confirm_under(ALICE) == 0


async def test_auto_confirm_setting_is_replaced_by_the_next_one(ledger: Ledger) -> None:
    await ledger.set_auto_confirm_under(ALICE, 20)
    await ledger.set_auto_confirm_under(ALICE, 5)
    assert (await ledger.auto_confirm_under(ALICE), await ledger.auto_confirm_under(BOB)) == (5, 0)


# -- leases: who may settle a running generation ---------------------------------

LONG = timedelta(hours=1)
RUN_OUT = timedelta(0)
"""A lease that has run out by the time anyone looks: the database's clock has moved on."""


async def running_g1(ledger: Ledger, clock: FakeClock, *, lease: timedelta) -> Generation:
    """Alice's generation g1, two images at 10 credits, held by this process for ``lease``."""
    await funded(ledger)
    await quoted(ledger, clock)
    return await ledger.hold("g1", ALICE, lease=lease)


@contextlib.asynccontextmanager
async def another_bot(database_url: str, clock: FakeClock) -> AsyncIterator[Ledger]:
    """A second process on the same database, with an identity of its own."""
    other = Ledger(create_engine(database_url), clock, owner="other-process")
    try:
        yield other
    finally:
        await other.close()


async def test_a_hold_makes_its_generation_this_processs_for_the_lease(
    ledger: Ledger, clock: FakeClock
) -> None:
    held = await running_g1(ledger, clock, lease=LONG)
    assert held.owner == ledger.owner
    assert held.lease_until is not None and held.lease_until > held.confirmed_at


async def test_a_lease_is_timed_by_the_database_not_by_the_bots_clock(
    ledger: Ledger, clock: FakeClock
) -> None:
    await running_g1(ledger, clock, lease=timedelta(minutes=1))
    clock.advance(hours=5)
    assert await ledger.expired_leases() == []


async def test_a_generation_whose_lease_ran_out_is_released_as_interrupted(
    ledger: Ledger, clock: FakeClock
) -> None:
    await running_g1(ledger, clock, lease=RUN_OUT)

    assert await ledger.expired_leases() == ["g1"]
    released = await ledger.settle_abandoned("g1", reason="The bot restarted.", posted_reason="")

    assert released is not None
    assert (released.status, released.error_code, released.error_message) == (
        GenerationStatus.FAILED,
        "interrupted",
        "The bot restarted.",
    )
    assert await ledger.balance(ALICE) == Balance(ALICE, available=100, held=0)


async def test_a_generation_whose_lease_lasts_is_not_settled_as_abandoned(
    ledger: Ledger, clock: FakeClock
) -> None:
    await running_g1(ledger, clock, lease=LONG)

    assert await ledger.expired_leases() == []
    assert await ledger.settle_abandoned("g1", reason="", posted_reason="") is None
    assert (await ledger.balance(ALICE)).held == 20


async def test_a_renewed_lease_keeps_its_generation_from_the_sweep(
    ledger: Ledger, clock: FakeClock
) -> None:
    await running_g1(ledger, clock, lease=RUN_OUT)
    await ledger.renew_leases({"g1"}, LONG)
    assert await ledger.expired_leases() == []


async def test_only_its_owner_renews_a_lease(
    ledger: Ledger, clock: FakeClock, database_url: str
) -> None:
    await running_g1(ledger, clock, lease=RUN_OUT)
    async with another_bot(database_url, clock) as other:
        await other.renew_leases({"g1"}, LONG)
    assert await ledger.expired_leases() == ["g1"]


async def test_an_abandoned_generation_whose_images_were_posted_is_charged_for_them(
    ledger: Ledger, clock: FakeClock
) -> None:
    await running_g1(ledger, clock, lease=RUN_OUT)
    await ledger.mark_posted("g1", 1)

    settled = await ledger.settle_abandoned(
        "g1", reason="released", posted_reason="charged for what was posted"
    )

    assert settled is not None
    assert (settled.status, settled.credits_charged, settled.error_message) == (
        GenerationStatus.PARTIAL,
        10,
        "charged for what was posted",
    )
    assert await ledger.balance(ALICE) == Balance(ALICE, available=90, held=0)
    assert await ledger.verify() == []


async def test_another_process_cannot_settle_a_generation_whose_lease_lasts(
    ledger: Ledger, clock: FakeClock, database_url: str
) -> None:
    await running_g1(ledger, clock, lease=LONG)
    async with another_bot(database_url, clock) as other:
        with pytest.raises(LeaseHeld):
            await other.release("g1", error_code="interrupted", error_message="")
    assert (await ledger.capture("g1", 2)).credits_charged == 20


async def test_another_process_may_settle_a_generation_once_its_lease_ran_out(
    ledger: Ledger, clock: FakeClock, database_url: str
) -> None:
    await running_g1(ledger, clock, lease=RUN_OUT)
    async with another_bot(database_url, clock) as other:
        released = await other.release("g1", error_code="interrupted", error_message="")
    assert released.status == GenerationStatus.FAILED
    assert await ledger.balance(ALICE) == Balance(ALICE, available=100, held=0)


async def test_a_sweep_that_read_an_expired_lease_before_its_owner_renewed_it_settles_nothing(
    ledger: Ledger, clock: FakeClock, database_url: str
) -> None:
    await running_g1(ledger, clock, lease=RUN_OUT)
    async with another_bot(database_url, clock) as sweeper:
        seen_expired = await sweeper.expired_leases()
        # Between the sweep's read and its settlement, the owner renews and posts.
        await ledger.renew_leases({"g1"}, LONG)
        await ledger.mark_posted("g1", 2)
        assert await sweeper.settle_abandoned("g1", reason="", posted_reason="") is None

    captured = await ledger.capture("g1", 2)

    assert seen_expired == ["g1"]
    assert (captured.status, captured.credits_charged) == (GenerationStatus.COMPLETED, 20)
    assert await ledger.balance(ALICE) == Balance(ALICE, available=80, held=0)


async def test_a_sweep_settles_with_the_images_posted_after_it_read_the_list(
    ledger: Ledger, clock: FakeClock, database_url: str
) -> None:
    await running_g1(ledger, clock, lease=RUN_OUT)
    async with another_bot(database_url, clock) as sweeper:
        assert await sweeper.expired_leases() == ["g1"]
        await ledger.mark_posted("g1", 2)
        settled = await sweeper.settle_abandoned("g1", reason="", posted_reason="posted")

    assert settled is not None
    assert (settled.status, settled.credits_charged) == (GenerationStatus.COMPLETED, 20)
    assert await ledger.capture("g1", 2) == settled


async def test_expired_quotes_are_marked_expired(ledger: Ledger, clock: FakeClock) -> None:
    await funded(ledger)
    await quoted(ledger, clock)
    clock.advance(minutes=11)
    assert await ledger.expire_quotes() == 1
    assert (await ledger.generation("g1")).status == GenerationStatus.EXPIRED


async def test_verify_is_clean_after_every_kind_of_operation(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await ledger.revoke(ALICE, 5, actor="admin", reason="", idempotency_key="r1")
    await quoted(ledger, clock, generation_id="g1")
    await quoted(ledger, clock, generation_id="g2")
    await ledger.hold("g1", ALICE)
    await ledger.hold("g2", ALICE)
    await ledger.capture("g1", 1)
    assert await ledger.verify() == []


async def test_verify_names_an_account_whose_balance_was_tampered_with(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await funded(ledger, BOB)
    async with ledger.engine.begin() as connection:
        await connection.execute(
            update(accounts).where(accounts.c.id == BOB).values(available=1_000)
        )
    [discrepancy] = await ledger.verify()
    assert (discrepancy.account, discrepancy.stored_available, discrepancy.entries_available) == (
        BOB,
        1_000,
        100,
    )


async def test_state_reads_none_until_written(ledger: Ledger) -> None:
    assert await ledger.read_state("discord:commands") is None


async def test_state_keeps_the_last_value_written(ledger: Ledger) -> None:
    await ledger.write_state("discord:commands", "first")
    await ledger.write_state("discord:commands", "second")

    assert await ledger.read_state("discord:commands") == "second"


LOCK_LEASE = timedelta(seconds=30)


async def test_an_exclusive_section_runs_in_one_process_at_a_time(
    ledger: Ledger, clock: FakeClock, database_url: str
) -> None:
    seen: list[str] = []

    async def section(who: Ledger, name: str) -> None:
        async with who.exclusive("discord:commands", lease=LOCK_LEASE, poll_seconds=0.01):
            seen.append(f"{name} in")
            # Long enough for the other to try, and have to wait, meanwhile.
            await asyncio.sleep(0.1)
            seen.append(f"{name} out")

    async with another_bot(database_url, clock) as other:
        await asyncio.gather(section(ledger, "first"), section(other, "second"))

    assert seen in (
        ["first in", "first out", "second in", "second out"],
        ["second in", "second out", "first in", "first out"],
    )
    # Freed on the way out: nothing is left to wait for.
    assert await ledger.read_state("lock:discord:commands") is None


async def test_a_lock_left_by_a_holder_that_died_is_taken_over_once_its_lease_ran_out(
    ledger: Ledger, clock: FakeClock, database_url: str
) -> None:
    lease = timedelta(seconds=0.3)
    # Entered and never left, as by a process killed inside the section.
    abandoned = ledger.exclusive("discord:commands", lease=lease)
    await abandoned.__aenter__()
    async with another_bot(database_url, clock) as other:
        started = time.monotonic()
        async with other.exclusive("discord:commands", lease=lease, poll_seconds=0.01):
            waited = time.monotonic() - started
            held_by = await other.read_state("lock:discord:commands")
    # Its late exit frees only its own claim, which is no longer there.
    await abandoned.__aexit__(None, None, None)

    assert waited >= 0.2
    assert held_by is not None and held_by.startswith("other-process:")


async def test_a_section_that_fails_frees_the_lock(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError):
        async with ledger.exclusive("discord:commands", lease=LOCK_LEASE):
            raise RuntimeError("the sync failed")

    async with asyncio.timeout(1), ledger.exclusive("discord:commands", lease=LOCK_LEASE):
        pass


async def test_many_engines_racing_like_separate_processes_hold_only_what_is_covered(
    database_url: str, clock: FakeClock
) -> None:
    engines = [create_engine(database_url) for _ in range(4)]
    ledgers = [Ledger(engine, clock) for engine in engines]
    try:
        await migrate.upgrade(engines[0])
        k = 5
        await funded(ledgers[0], credits=10 * k)
        for number in range(20 * k):
            await quoted(ledgers[0], clock, generation_id=f"g{number}", images=1)
        results = await asyncio.gather(
            *(ledgers[number % 4].hold(f"g{number}", ALICE) for number in range(20 * k)),
            return_exceptions=True,
        )
        held = [result for result in results if not isinstance(result, BaseException)]
        others = {type(result) for result in results if isinstance(result, BaseException)}
        assert len(held) == k
        assert others == {InsufficientFunds}
        balance = await ledgers[1].balance(ALICE)
        assert (balance.available, balance.held) == (0, 10 * k)
        assert await ledgers[2].verify() == []
    finally:
        for each in ledgers:
            await each.close()


async def test_concurrent_grants_and_holds_on_one_account_keep_the_sum_exact(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger, credits=10)
    for number in range(30):
        await quoted(ledger, clock, generation_id=f"g{number}", images=1, credits_per_image=5)
    grants = [
        ledger.grant(ALICE, 5, actor="admin", reason="", idempotency_key=f"top-up{number}")
        for number in range(30)
    ]
    holds = [ledger.hold(f"g{number}", ALICE) for number in range(30)]
    results = await asyncio.gather(*grants, *holds, return_exceptions=True)

    held = sum(1 for result in results[30:] if not isinstance(result, BaseException))
    balance = await ledger.balance(ALICE)
    assert balance.available >= 0
    assert (balance.available + balance.held, balance.held) == (10 + 30 * 5, held * 5)
    assert await ledger.verify() == []


@contextlib.asynccontextmanager
async def postgres_ledger(clock: FakeClock) -> AsyncIterator[tuple[Ledger, str]]:
    """A ledger on a PostgreSQL database of its own, and that database's URL."""
    async with postgres_database() as url:
        engine = create_engine(url)
        await migrate.upgrade(engine)
        ledger = Ledger(engine, clock)
        try:
            yield ledger, url
        finally:
            await ledger.close()


async def close_every_connection_to(url: str) -> None:
    """What a server restart does to the pool's connections."""
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        # With a timeout, each call returns once its backend has exited.
        await admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = $1",
            make_url(url).database,
        )
    finally:
        await admin.close()


@pytest.mark.postgres
async def test_connections_the_server_closed_are_replaced_without_an_error(
    clock: FakeClock,
) -> None:
    async with postgres_ledger(clock) as (ledger, url):
        await funded(ledger)
        await close_every_connection_to(url)

        await ledger.grant(ALICE, 5, actor="admin", reason="", idempotency_key="after")
        assert (await ledger.balance(ALICE)).available == 105


@pytest.mark.postgres
async def test_a_quote_after_the_server_closed_the_connections_is_recorded(
    clock: FakeClock,
) -> None:
    async with postgres_ledger(clock) as (ledger, url):
        await ledger.open_quote(new_quote(clock, "before"), starting_credits=50)
        await close_every_connection_to(url)

        balance, quoted = await ledger.open_quote(new_quote(clock, "after"), starting_credits=50)
        assert (balance.available, quoted.id) == (50, "after")
        assert (await ledger.generation("after")).status == GenerationStatus.QUOTED


@contextlib.asynccontextmanager
async def another_process(url: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """Two connections of a process sharing the database: one to act, one to watch the first wait."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    other, watcher = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        yield other, watcher
    finally:
        await other.close()
        await watcher.close()


async def until_a_statement_waits_for_a_lock(watcher: asyncpg.Connection) -> None:
    for _ in range(1000):
        if await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no statement came to wait for the lock")


@pytest.mark.postgres
async def test_a_first_quote_racing_another_process_opening_the_account_is_still_recorded(
    clock: FakeClock,
) -> None:
    async with postgres_ledger(clock) as (ledger, url), another_process(url) as (other, watcher):
        # Another bot process is opening the same account, and has not committed yet.
        opening = other.transaction()
        await opening.start()
        await other.execute(
            "INSERT INTO accounts (id, available, held, created_at, updated_at)"
            " VALUES ($1, 50, 0, now(), now())",
            ALICE,
        )
        entry = await other.fetchval(
            "INSERT INTO ledger_entries (account_id, kind, amount, available_delta,"
            " held_delta, actor, reason, idempotency_key, created_at)"
            " VALUES ($1, 'grant', 50, 50, 0, 'system', 'starting credits', $2, now())"
            " RETURNING id",
            ALICE,
            f"starting-credits:{ALICE}",
        )
        lot = await other.fetchval(
            "INSERT INTO credit_lots (account_id, kind, granted, available, held, created_at)"
            " VALUES ($1, 'promo', 50, 50, 0, now()) RETURNING id",
            ALICE,
        )
        await other.execute(
            "INSERT INTO entry_parts (entry_id, lot_id, available_delta, held_delta)"
            " VALUES ($1, $2, 50, 0)",
            entry,
            lot,
        )
        quoting = asyncio.create_task(ledger.open_quote(new_quote(clock), starting_credits=50))
        await until_a_statement_waits_for_a_lock(watcher)
        await opening.commit()

        balance, quote = await quoting

        assert balance.available == 50
        assert await ledger.generation(quote.id) == quote
        assert [entry.kind for entry in await ledger.entries(ALICE)] == [EntryKind.GRANT]
        assert await ledger.verify() == []


@pytest.mark.postgres
async def test_a_hold_that_waited_for_another_on_the_same_credits_is_refused_with_what_is_left(
    clock: FakeClock,
) -> None:
    async with postgres_ledger(clock) as (ledger, url):
        await funded(ledger, credits=20)
        await quoted(ledger, clock, "g1")
        async with another_process(url) as (other, watcher):
            # Another process is holding 15 of the 20 credits and has not committed yet.
            holding = other.transaction()
            await holding.start()
            await other.execute(
                "UPDATE accounts SET available = available - 15, held = held + 15 WHERE id = $1",
                ALICE,
            )
            confirming = asyncio.create_task(ledger.hold("g1", ALICE))
            await until_a_statement_waits_for_a_lock(watcher)
            await holding.commit()

            with pytest.raises(InsufficientFunds) as refusal:
                await confirming

        assert (refusal.value.need, refusal.value.available) == (20, 5)
        assert (await ledger.generation("g1")).status == GenerationStatus.QUOTED


@pytest.mark.postgres
async def test_a_hold_whose_quote_another_process_confirmed_meanwhile_is_refused_as_handled(
    clock: FakeClock,
) -> None:
    async with postgres_ledger(clock) as (ledger, url):
        await funded(ledger)
        await quoted(ledger, clock, "g1")
        async with another_process(url) as (other, watcher):
            # Another process is confirming the same quote and has not committed yet:
            # this hold reads it as quoted, then waits to apply.
            confirming_elsewhere = other.transaction()
            await confirming_elsewhere.start()
            await other.execute(
                "UPDATE generations SET status = 'running', credits_held = 20 WHERE id = 'g1'"
            )
            await other.execute(
                "UPDATE accounts SET available = available - 20, held = held + 20 WHERE id = $1",
                ALICE,
            )
            confirming = asyncio.create_task(ledger.hold("g1", ALICE))
            await until_a_statement_waits_for_a_lock(watcher)
            await confirming_elsewhere.commit()

            with pytest.raises(InvalidTransition):
                await confirming

        assert await ledger.balance(ALICE) == Balance(ALICE, available=80, held=20)
        assert [entry.kind for entry in await ledger.entries(ALICE)] == [EntryKind.GRANT]


async def record_how_each_generation_change_commits(url: str) -> asyncpg.Connection:
    """A deferred trigger: it runs at commit, so it sees the setting the commit follows."""
    watcher = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    await watcher.execute(
        """
        CREATE TABLE commits (number serial, change text, synchronous_commit text);
        CREATE FUNCTION record_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO commits (change, synchronous_commit)
            VALUES (TG_OP, current_setting('synchronous_commit'));
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER record_commit AFTER INSERT OR UPDATE ON generations
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION record_commit();
        """
    )
    return watcher


@pytest.mark.postgres
async def test_every_change_is_committed_waiting_for_the_disk(clock: FakeClock) -> None:
    async with postgres_ledger(clock) as (ledger, url):
        watcher = await record_how_each_generation_change_commits(url)
        try:
            await ledger.open_quote(new_quote(clock, "g1"), starting_credits=50)
            await ledger.hold("g1", ALICE)
            await ledger.open_quote(new_quote(clock, "g2"), starting_credits=50)
            await ledger.capture("g1", images_delivered=2)

            commits = await watcher.fetch(
                "SELECT change, synchronous_commit FROM commits ORDER BY number"
            )
        finally:
            await watcher.close()
        assert [tuple(commit) for commit in commits] == [
            ("INSERT", "on"),
            ("UPDATE", "on"),
            ("INSERT", "on"),
            ("UPDATE", "on"),
        ]


def sqlite_error(path: Path, action: Callable[[sqlite3.Connection], object]) -> sqlite3.Error:
    """The error the real ``sqlite3`` raises for ``action`` on a database at ``path``."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        action(connection)
    except sqlite3.Error as error:
        return error
    finally:
        connection.close()
    raise AssertionError("the action did not fail")


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "errors.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE t (x INTEGER)")
    return path


def test_a_busy_sqlite_database_is_worth_trying_again(sqlite_file: Path) -> None:
    locker = sqlite3.connect(sqlite_file, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        busy = sqlite3.connect(sqlite_file, timeout=0)
        with pytest.raises(sqlite3.OperationalError) as raised:
            busy.execute("SELECT * FROM t")
        busy.close()
    finally:
        locker.close()
    assert transient(raised.value)


def test_a_read_only_sqlite_database_is_not_worth_trying_again(sqlite_file: Path) -> None:
    error = sqlite_error(
        sqlite_file, lambda connection: connection.execute("INSERT INTO t VALUES (1)")
    )
    assert "readonly" in str(error)
    assert not transient(error)
    assert not transient(sa_exc.OperationalError("INSERT", {}, error))


def test_a_missing_sqlite_table_is_not_worth_trying_again(sqlite_file: Path) -> None:
    error = sqlite_error(
        sqlite_file, lambda connection: connection.execute("SELECT * FROM nowhere")
    )
    assert "no such table" in str(error)
    assert not transient(sa_exc.OperationalError("SELECT", {}, error))


@pytest.mark.parametrize(
    ("error", "worth_trying_again"),
    [
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError(), True),
        (asyncpg.ConnectionDoesNotExistError("closed in the middle"), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), True),
        (asyncpg.DeadlockDetectedError("deadlock detected"), True),
        (sa_exc.TimeoutError("QueuePool limit reached"), True),
        (asyncpg.PostgresSyntaxError("syntax error at or near ?"), False),
        (asyncpg.UndefinedTableError('relation "generations" does not exist'), False),
        (
            asyncpg.ReadOnlySQLTransactionError("cannot execute UPDATE in a read-only transaction"),
            False,
        ),
        (sa_exc.ProgrammingError("UPDATE", {}, Exception("no such column")), False),
        (InsufficientFunds(ALICE, 10, 5), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_a_failure_that_may_pass_is_worth_trying_again(
    error: Exception, worth_trying_again: bool
) -> None:
    assert transient(error) is worth_trying_again


async def test_quotes_opened_together_are_refused_with_their_total(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger, credits=30)
    with pytest.raises(InsufficientFunds) as refusal:
        await ledger.open_quotes([new_quote(clock, "g1"), new_quote(clock, "g2")])
    assert (refusal.value.need, refusal.value.available) == (40, 30)
    with pytest.raises(GenerationNotFound):
        await ledger.generation("g1")


async def test_hold_all_holds_every_quote_at_once(ledger: Ledger, clock: FakeClock) -> None:
    await funded(ledger)
    await ledger.open_quotes([new_quote(clock, "g1"), new_quote(clock, "g2", images=1)])
    held = await ledger.hold_all(["g1", "g2"], ALICE)
    assert [generation.credits_held for generation in held] == [20, 10]
    balance = await ledger.balance(ALICE)
    assert (balance.available, balance.held) == (70, 30)


async def test_hold_all_short_of_the_total_holds_nothing(ledger: Ledger, clock: FakeClock) -> None:
    await funded(ledger, credits=40)
    await ledger.open_quotes([new_quote(clock, "g1"), new_quote(clock, "g2")])
    await quoted(ledger, clock, "g3", images=1, credits_per_image=15)
    await ledger.hold("g3", ALICE)
    with pytest.raises(InsufficientFunds) as refusal:
        await ledger.hold_all(["g1", "g2"], ALICE)
    assert (refusal.value.need, refusal.value.available) == (40, 25)
    assert (await ledger.generation("g1")).status == GenerationStatus.QUOTED
    assert (await ledger.balance(ALICE)).held == 15


async def test_a_second_hold_all_of_the_same_quotes_holds_nothing_more(
    ledger: Ledger, clock: FakeClock
) -> None:
    await funded(ledger)
    await ledger.open_quotes([new_quote(clock, "g1"), new_quote(clock, "g2")])
    await ledger.hold_all(["g1", "g2"], ALICE)
    with pytest.raises(InvalidTransition):
        await ledger.hold_all(["g2", "g1"], ALICE)
    assert (await ledger.balance(ALICE)).held == 40
    assert await ledger.verify() == []
