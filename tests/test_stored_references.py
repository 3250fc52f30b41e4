"""Reference images stored with their quote in the database, never in a process's memory.

Each test runs on SQLite and PostgreSQL. A "process" is a service with a ledger
of its own (its own engine, connections and owner identity) on the same
database, which is all another bot process is to the ledger; a restart is one
service closed and the next opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from bot import messages
from bot.app import open_service
from bot.errors import AccountReferencesFull, ImagineError, ReferenceStorageFull, TooManyQuotes
from bot.flow import ImagineService
from bot.parsing import ImagineOptions, ImagineRequest, validate_request
from bot.settings import Settings
from ledger import GenerationStatus, Ledger
from ledger.schema import generations, ledger_entries, quote_references
from providers.base import ReferenceImage
from providers.errors import ContentBlocked
from tests.conftest import FakeClock
from tests.fakes import Script, ScriptedProvider, tiny_png
from tests.test_console_flow import RecordingDelivery

OWNER = "console:local"
GUEST = "console:guest"
MEGABYTE = 1_048_576

MODELS = """
[models.scripted]
provider = "scripted"
provider_model = "scripted-v1"
name = "Scripted"
credits_per_image = 10
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 2
max_reference_images = 3
"""

PICTURES = (ReferenceImage(tiny_png(1), "image/png"), ReferenceImage(tiny_png(2), "image/png"))


def megabytes_of_reference(megabytes: float) -> ReferenceImage:
    """A reference of that size; the flow stores what the adapter prepared, image or not."""
    return ReferenceImage(os.urandom(int(megabytes * MEGABYTE)), "image/png")


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        output_dir=tmp_path / "out",
        generation_timeout_seconds=5,
    )


@contextlib.asynccontextmanager
async def process(
    settings: Settings, clock: FakeClock, **overrides: Any
) -> AsyncIterator[ImagineService]:
    """One bot process on the test's database; the accounts have 100 credits each."""
    async with open_service(
        settings.model_copy(update=overrides), extra_admins=frozenset({OWNER}), clock=clock
    ) as service:
        for account in (OWNER, GUEST):
            await service.credits.open_account(account, welcome_credits=100)
        yield service


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with process(settings, clock) as service:
        yield service


def scripted(service: ImagineService) -> ScriptedProvider:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    return provider


def request_with(service: ImagineService, *references: ReferenceImage) -> ImagineRequest:
    options = ImagineOptions(
        prompt="a fox like this", model="scripted", reference_images=references
    )
    return validate_request(options, service.catalog)


async def stored_references(ledger: Ledger) -> int:
    async with ledger.engine.connect() as connection:
        return await connection.scalar(select(func.count()).select_from(quote_references))


async def ledger_state(ledger: Ledger) -> tuple[int, int, int, int]:
    """Quotes, entries and the owner's balance: what a refused quote must leave as it was."""
    async with ledger.engine.connect() as connection:
        quotes = await connection.scalar(select(func.count()).select_from(generations))
        entries = await connection.scalar(select(func.count()).select_from(ledger_entries))
    balance = await ledger.balance(OWNER)
    return quotes, entries, balance.available, balance.held


async def refusal_of(service: ImagineService, account: str, request: ImagineRequest) -> str:
    with pytest.raises(ImagineError) as refused:
        await service.quote(account, request)
    return refused.value.message


# -- stored, read back, and gone ---------------------------------------------------


async def test_a_quote_confirmed_after_a_restart_generates_with_its_references(
    settings: Settings, clock: FakeClock
) -> None:
    async with process(settings, clock) as before:
        quote = await before.quote(OWNER, request_with(before, *PICTURES))

    async with process(settings, clock) as after:
        outcome = await after.confirm(quote.id, OWNER, RecordingDelivery())
        assert scripted(after).requests[0].reference_images == PICTURES

    assert outcome.generation.status == GenerationStatus.COMPLETED


async def test_a_quote_made_in_one_process_is_generated_by_another(
    settings: Settings, clock: FakeClock
) -> None:
    async with process(settings, clock) as first, process(settings, clock) as second:
        quote = await first.quote(OWNER, request_with(first, *PICTURES))

        outcome = await second.confirm(quote.id, OWNER, RecordingDelivery())

        assert scripted(second).requests[0].reference_images == PICTURES
        assert outcome.generation.owner == second.ledger.owner != first.ledger.owner


@pytest.mark.parametrize("ending", ["completed", "failed", "cancelled"])
async def test_a_settled_generation_leaves_no_references(
    service: ImagineService, ending: str
) -> None:
    quote = await service.quote(OWNER, request_with(service, *PICTURES))
    assert await stored_references(service.ledger) == 2

    if ending == "cancelled":
        await service.cancel(quote.id, OWNER)
    else:
        if ending == "failed":
            scripted(service).script = Script(images=0, error=ContentBlocked("no"))
        outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())
        assert outcome.generation.status == ending

    assert await stored_references(service.ledger) == 0


async def test_the_sweep_purges_the_references_of_expired_quotes(
    service: ImagineService, clock: FakeClock
) -> None:
    quote = await service.quote(OWNER, request_with(service, *PICTURES))
    clock.advance(seconds=service.quote_ttl.total_seconds() + 1)

    await service.recover()

    assert await stored_references(service.ledger) == 0
    assert (await service.ledger.generation(quote.id)).status == GenerationStatus.EXPIRED


