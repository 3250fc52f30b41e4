"""A settlement the database does not take while the user waits is retried in the background,
until it does, while the process lives; on both databases."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from bot import messages
from bot.flow import ImagineService
from bot.parsing import parse_imagine
from ledger import GenerationStatus
from tests.conftest import run_out_leases
from tests.fakes import fail_first
from tests.test_console_flow import (  # noqa: F401 - fixtures
    OWNER,
    QUICK_RETRY,
    RecordingDelivery,
    models_file,
    sample,
    scripted,
    service,
    settings,
)


async def confirm_while_capture_fails(
    imagine: ImagineService, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Generate one image (10 credits) while the database refuses every capture; its id."""
    imagine.settle_retry = QUICK_RETRY
    fail_first(imagine.ledger, "capture", monkeypatch)
    quote = await imagine.quote(OWNER, parse_imagine("model:scripted a fox", imagine.catalog))
    outcome = await imagine.confirm(quote.id, OWNER, RecordingDelivery())
    assert outcome.report == messages.CAPTURE_DELAYED
    return quote.id


async def test_a_capture_the_database_takes_only_after_the_user_was_told_is_settled_in_the_background(
    service: ImagineService,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generation_id = await confirm_while_capture_fails(service, monkeypatch)
    assert sample(service, "imagine_settlements_pending") == 1

    monkeypatch.undo()  # the database is back
    assert await service.drain(10)

    generation = await service.ledger.generation(generation_id)
    assert (generation.status, generation.credits_charged) == (GenerationStatus.COMPLETED, 10)
    balance = await service.credits.balance(OWNER)
    assert (balance.available, balance.held) == (90, 0)
    assert sample(service, "imagine_settlements_pending") == 0
    assert sample(service, "imagine_settlements_total", kind="capture", reason="completed") == 1
    assert sample(service, "imagine_credits_charged_total", model="scripted") == 10
    assert sample(service, "imagine_settlement_retries_total") > 0
    assert await service.ledger.verify() == []


async def test_a_generation_waiting_for_its_settlement_keeps_its_lease_and_is_not_swept(
    service: ImagineService,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generation_id = await confirm_while_capture_fails(service, monkeypatch)
    await run_out_leases(service.ledger)

    assert await service.recover() == []
    service.heartbeat_interval = timedelta(milliseconds=1)
    sweeper = asyncio.create_task(service.sweep_periodically())
    try:
        for _ in range(500):
            renewed = (await service.ledger.generation(generation_id)).lease_until
            if renewed is not None and renewed.year > 2000:
                break
            await asyncio.sleep(0.01)
    finally:
        sweeper.cancel()

    assert renewed is not None and renewed.year > 2000
    generation = await service.ledger.generation(generation_id)
    assert (generation.status, generation.images_posted) == (GenerationStatus.RUNNING, 1)
    assert (await service.credits.balance(OWNER)).held == 10
