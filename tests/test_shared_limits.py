"""USER_CONCURRENCY and the provider limits across processes: on PostgreSQL two bot processes
(two ``ImagineService``s over one database, each with its own identity) share them; on
SQLite, one process, they stay in memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from bot import messages
from bot.app import open_service
from bot.flow import DELIVERY_ALLOWANCE_SECONDS, ImagineService, Outcome
from bot.parsing import parse_imagine
from bot.progress import Generating, ProgressEvent, Queued
from bot.settings import Settings
from ledger.schema import slot_claims
from tests.conftest import FakeClock, SessionPostgres
from tests.fakes import ScriptedProvider
from tests.test_console_flow import MODELS, RecordingDelivery

BANK = "console:bank"
ANA, BEN = "console:ana", "console:ben"


@pytest.fixture
async def postgres_url(session_postgres: SessionPostgres) -> str:
    return await session_postgres.emptied()


@contextlib.asynccontextmanager
async def bot_process(
    tmp_path: Path, database_url: str, clock: FakeClock, *, provider_limit: int, user_limit: int
) -> AsyncIterator[ImagineService]:
    """One bot process: its own ledger identity, providers and slots, on ``database_url``."""
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        provider_limits=f"scripted={provider_limit}",  # type: ignore[arg-type]
        user_concurrency=user_limit,
    )
    async with open_service(
        settings, extra_admins=frozenset({BANK}), clock=clock, serving=False
    ) as service:
        yield service


@contextlib.asynccontextmanager
async def two_processes(
    tmp_path: Path, database_url: str, clock: FakeClock, *, provider_limit: int, user_limit: int
) -> AsyncIterator[tuple[ImagineService, ImagineService]]:
    """Two processes sharing the database; their providers wait for one gate (``gate_of``)."""
    async with (
        bot_process(
            tmp_path, database_url, clock, provider_limit=provider_limit, user_limit=user_limit
        ) as first,
        bot_process(
            tmp_path, database_url, clock, provider_limit=provider_limit, user_limit=user_limit
        ) as second,
    ):
        assert first.ledger.owner != second.ledger.owner
        gate = asyncio.Event()
        for service in (first, second):
            scripted(service).release = gate
        yield first, second


def scripted(service: ImagineService) -> ScriptedProvider:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    return provider


def open_gate(*services: ImagineService) -> None:
    for service in services:
        gate = scripted(service).release
        assert gate is not None
        gate.set()


async def start(
    service: ImagineService, account: str, delivery: RecordingDelivery, prompt: str = "a fox"
) -> asyncio.Task[Outcome]:
    """``account`` asks ``service`` for one image and confirms it; the generation runs on."""
    await service.credits.grant(BANK, account, 10, f"limits test {prompt}")
    quote = await service.quote(account, parse_imagine(f"model:scripted {prompt}", service.catalog))
    return asyncio.create_task(service.confirm(quote.id, account, delivery))


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds (what another process did shows only in the database)."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 (two processes' state, no one event)
            await asyncio.sleep(0.01)


def started(*services: ImagineService) -> int:
    return sum(len(scripted(service).requests) for service in services)


async def claim_rows(service: ImagineService, generation_id: str | None = None) -> int:
    """Rows of ``slot_claims``: all of them, or ``generation_id``'s."""
    query = select(func.count()).select_from(slot_claims)
    if generation_id is not None:
        query = query.where(slot_claims.c.generation_id == generation_id)
    async with service.ledger.engine.connect() as connection:
        return int(await connection.scalar(query) or 0)


class Board:
    """Deliveries that note, across both processes, when each generation starts and ends
    generating (while it holds its slots), and the most generating at once."""

    def __init__(self) -> None:
        self.generating = 0
        self.most = 0
        self.started: list[str] = []

    def delivery(self, name: str) -> RecordingDelivery:
        board = self

        class Noted(RecordingDelivery):
            async def progress(self, event: ProgressEvent) -> None:
                # Both are told inside the generation's slots: the first before the
                # provider is called, the last from within its call.
                if isinstance(event, Generating) and event.finished == 0:
                    board.started.append(name)
                    board.generating += 1
                    board.most = max(board.most, board.generating)
                elif isinstance(event, Generating) and event.finished == event.total:
                    board.generating -= 1
                await super().progress(event)

        return Noted()


@pytest.mark.postgres
async def test_a_user_at_their_limit_in_one_process_waits_in_another_and_is_told_their_place(
    tmp_path: Path, postgres_url: str, clock: FakeClock
) -> None:
    async with two_processes(tmp_path, postgres_url, clock, provider_limit=4, user_limit=1) as (
        first,
        second,
    ):
        running = await start(first, ANA, RecordingDelivery())
        await scripted(first).started.wait()

        waiting = RecordingDelivery()
        queued = await start(second, ANA, waiting, "a cat")
        await waiting.reported.wait()

        assert waiting.events == [Queued(1)]
        assert started(first, second) == 1
        open_gate(first, second)
        await asyncio.gather(running, queued)
        assert [request.prompt for request in scripted(second).requests] == ["a cat"]