async def test_the_sweep_keeps_the_references_of_a_held_generation_whose_quote_expired(
    service: ImagineService, clock: FakeClock
) -> None:
    quote = await service.quote(OWNER, request_with(service, *PICTURES))
    held = await service.hold(quote.id, OWNER)
    clock.advance(seconds=service.quote_ttl.total_seconds() + 1)

    await service.recover()
    await service.generate(held, RecordingDelivery())

    assert scripted(service).requests[0].reference_images == PICTURES


async def test_a_generation_whose_references_are_missing_is_released(
    service: ImagineService,
) -> None:
    quote = await service.quote(OWNER, request_with(service, *PICTURES))
    async with service.ledger.engine.begin() as connection:
        await connection.execute(delete(quote_references).where(quote_references.c.position == 1))

    outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())

    assert outcome.message == messages.failure("references_lost")
    assert scripted(service).requests == []
    assert (await service.ledger.balance(OWNER)).available == 100


async def test_a_reference_that_no_longer_matches_its_digest_is_never_sent(
    service: ImagineService,
) -> None:
    quote = await service.quote(OWNER, request_with(service, *PICTURES))
    async with service.ledger.engine.begin() as connection:
        await connection.execute(update(quote_references).values(data=b"something else"))

    outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())

    assert outcome.message == messages.failure("references_lost")
    assert scripted(service).requests == []


# -- the limits ----------------------------------------------------------------------


async def test_quotes_past_the_limit_per_minute_are_refused_and_change_nothing(
    settings: Settings, clock: FakeClock
) -> None:
    async with process(settings, clock, quotes_per_minute=3) as service:
        for _ in range(3):
            await service.quote(OWNER, request_with(service))
        before = await ledger_state(service.ledger)

        refused = await refusal_of(service, OWNER, request_with(service))

        assert refused == TooManyQuotes(3).message
        assert await ledger_state(service.ledger) == before


async def test_the_limit_per_minute_counts_only_the_last_minute(
    settings: Settings, clock: FakeClock
) -> None:
    async with process(settings, clock, quotes_per_minute=1) as service:
        await service.quote(OWNER, request_with(service))
        clock.advance(seconds=61)

        await service.quote(OWNER, request_with(service))


async def test_references_past_the_account_limit_are_refused_and_change_nothing(
    settings: Settings, clock: FakeClock
) -> None:
    async with process(settings, clock, reference_storage_mb_per_account=1) as service:
        await service.quote(OWNER, request_with(service, megabytes_of_reference(0.6)))
        before = await ledger_state(service.ledger)
        another = megabytes_of_reference(0.6)

        refused = await refusal_of(service, OWNER, request_with(service, another))

        pending = int(0.6 * MEGABYTE)
        assert refused == AccountReferencesFull(pending, len(another.data), MEGABYTE).message
        assert await ledger_state(service.ledger) == before
        assert await stored_references(service.ledger) == 1


async def test_references_past_the_total_limit_are_refused_to_any_account(
    settings: Settings, clock: FakeClock
) -> None:
    async with process(settings, clock, reference_storage_mb_total=1) as service:
        await service.quote(OWNER, request_with(service, megabytes_of_reference(0.6)))

        refused = await refusal_of(
            service, GUEST, request_with(service, megabytes_of_reference(0.6))
        )

        assert refused == messages.REFERENCE_STORAGE_FULL
        assert await stored_references(service.ledger) == 1


@pytest.mark.parametrize("ending", ["cancelled", "expired"])
async def test_references_of_an_ended_quote_count_no_more(
    settings: Settings, clock: FakeClock, ending: str
) -> None:
    async with process(settings, clock, reference_storage_mb_per_account=1) as service:
        quote = await service.quote(OWNER, request_with(service, megabytes_of_reference(0.6)))
        if ending == "cancelled":
            await service.cancel(quote.id, OWNER)
        else:
            # Not yet swept: an expired quote's references count against no one.
            clock.advance(seconds=service.quote_ttl.total_seconds() + 1)

        await service.quote(OWNER, request_with(service, megabytes_of_reference(0.6)))


async def quotes_at_once(
    settings: Settings, clock: FakeClock, asks: int, accounts: tuple[str, ...], **limits: int
) -> list[BaseException | None]:
    """``asks`` quotes with 0.6 MB references at once, alternately from two processes and accounts."""
    async with (
        process(settings, clock, **limits) as first,
        process(settings, clock, **limits) as second,
    ):
        services = (first, second)

        async def ask(number: int) -> None:
            service = services[number % 2]
            reference = megabytes_of_reference(0.6)
            await service.quote(accounts[number % len(accounts)], request_with(service, reference))

        return await asyncio.gather(
            *(ask(number) for number in range(asks)), return_exceptions=True
        )


async def test_concurrent_quotes_cannot_both_pass_the_account_limit(
    settings: Settings, clock: FakeClock
) -> None:
    results = await quotes_at_once(settings, clock, 6, (OWNER,), reference_storage_mb_per_account=1)

    assert results.count(None) == 1
    assert all(isinstance(result, AccountReferencesFull) for result in results if result)


async def test_concurrent_quotes_of_two_accounts_cannot_both_pass_the_total_limit(
    settings: Settings, clock: FakeClock
) -> None:
    results = await quotes_at_once(settings, clock, 6, (OWNER, GUEST), reference_storage_mb_total=1)

    assert results.count(None) == 1
    assert all(isinstance(result, ReferenceStorageFull) for result in results if result)


async def test_concurrent_quotes_cannot_pass_the_limit_per_minute(
    settings: Settings, clock: FakeClock
) -> None:
    results = await quotes_at_once(settings, clock, 8, (OWNER,), quotes_per_minute=3)

    assert results.count(None) == 3
    assert all(isinstance(result, TooManyQuotes) for result in results if result)
