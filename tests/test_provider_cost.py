"""What each generation cost at the provider: recorded for every image the provider made or may
have made (retries and partial results included), and reported beside revenue and margin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from bot.app import open_service
from bot.flow import ImagineService
from bot.settings import Settings
from ledger.report import build_report
from tests import fake_gemini
from tests.conftest import FakeClock
from tests.fake_gemini import FakeGemini, Reply, blocked_output, error_body
from tests.test_console_flow import OWNER, ScriptedConsole, last_generation

MODELS = """
[models.gemini-3-pro]
provider = "google"
provider_model = "gemini-3-pro-image"
name = "Gemini 3 Pro Image"
credits_per_image = 10
resolutions = ["1K", "2K"]
aspect_ratios = ["1:1"]
max_images = 4
cost_per_image_usd = 0.134
resolution_cost_usd = { "2K" = 0.24 }
"""


@pytest.fixture
async def gemini() -> AsyncIterator[FakeGemini]:
    async with FakeGemini() as server:
        yield server


@pytest.fixture
async def service(
    database_url: str, tmp_path: Path, clock: FakeClock, gemini: FakeGemini
) -> AsyncIterator[ImagineService]:
    (tmp_path / "models.toml").write_text(MODELS)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        models_file=tmp_path / "models.toml",
        output_dir=tmp_path / "out",
        gemini_api_key=fake_gemini.API_KEY,
        gemini_base_url=gemini.base_url,
        gemini_max_attempts=3,
        credit_value_usd=0.02,
    )
    async with open_service(settings, extra_admins=frozenset({OWNER}), clock=clock) as service:
        await service.credits.open_account(OWNER, welcome_credits=100)
        yield service


@pytest.fixture
def console(service: ImagineService, tmp_path: Path) -> ScriptedConsole:
    return ScriptedConsole(service, OWNER, tmp_path / "out")


async def test_a_generation_records_the_provider_s_price_at_its_resolution_per_image(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await console.say("/imagine model:gemini-3-pro count:2 res:2K a harbour", "y")

    generation = await last_generation(service)
    assert generation.cost_per_image_microusd == 240_000
    assert generation.provider_cost_microusd == 480_000


async def test_a_retried_call_costs_only_the_image_it_finally_made(
    console: ScriptedConsole, service: ImagineService, gemini: FakeGemini
) -> None:
    gemini.script(Reply(503, error_body(503, "UNAVAILABLE", "The model is overloaded.")))

    await console.say("/imagine model:gemini-3-pro a harbour", "y")

    generation = await last_generation(service)
    assert len(generation.provider_attempts or []) == 2
    assert generation.provider_cost_microusd == 134_000


async def test_a_partial_generation_costs_the_images_the_provider_made(
    console: ScriptedConsole, service: ImagineService, gemini: FakeGemini
) -> None:
    gemini.script(Reply(body=blocked_output("IMAGE_SAFETY")))

    await console.say("/imagine model:gemini-3-pro count:4 a harbour", "y")

    generation = await last_generation(service)
    assert (generation.images_delivered, generation.provider_cost_microusd) == (3, 402_000)


async def test_a_failed_generation_still_records_what_the_provider_charged(
    console: ScriptedConsole, service: ImagineService, gemini: FakeGemini
) -> None:
    gemini.script(*[Reply(503, error_body(503, "UNAVAILABLE", "Overloaded."))] * 3)

    await console.say("/imagine model:gemini-3-pro a harbour", "y")

    generation = await last_generation(service)
    assert (generation.credits_charged, generation.provider_cost_microusd) == (0, 0)


async def test_the_report_shows_cost_revenue_and_margin_per_model_and_provider(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await console.say("/imagine model:gemini-3-pro count:2 res:2K a harbour", "y")

    report = await build_report(service.ledger.engine, since=None, credit_value_usd=Decimal("0.02"))

    [model] = report.tables()["models"]
    [provider] = report.tables()["providers"]
    money = {"provider_cost_usd": "0.4800", "revenue_usd": "0.4000", "margin_usd": "-0.0800"}
    assert {key: model[key] for key in money} == money
    assert {key: provider[key] for key in money} == money
