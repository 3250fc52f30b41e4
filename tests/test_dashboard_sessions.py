"""The dashboard's login links and sessions in the ledger, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from ledger import Ledger
from ledger.schema import dashboard_tokens
from tests.conftest import FakeClock

ADMIN = "discord:42"
TEN_MINUTES = timedelta(minutes=10)
EIGHT_HOURS = timedelta(hours=8)


async def test_a_link_is_exchanged_for_a_session_of_its_account(ledger: Ledger) -> None:
    link = await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)

    exchanged = await ledger.exchange_dashboard_link(link, EIGHT_HOURS)

    assert exchanged is not None
    session, opened = exchanged
    assert opened.account == ADMIN
    found = await ledger.dashboard_session(session)
    assert found is not None and found.account == ADMIN


async def test_a_link_is_exchanged_only_once(ledger: Ledger) -> None:
    link = await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)
    await ledger.exchange_dashboard_link(link, EIGHT_HOURS)

    assert await ledger.exchange_dashboard_link(link, EIGHT_HOURS) is None
    assert await ledger.dashboard_link(link) is None


async def test_of_two_exchanges_racing_for_one_link_one_gets_a_session(ledger: Ledger) -> None:
    link = await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)

    results = await asyncio.gather(
        *(ledger.exchange_dashboard_link(link, EIGHT_HOURS) for _ in range(8))
    )

    assert sum(result is not None for result in results) == 1


async def test_a_link_past_ten_minutes_is_refused(ledger: Ledger, clock: FakeClock) -> None:
    link = await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)
    clock.advance(minutes=10)

    assert await ledger.exchange_dashboard_link(link, EIGHT_HOURS) is None


async def test_looking_at_a_link_does_not_use_it(ledger: Ledger) -> None:
    link = await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)

    seen = await ledger.dashboard_link(link)

    assert seen is not None and seen.account == ADMIN
    assert await ledger.exchange_dashboard_link(link, EIGHT_HOURS) is not None


async def test_a_session_ends_after_its_lifetime(ledger: Ledger, clock: FakeClock) -> None:
    link = await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)
    exchanged = await ledger.exchange_dashboard_link(link, EIGHT_HOURS)
    assert exchanged is not None

    clock.advance(hours=8)

    assert await ledger.dashboard_session(exchanged[0]) is None


async def test_logging_out_ends_the_session(ledger: Ledger) -> None:
    link = await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)
    exchanged = await ledger.exchange_dashboard_link(link, EIGHT_HOURS)
    assert exchanged is not None

    assert await ledger.end_dashboard_session(exchanged[0]) is True

    assert await ledger.dashboard_session(exchanged[0]) is None
    assert await ledger.end_dashboard_session(exchanged[0]) is False


async def test_a_link_cannot_be_used_as_a_session(ledger: Ledger) -> None:
    link = await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)

    assert await ledger.dashboard_session(link) is None


async def test_only_the_hash_of_a_token_is_stored(ledger: Ledger) -> None:
    link = await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)

    async with ledger.engine.connect() as connection:
        stored = (await connection.execute(select(dashboard_tokens.c.token_sha256))).scalars()
        assert link not in list(stored)


async def test_tokens_a_day_past_their_expiry_are_deleted_by_the_next_new_one(
    ledger: Ledger, clock: FakeClock
) -> None:
    await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)
    clock.advance(days=1, minutes=11)

    await ledger.new_dashboard_link(ADMIN, TEN_MINUTES)

    async with ledger.engine.connect() as connection:
        rows = (await connection.execute(select(dashboard_tokens))).all()
    assert len(rows) == 1
