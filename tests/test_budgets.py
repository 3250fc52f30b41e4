"""Monthly spending caps per provider: committed spend counted this calendar month, a quote that
would cross the budget refused in one sentence, admins told once at 80 %, a new month fresh."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from bot import messages
from bot.app import open_service
from bot.errors import ProviderOverBudget
from bot.flow import ImagineService
from bot.parsing import parse_imagine
from bot.pricing import PricingError, load_pricing
from bot.settings import Settings
from providers import PROVIDERS
from tests.conftest import FakeClock
from tests.test_console_flow import RecordingDelivery

ANA = "console:ana"
MODELS = """
[models.scripted]
provider = "scripted"
provider_model = "scripted-v1"
name = "Scripted"
credits_per_image = 10
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 4
cost_per_image_usd = 0.25

[models.local-sketch]
provider = "local"
provider_model = "procedural-v1"
name = "Local Sketch"
credits_per_image = 1
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 4
"""
PRICING = "[providers.scripted]\nmonthly_budget_usd = 1.0\n"


@pytest.fixture
async def service(
    database_url: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[ImagineService]:
    (tmp_path / "models.toml").write_text(MODELS)
    (tmp_path / "pricing.toml").write_text(PRICING)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        models_file=tmp_path / "models.toml",
        pricing_file=tmp_path / "pricing.toml",
    )
    async with open_service(settings, extra_admins=frozenset({"console:bank"}), clock=clock) as svc:
        await svc.credits.grant("console:bank", ANA, 1000, "budget test")
        yield svc


async def generate(service: ImagineService, text: str) -> None:
    quote = await service.quote(ANA, parse_imagine(text, service.catalog))
    await service.confirm(quote.id, ANA, RecordingDelivery())


def test_a_provider_budget_loads_from_the_pricing_file(tmp_path: Path) -> None:
    path = tmp_path / "pricing.toml"
    path.write_text("[providers.google]\nmonthly_budget_usd = 300\n")

    pricing = load_pricing(path, required=True, providers=PROVIDERS)

    assert pricing.budgets == {"google": Decimal("300.0")}


def test_a_budget_for_a_provider_that_does_not_exist_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "pricing.toml"
    path.write_text("[providers.gogle]\nmonthly_budget_usd = 300\n")

    with pytest.raises(PricingError) as refused:
        load_pricing(path, required=True, providers=PROVIDERS)

    [problem] = refused.value.problems
    assert f"{path}: key 'providers.gogle': no such provider" in problem


async def test_a_quote_that_would_cross_the_budget_is_refused_naming_the_cause(
    service: ImagineService,
) -> None:
    await generate(service, "model:scripted count:3 a fox")  # $0.75 of $1.00

    with pytest.raises(ProviderOverBudget) as refused:
        await service.quote(ANA, parse_imagine("model:scripted count:2 a fox", service.catalog))
    fits = await service.quote(ANA, parse_imagine("model:scripted a fox", service.catalog))

    assert messages.over_budget_reason("scripted", Decimal("1.0")) in refused.value.message
    assert fits.price == 10


async def test_a_quote_past_the_budget_offers_another_provider_s_model(
    service: ImagineService,
) -> None:
    await generate(service, "model:scripted count:4 a fox")  # the whole $1.00

    with pytest.raises(ProviderOverBudget) as refused:
        await service.quote(ANA, parse_imagine("model:scripted count:2 a fox", service.catalog))

    offered = refused.value.alternative
    assert offered is not None
    assert (offered.request.model.id, offered.price) == ("local-sketch", 2)
    assert refused.value.message.startswith(
        "Scripted is unavailable right now: the bot's monthly budget for scripted ($1.00) is"
        " used up for this month · Try Local Sketch · 2 credits\n"
    )


async def test_images_held_by_running_generations_count_against_the_budget(
    service: ImagineService,
) -> None:
    running = await service.quote(
        ANA, parse_imagine("model:scripted count:4 a fox", service.catalog)
    )
    await service.ledger.hold(running.id, ANA)

    with pytest.raises(ProviderOverBudget):
        await service.quote(ANA, parse_imagine("model:scripted a fox", service.catalog))


async def test_other_providers_models_are_not_held_back_by_one_s_budget(
    service: ImagineService,
) -> None:
    await generate(service, "model:scripted count:4 a fox")

    quote = await service.quote(ANA, parse_imagine("model:local-sketch a fox", service.catalog))

    assert quote.price == 1


async def test_a_new_month_starts_with_the_whole_budget(
    service: ImagineService, clock: FakeClock
) -> None:
    await generate(service, "model:scripted count:4 a fox")
    clock.advance(days=31)

    quote = await service.quote(ANA, parse_imagine("model:scripted count:4 a fox", service.catalog))

    assert quote.price == 40


async def test_admins_are_told_once_when_spend_passes_eighty_percent(
    service: ImagineService,
) -> None:
    told: list[str] = []

    async def alert(text: str) -> None:
        told.append(text)

    service.budgets.alerts["console"] = alert
    await generate(service, "model:scripted count:3 a fox")  # 75 %: nothing yet
    await generate(service, "model:scripted a fox")  # 100 % after this one
    with pytest.raises(ProviderOverBudget):
        await service.quote(ANA, parse_imagine("model:scripted a fox", service.catalog))

    assert told == [messages.budget_warning("scripted", Decimal("1.0"), Decimal("1.0"))]
    assert (
        service.metrics.registry.get_sample_value(
            "imagine_provider_budget_alerts_total", {"provider": "scripted"}
        )
        == 1
    )
