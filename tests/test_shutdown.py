"""Stopping: no new requests, running generations may finish, the rest are released."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot import messages
from bot.errors import ShuttingDown
from bot.flow import ImagineService
from bot.parsing import parse_imagine
from ledger import Generation
from tests.fakes import ScriptedProvider
from tests.test_console_flow import RecordingDelivery, available
from tests.test_limits import scripted, service  # noqa: F401 - fixtures

ANA = "console:ana"


async def test_a_stopping_bot_refuses_new_quotes_with_a_sentence(service: ImagineService) -> None:  # noqa: F811
    service.stop_accepting()

    with pytest.raises(ShuttingDown) as refused:
        await service.quote(ANA, parse_imagine("model:scripted a fox", service.catalog))

    assert refused.value.message == messages.SHUTTING_DOWN


async def test_a_stopping_bot_refuses_a_click_and_charges_nothing(service: ImagineService) -> None:  # noqa: F811
    quote = await service.quote(ANA, parse_imagine("model:scripted a fox", service.catalog))
    service.stop_accepting()

    with pytest.raises(ShuttingDown):
        await service.hold(quote.id, ANA)

    assert await available(service, ANA) == 100


async def test_a_click_whose_hold_ends_after_the_bot_began_stopping_is_refused_and_released(
    service: ImagineService,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quote = await service.quote(ANA, parse_imagine("model:scripted a fox", service.catalog))
    holding = asyncio.Event()
    take_hold = service.ledger.hold

    async def hold_while_the_bot_stops(*arguments: Any, **keywords: Any) -> Generation:
        holding.set()
        await asyncio.sleep(0.1)
        return await take_hold(*arguments, **keywords)

    monkeypatch.setattr(service.ledger, "hold", hold_while_the_bot_stops)
    clicked = asyncio.ensure_future(service.hold(quote.id, ANA))
    await holding.wait()
    service.stop_accepting()

    with pytest.raises(ShuttingDown):
        await clicked
    balance = await service.credits.balance(ANA)
    assert (balance.available, balance.held) == (100, 0)
    assert service.in_flight == 0


async def test_drain_waits_for_running_generations_to_finish(
    service: ImagineService,  # noqa: F811
    scripted: ScriptedProvider,  # noqa: F811
) -> None:
    quote = await service.quote(ANA, parse_imagine("model:scripted a fox", service.catalog))
    running = asyncio.create_task(service.confirm(quote.id, ANA, RecordingDelivery()))
    await scripted.started.wait()
    service.stop_accepting()

    draining = asyncio.create_task(service.drain(10))
    await asyncio.sleep(0)
    assert not draining.done()
    scripted.release.set()

    assert await draining is True
    assert (await running).generation.credits_charged == 10


async def test_drain_gives_up_after_the_grace_period(
    service: ImagineService,  # noqa: F811
    scripted: ScriptedProvider,  # noqa: F811
) -> None:
    quote = await service.quote(ANA, parse_imagine("model:scripted a fox", service.catalog))
    running = asyncio.create_task(service.confirm(quote.id, ANA, RecordingDelivery()))
    await scripted.started.wait()

    assert await service.drain(0.05) is False

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await available(service, ANA) == 100
