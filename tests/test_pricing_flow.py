"""Price rules end to end through the console, on both databases: the quote shows how the
price was made, the hold and the charge follow it, and the generation records it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bot.app import open_service
from bot.flow import ImagineService
from bot.settings import Settings
from ledger import GenerationStatus
from providers.errors import ContentBlocked
from tests.conftest import FakeClock
from tests.fakes import Script, ScriptedProvider
from tests.test_console_flow import MODELS, OWNER, ScriptedConsole, available, last_generation

PRICING = """
[batch]
discounts = { 4 = 10, 8 = 20 }
"""

# "local-sketch" keeps the file's discounts; "scripted" has its own.
OWN_DISCOUNTS = MODELS.replace(
    "max_reference_images = 2\n", "max_reference_images = 2\nbatch_discounts = { 2 = 5 }\n"
)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    models = tmp_path / "models.toml"
    models.write_text(OWN_DISCOUNTS)
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(PRICING)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models,
        pricing_file=pricing,
        output_dir=tmp_path / "out",
        generation_timeout_seconds=5,
    )


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with open_service(settings, extra_admins=frozenset({OWNER}), clock=clock) as service:
        await service.credits.open_account(OWNER, welcome_credits=100)
        yield service


@pytest.fixture
def console(service: ImagineService, settings: Settings) -> ScriptedConsole:
    return ScriptedConsole(service, OWNER, settings.output_dir)


@pytest.fixture
def scripted(service: ImagineService) -> ScriptedProvider:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    return provider


async def set_price(
    service: ImagineService,
    *,
    model_id: str | None,
    credits_per_image: int | None = None,
    percent_off: int | None = None,
    until: datetime | None = None,
) -> None:
    await service.ledger.set_price_override(
        OWNER,
        model_id=model_id,
        credits_per_image=credits_per_image,
        percent_off=percent_off,
        until=until,
        actor="cli:admin",
        reason="a friend",
    )


async def test_a_batch_discount_is_shown_held_charged_and_recorded(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/imagine model:local-sketch count:4 a fox", "y")
    assert "Price: 4 × 1 = 4 · batch −10% → 3 credits" in said
    assert "Generate 4 images · 3 credits? [y/N] " in console.questions
    assert "Done: 4 images for 3 credits." in said
    generation = await last_generation(service)
    assert (generation.price, generation.credits_charged) == (3, 3)
    assert generation.options["list_price"] == 4
    assert generation.options["price_rules"] == [{"rule": "batch", "percent_off": 10}]
    assert await available(service) == 97
    assert await service.ledger.verify() == []


async def test_a_model_s_own_batch_discounts_replace_the_file_s(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/imagine model:scripted count:2 a fox", "n")
    assert "Price: 2 × 10 = 20 · batch −5% → 19 credits" in said
    said = await console.say("/imagine model:scripted count:4 a fox", "n")
    assert "Price: 4 × 10 = 40 · batch −5% → 38 credits" in said


async def test_a_partial_delivery_of_a_discounted_request_pays_its_share(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.script = Script(images=3, error=ContentBlocked("IMAGE_SAFETY"))
    said = await console.say("/imagine model:scripted count:4 a fox", "y")
    # 38 credits held for 4 images; 3 delivered: floor(38 x 3 / 4) = 28, 10 back.
    assert "charged 28 credits" in said
    generation = await last_generation(service)
    assert (generation.status, generation.credits_charged) == (GenerationStatus.PARTIAL, 28)
    assert await available(service) == 72
    assert await service.ledger.verify() == []


async def test_an_account_s_fixed_price_is_shown_beside_the_list_price(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await set_price(service, model_id="scripted", credits_per_image=8)
    said = await console.say("/imagine model:scripted count:1 a fox", "y")
    assert "Price: 1 × 8 = 8 credits" in said
    assert "Your price 8 per image, list 10." in said
    generation = await last_generation(service)
    assert (generation.credits_charged, generation.options["list_price"]) == (8, 10)
    assert generation.options["price_rules"][0]["credits_per_image"] == 8
    assert await available(service) == 92


async def test_an_account_s_percent_off_is_shown_beside_the_list_price(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await set_price(service, model_id=None, percent_off=15)
    said = await console.say("/imagine model:scripted count:3 a fox", "n")
    # 3 x 8.5 = 25.5, less the model's own 5% = 24.225: 24 credits, rounded down once.
    assert "Price: 3 × 8.5 = 25.5 · batch −5% → 24 credits" in said
    assert "Your price 8.5 per image, list 10 (15% off)." in said


async def test_an_expired_override_is_ignored(
    console: ScriptedConsole, service: ImagineService, clock: FakeClock
) -> None:
    await set_price(
        service, model_id="scripted", credits_per_image=2, until=clock.now + timedelta(hours=1)
    )
    clock.advance(hours=2)
    said = await console.say("/imagine model:scripted count:1 a fox", "n")
    assert "Price: 10 credits" in said
    assert "Your price" not in said