@pytest.mark.postgres
async def test_a_provider_limit_holds_across_processes(
    tmp_path: Path, postgres_url: str, clock: FakeClock
) -> None:
    board = Board()
    async with two_processes(tmp_path, postgres_url, clock, provider_limit=2, user_limit=4) as (
        first,
        second,
    ):
        deliveries = [board.delivery(f"user{number}") for number in range(6)]
        tasks = [
            await start((first, second)[number % 2], f"console:user{number}", delivery)
            for number, delivery in enumerate(deliveries)
        ]
        await eventually(lambda: started(first, second) == 2)
        await eventually(lambda: sum(bool(each.events) for each in deliveries) == 6)

        assert started(first, second) == 2
        open_gate(first, second)
        outcomes = await asyncio.gather(*tasks)

    assert [len(outcome.images) for outcome in outcomes] == [1] * 6
    assert board.most == 2


@pytest.mark.postgres
async def test_places_in_line_across_processes_follow_the_order_of_confirming(
    tmp_path: Path, postgres_url: str, clock: FakeClock
) -> None:
    board = Board()
    async with two_processes(tmp_path, postgres_url, clock, provider_limit=1, user_limit=4) as (
        first,
        second,
    ):
        tasks = [await start(first, "console:user0", board.delivery("user0"))]
        await scripted(first).started.wait()
        waiting = []
        for number in range(1, 4):
            delivery = board.delivery(f"user{number}")
            waiting.append(delivery)
            # Alternating processes: the line is one line, whichever process confirmed.
            tasks.append(
                await start((second, first)[number % 2], f"console:user{number}", delivery)
            )
            await delivery.reported.wait()

        assert [delivery.events[0] for delivery in waiting] == [Queued(1), Queued(2), Queued(3)]
        open_gate(first, second)
        await asyncio.gather(*tasks)

    assert board.started == ["user0", "user1", "user2", "user3"]


@pytest.mark.postgres
async def test_a_slot_of_a_process_that_stopped_renewing_goes_to_the_next_in_line(
    tmp_path: Path, postgres_url: str, clock: FakeClock
) -> None:
    async with two_processes(tmp_path, postgres_url, clock, provider_limit=4, user_limit=1) as (
        stalled,
        alive,
    ):
        stuck = await start(stalled, ANA, RecordingDelivery())
        await scripted(stalled).started.wait()
        waiting = RecordingDelivery()
        queued = await start(alive, ANA, waiting, "a cat")
        await waiting.reported.wait()
        assert (waiting.events, scripted(alive).requests) == ([Queued(1)], [])

        # What time does to a process that stopped renewing: its leases run out.
        async with stalled.ledger.engine.begin() as connection:
            await connection.execute(
                update(slot_claims)
                .where(slot_claims.c.owner == stalled.ledger.owner)
                .values(lease_until=datetime(2000, 1, 1, tzinfo=UTC))
            )

        await scripted(alive).wait_for_requests(1)
        assert [request.prompt for request in scripted(alive).requests] == ["a cat"]
        open_gate(stalled, alive)
        await asyncio.gather(stuck, queued)


@pytest.mark.postgres
async def test_a_request_queued_past_its_reply_window_on_another_process_leaves_no_claim(
    tmp_path: Path, postgres_url: str, clock: FakeClock
) -> None:
    async with two_processes(tmp_path, postgres_url, clock, provider_limit=1, user_limit=4) as (
        first,
        second,
    ):
        running = await start(first, ANA, RecordingDelivery())
        await scripted(first).started.wait()
        await second.credits.grant(BANK, BEN, 10, "limits test")
        quote = await second.quote(BEN, parse_imagine("model:scripted a cat", second.catalog))
        second.generation_timeout = timedelta(seconds=1)
        # Room to wait in line for a fifth of a second, then too little left to generate and post.
        reachable_for = 1.1 + DELIVERY_ALLOWANCE_SECONDS + 0.2

        outcome = await second.generate(
            await second.hold(quote.id, BEN), RecordingDelivery(), reachable_for=reachable_for
        )

        assert outcome.message == messages.failure("queued_too_long")
        assert scripted(second).requests == []
        assert await claim_rows(second, quote.id) == 0
        open_gate(first, second)
        await running
        assert await claim_rows(first) == 0


async def test_on_sqlite_the_limits_stay_in_memory_and_write_no_claim(
    tmp_path: Path, clock: FakeClock
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"
    async with bot_process(tmp_path, database_url, clock, provider_limit=1, user_limit=1) as bot:
        scripted(bot).release = asyncio.Event()
        running = await start(bot, ANA, RecordingDelivery())
        await scripted(bot).started.wait()
        waiting = RecordingDelivery()
        queued = await start(bot, ANA, waiting, "a cat")
        await waiting.reported.wait()

        assert waiting.events == [Queued(1)]
        assert await claim_rows(bot) == 0
        open_gate(bot)
        await asyncio.gather(running, queued)
