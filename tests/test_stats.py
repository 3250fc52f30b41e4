"""Admins' /stats, below every platform: the last 30 days' figures, which are the report's, and
their chart, on both databases. The platforms' /stats are in test_discord.py, test_slack.py and
test_console_flow.py.

Drawing a chart takes a tenth of a second, so only one test here draws one, on SQLite alone;
the others look at the figures it would be drawn from.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image

from bot import messages
from bot.app import open_service
from bot.errors import NotAdmin, RequestError, UnknownModel
from bot.flow import ImagineService
from bot.settings import Settings
from bot.stats import CHART_PIXELS, STATS_DAYS, Statistics, parse_stats_arguments
from ledger.report import build_report
from providers.errors import ContentBlocked
from tests.conftest import FakeClock
from tests.fakes import Script
from tests.test_report import generate

ADMIN, ANA = "console:admin", "console:ana"

MODELS = """
[models.sketch]
provider = "scripted"
provider_model = "sketch-v1"
name = "Sketch"
credits_per_image = 1
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 4

[models.scripted]
provider = "scripted"
provider_model = "scripted-v1"
name = "Scripted"
credits_per_image = 10
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 4
cost_per_image_usd = 0.05
"""

TODAY = date(2026, 12, 31)
"""The last day of the window: the clock starts on 2026-11-24 and moves on 37 days."""


@pytest.fixture
async def service(
    database_url: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[ImagineService]:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    settings = Settings(
        _env_file=None, database_url=database_url, models_file=models_file, credit_value_usd=0.03
    )
    async with open_service(settings, extra_admins=frozenset({ADMIN}), clock=clock) as svc:
        await svc.credits.grant(ADMIN, ANA, 500, "stats test")
        yield svc


@pytest.fixture
async def history(service: ImagineService, clock: FakeClock) -> None:
    """One generation before the window, then three in it, over two days."""
    await generate(service, ANA, "model:scripted a fox", Script())
    clock.advance(days=35)
    await generate(service, ANA, "model:scripted count:2 a fox", Script())
    await generate(service, ANA, "model:scripted a fox", Script(images=0, error=ContentBlocked()))
    clock.advance(days=2)
    await generate(service, ANA, "model:sketch count:3 a fox", Script())


async def test_the_headline_is_the_report_s_figures_over_the_last_30_days(
    service: ImagineService, history: None
) -> None:
    window = await service.stats.window(ADMIN)

    report = await build_report(
        service.ledger.engine,
        since=datetime.combine(TODAY - timedelta(days=STATS_DAYS - 1), time.min, UTC),
        credit_value_usd=Decimal("0.03"),
    )
    headline = window.headline
    assert (headline.generations, headline.images, headline.credits, headline.failed) == (
        sum(m.generations for m in report.models),
        sum(m.images_delivered for m in report.models),
        sum(m.credits_charged for m in report.models),
        sum(m.failed for m in report.models),
    )
    money = report.money(headline.credits, sum(m.provider_cost_microusd for m in report.models))
    assert (headline.provider_cost_usd, headline.revenue_usd, headline.margin_usd) == (
        Decimal(money["provider_cost_usd"]),
        Decimal(money["revenue_usd"]),
        Decimal(money["margin_usd"]),
    )
    # The generation 37 days ago is left out.
    assert (headline.generations, headline.images, headline.credits, headline.failed) == (
        3,
        5,
        23,
        1,
    )
    assert headline.revenue_usd == Decimal("0.69")


async def test_every_day_of_the_window_is_charted_a_day_without_credits_as_0(
    service: ImagineService, history: None
) -> None:
    window = await service.stats.window(ADMIN)

    assert window.days[0] == TODAY - timedelta(days=29)
    assert window.days[-1] == TODAY
    assert list(window.credits_by_model) == ["scripted", "sketch"]
    assert window.credits_by_model["scripted"] == (0,) * 27 + (20, 0, 0)
    assert window.credits_by_model["sketch"] == (0,) * 29 + (3,)


async def test_one_model_s_stats_are_its_figures_alone(
    service: ImagineService, history: None
) -> None:
    window = await service.stats.window(ADMIN, "Scripted ")

    assert window.model_id == "scripted"
    assert list(window.credits_by_model) == ["scripted"]
    headline = window.headline
    assert (headline.generations, headline.credits, headline.failed) == (2, 20, 1)
    assert headline.provider_cost_usd == Decimal("0.1")


@pytest.mark.sqlite_only  # Drawing is the same whatever the database; one chart is enough.
async def test_the_chart_is_a_png_of_the_chart_s_size_beside_the_headline(
    service: ImagineService, history: None
) -> None:
    answer = await service.stats.answer(ADMIN)

    assert answer.chart is not None
    assert answer.chart.filename == "stats-2026-12-31.png"
    with Image.open(io.BytesIO(answer.chart.png)) as chart:
        assert (chart.format, chart.size) == ("PNG", CHART_PIXELS)
    window = await service.stats.window(ADMIN)
    assert answer.text == messages.stats_headline(
        STATS_DAYS, window.days[0], TODAY, None, window.headline, Decimal("0.03")
    )
    assert answer.text.splitlines()[1] == "3 generations · 5 images · 23 credits spent"


async def test_someone_not_an_admin_is_refused(service: ImagineService, history: None) -> None:
    with pytest.raises(NotAdmin) as refused:
        await service.stats.answer(ANA)

    assert refused.value.message == messages.STATS_NOT_ADMIN


async def test_an_unknown_model_is_one_sentence_naming_the_closest(
    service: ImagineService, history: None
) -> None:
    with pytest.raises(UnknownModel) as refused:
        await service.stats.answer(ADMIN, "scriptd")

    assert refused.value.message == messages.unknown_model("scriptd", ["scripted"])


async def test_a_model_gone_from_the_registry_still_has_its_stats(
    service: ImagineService, history: None
) -> None:
    registry = service.catalog.registry
    without = replace(registry, models=tuple(m for m in registry if m.id != "scripted"))

    window = await Statistics(service.credits, without).window(ADMIN, "scripted")

    assert window.headline.credits == 20


async def test_no_generations_yet_is_a_sentence_and_no_chart(service: ImagineService) -> None:
    answer = await service.stats.answer(ADMIN)

    assert (answer.text, answer.chart) == (messages.no_stats(STATS_DAYS, None), None)


async def test_a_model_without_generations_in_the_window_is_a_sentence_and_no_chart(
    service: ImagineService,
) -> None:
    answer = await service.stats.answer(ADMIN, "scripted")

    assert (answer.text, answer.chart) == (messages.no_stats(STATS_DAYS, "scripted"), None)


@pytest.mark.parametrize(
    ("typed", "model"),
    [("", None), ("model:gemini-3-pro", "gemini-3-pro"), ("  gemini-3-pro ", "gemini-3-pro")],
)
def test_stats_takes_a_model_as_an_option_or_alone(typed: str, model: str | None) -> None:
    assert parse_stats_arguments(typed) == model


@pytest.mark.parametrize("typed", ["gemini-3-pro local-sketch", "model:a b", "model:"])
def test_anything_but_one_model_is_refused(typed: str) -> None:
    with pytest.raises(RequestError):
        parse_stats_arguments(typed)
