"""Slot claims: a concurrency limit counted in the database, alike for every process sharing it.

The bot uses them on PostgreSQL only (``bot.flow.DatabaseSlots``); the rule is the same on
both databases, so it is tested on both.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from ledger import Ledger, SlotPlace
from ledger.schema import slot_claims
from ledger.slots import lock_key
from tests.conftest import FakeClock
from tests.test_ledger import LONG, RUN_OUT, another_bot, funded, quoted

SCOPE = "provider:local"


async def generations(ledger: Ledger, clock: FakeClock, *ids: str) -> None:
    await funded(ledger)
    for generation_id in ids:
        await quoted(ledger, clock, generation_id)


async def rows(ledger: Ledger) -> list[tuple[str, str, bool]]:
    async with ledger.engine.connect() as connection:
        result = await connection.execute(
            select(
                slot_claims.c.generation_id, slot_claims.c.owner, slot_claims.c.running
            ).order_by(slot_claims.c.id)
        )
        return [(row.generation_id, row.owner, row.running) for row in result]


def test_a_scopes_lock_key_is_a_signed_64_bit_number_every_process_computes_alike() -> None:
    key = lock_key("user:discord:123")

    assert key == lock_key("user:discord:123") != lock_key("user:discord:124")
    assert -(2**63) <= key < 2**63


async def test_a_generation_under_the_limit_gets_a_slot_at_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    await generations(ledger, clock, "g1", "g2")

    first = await ledger.claim_slot("g1", SCOPE, 2, LONG)
    second = await ledger.claim_slot("g2", SCOPE, 2, LONG)

    assert (first.position, second.position) == (0, 0)
    assert await rows(ledger) == [("g1", ledger.owner, True), ("g2", ledger.owner, True)]


async def test_a_generation_over_the_limit_waits_and_is_told_its_place(
    ledger: Ledger, clock: FakeClock
) -> None:
    await generations(ledger, clock, "g1", "g2", "g3")
    await ledger.claim_slot("g1", SCOPE, 1, LONG)

    second = await ledger.claim_slot("g2", SCOPE, 1, LONG)
    third = await ledger.claim_slot("g3", SCOPE, 1, LONG)

    assert (second.position, third.position) == (1, 2)
    assert second.claim_id < third.claim_id


async def test_places_in_line_follow_the_order_of_queueing_across_processes(
    ledger: Ledger, clock: FakeClock, database_url: str
) -> None:
    await generations(ledger, clock, "g1", "g2", "g3")
    async with another_bot(database_url, clock) as other:
        await ledger.claim_slot("g1", SCOPE, 1, LONG)
        await other.claim_slot("g2", SCOPE, 1, LONG)
        await ledger.claim_slot("g3", SCOPE, 1, LONG)
        await ledger.free_slot("g1", SCOPE)

        # g3's process asks first, but g2 queued before it: g3 must not jump the line.
        asked_first = await ledger.claim_slot("g3", SCOPE, 1, LONG)
        asked_next = await other.claim_slot("g2", SCOPE, 1, LONG)

    assert (asked_first.position, asked_next.position) == (2, 0)


async def test_a_freed_slot_goes_to_the_next_in_line(ledger: Ledger, clock: FakeClock) -> None:
    await generations(ledger, clock, "g1", "g2")
    await ledger.claim_slot("g1", SCOPE, 1, LONG)
    waiting = await ledger.claim_slot("g2", SCOPE, 1, LONG)

    await ledger.free_slot("g1", SCOPE)

    assert await ledger.claim_slot("g2", SCOPE, 1, LONG) == SlotPlace(waiting.claim_id, 0)
    assert await rows(ledger) == [("g2", ledger.owner, True)]


async def test_limits_of_different_scopes_do_not_count_each_other(
    ledger: Ledger, clock: FakeClock
) -> None:
    await generations(ledger, clock, "g1", "g2")
    await ledger.claim_slot("g1", "user:discord:1001", 1, LONG)

    assert (await ledger.claim_slot("g2", "user:discord:1002", 1, LONG)).position == 0


async def test_a_slot_whose_lease_ran_out_is_dropped_and_the_next_in_line_gets_it(
    ledger: Ledger, clock: FakeClock, database_url: str
) -> None:
    await generations(ledger, clock, "g1", "g2")
    async with another_bot(database_url, clock) as stopped:
        await stopped.claim_slot("g1", SCOPE, 1, RUN_OUT)

    assert (await ledger.claim_slot("g2", SCOPE, 1, LONG)).position == 0
    assert await rows(ledger) == [("g2", ledger.owner, True)]


async def test_a_waiter_whose_row_expired_is_queued_again_at_the_back(
    ledger: Ledger, clock: FakeClock
) -> None:
    await generations(ledger, clock, "g1", "g2", "g3")
    await ledger.claim_slot("g1", SCOPE, 1, LONG)
    stalled = await ledger.claim_slot("g2", SCOPE, 1, RUN_OUT)
    await ledger.claim_slot("g3", SCOPE, 1, LONG)

    again = await ledger.claim_slot("g2", SCOPE, 1, LONG)

    assert again.claim_id > stalled.claim_id
    assert again.position == 2


async def test_renewing_leases_renews_this_processs_slots_and_no_one_elses(
    ledger: Ledger, clock: FakeClock, database_url: str
) -> None:
    await generations(ledger, clock, "g1", "g2")
    await ledger.claim_slot("g1", SCOPE, 2, LONG)
    async with another_bot(database_url, clock) as other:
        await other.claim_slot("g2", SCOPE, 2, LONG)
    # Renewed for no time at all, so that what was renewed shows as expired.
    await ledger.renew_leases({"g1", "g2"}, RUN_OUT)

    assert await ledger.drop_expired_slots() == 1
    assert await rows(ledger) == [("g2", "other-process", True)]


async def test_freeing_a_slot_leaves_no_row(ledger: Ledger, clock: FakeClock) -> None:
    await generations(ledger, clock, "g1")
    await ledger.claim_slot("g1", SCOPE, 1, LONG)

    await ledger.free_slot("g1", SCOPE)

    assert await rows(ledger) == []


async def test_a_lease_of_a_slot_is_timed_by_the_database_not_by_the_bots_clock(
    ledger: Ledger, clock: FakeClock
) -> None:
    await generations(ledger, clock, "g1")
    await ledger.claim_slot("g1", SCOPE, 1, timedelta(minutes=1))
    clock.advance(hours=5)

    assert await ledger.drop_expired_slots() == 0
