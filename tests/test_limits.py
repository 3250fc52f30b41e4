"""Concurrency limits: per provider (with per-provider overrides) and per user, with queue positions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import open_service
from bot.flow import ImagineService
from bot.parsing import parse_imagine
from bot.progress import Queued
from bot.settings import Settings
from tests.conftest import FakeClock
from tests.fakes import ScriptedProvider
from tests.test_console_flow import MODELS, RecordingDelivery

ANA, BEN = "console:ana", "console:ben"


@pytest.fixture
async def service(tmp_path: Path, clock: FakeClock) -> AsyncIterator[ImagineService]:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}",
        models_file=models_file,
        provider_concurrency=1,
        provider_limits="scripted=3",  # type: ignore[arg-type]
        user_concurrency=1,
    )
    async with open_service(settings, extra_admins=frozenset({"console:bank"}), clock=clock) as svc:
        for account in (ANA, BEN):
            await svc.credits.grant("console:bank", account, 100, "limits test")
        yield svc


@pytest.fixture
def scripted(service: ImagineService) -> ScriptedProvider:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    provider.release = asyncio.Event()
    return provider


async def start(
    service: ImagineService, account: str, prompt: str = "a fox"
) -> tuple[asyncio.Task[object], RecordingDelivery]:
    text = f"model:scripted {prompt}"
    quote = await service.quote(account, parse_imagine(text, service.catalog))
    delivery = RecordingDelivery()
    return asyncio.create_task(service.confirm(quote.id, account, delivery)), delivery


def test_provider_limits_are_read_as_provider_equals_number() -> None:
    settings = Settings(_env_file=None, provider_limits="google=8, openai=2")  # type: ignore[arg-type]

    assert (settings.concurrency_for("google"), settings.concurrency_for("local")) == (8, 4)


def test_a_malformed_provider_limit_names_the_bad_part() -> None:
    with pytest.raises(ValueError, match="'google' is not provider=number"):
        Settings(_env_file=None, provider_limits="google")  # type: ignore[arg-type]


async def test_a_user_at_their_limit_waits_and_is_told_their_place(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    first, _ = await start(service, ANA)
    await scripted.started.wait()

    second, waiting = await start(service, ANA)
    await waiting.reported.wait()

    assert waiting.events == [Queued(1)]
    assert len(scripted.requests) == 1
    scripted.release.set()
    await asyncio.gather(first, second)
    assert len(scripted.requests) == 2


async def test_one_busy_user_does_not_hold_up_another(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    first, _ = await start(service, ANA)
    await scripted.started.wait()
    second, _ = await start(service, ANA)

    other, _ = await start(service, BEN, "a cat")
    await scripted.wait_for_requests(2)

    assert [request.prompt for request in scripted.requests] == ["a fox", "a cat"]
    scripted.release.set()
    await asyncio.gather(first, second, other)


async def test_a_per_provider_limit_overrides_the_default(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    users = [f"console:user{number}" for number in range(4)]
    for account in users:
        await service.credits.grant("console:bank", account, 100, "limits test")
    started = [await start(service, account) for account in users]
    await scripted.wait_for_requests(3)
    await started[3][1].reported.wait()

    assert len(scripted.requests) == 3
    assert started[3][1].events == [Queued(1)]
    scripted.release.set()
    await asyncio.gather(*(task for task, _ in started))
