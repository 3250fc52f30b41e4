"""Admins' price overrides from the console's /price, on both databases: what they set is the
next quote's price, and every refusal is one sentence with nothing changed.

The same text form reaches ``PriceAdmin`` from Slack's ``/credits price`` (tests/test_slack.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot import messages
from bot.app import open_service
from bot.flow import ImagineService
from bot.settings import Settings
from tests.conftest import FakeClock
from tests.test_console_flow import GUEST, MODELS, OWNER, ScriptedConsole


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    return Settings(
        _env_file=None, database_url=database_url, models_file=models, output_dir=tmp_path / "out"
    )


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    # The console's owner is an admin there, as `imagine-bot console` makes it.
    async with open_service(settings, extra_admins=frozenset({OWNER}), clock=clock) as service:
        await service.credits.open_account(OWNER, welcome_credits=100)
        yield service


@pytest.fixture
def console(service: ImagineService, settings: Settings) -> ScriptedConsole:
    return ScriptedConsole(service, OWNER, settings.output_dir)


LATER = datetime(2099, 1, 1, tzinfo=UTC)


async def test_an_admin_s_price_for_a_model_is_the_next_quote_s_price(
    console: ScriptedConsole,
) -> None:
    said = await console.say(f"/price set {OWNER} scripted 8 loyal customer")
    assert said == messages.model_price_set(OWNER, "scripted", 8, None)

    quoted = await console.say("/imagine model:scripted a fox", "n")
    assert "Price: 1 × 8 = 8 credits" in quoted
    assert "Your price 8 per image, list 10." in quoted


async def test_an_admin_s_percent_off_until_a_date_is_the_next_quote_s_price(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say(f"/price set {OWNER} 20% until:2099-01-01 beta tester")
    assert said == messages.percent_off_set(OWNER, 20, LATER)
    [override] = await service.ledger.price_overrides(OWNER)
    assert (override.actor, override.reason) == (OWNER, "beta tester")

    quoted = await console.say("/imagine model:scripted a fox", "n")
    assert "Your price 8 per image, list 10 (20% off, until 2099-01-01 00:00 UTC)." in quoted


async def test_an_admin_lists_and_clears_an_account_s_prices(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await console.say(f"/price set {OWNER} scripted 8 loyal customer")
    await console.say(f"/price set {OWNER} 10% friend")

    listed = (await console.say(f"/price list {OWNER}")).splitlines()
    assert {line.split("  ")[1] for line in listed} == {
        "scripted: 8 credits per image",
        "every model: 10% off",
    }
    assert await console.say(f"/price clear {OWNER} scripted") == (
        messages.price_overrides_cleared(OWNER, "scripted", 1)
    )
    assert await console.say(f"/price clear {OWNER}") == (
        messages.price_overrides_cleared(OWNER, None, 1)
    )
    assert await console.say("/price list") == messages.no_price_overrides(None)
    assert "Your price" not in await console.say("/imagine model:scripted a fox", "n")


async def test_a_price_set_by_a_non_admin_is_refused_and_changes_nothing(
    service: ImagineService, settings: Settings
) -> None:
    guest = ScriptedConsole(service, GUEST, settings.output_dir)

    assert await guest.say(f"/price set {GUEST} scripted 1 mine now") == messages.NOT_ADMIN
    assert await guest.say("/price list") == messages.NOT_ADMIN
    assert await service.ledger.price_overrides(None) == []


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (f"set {OWNER} 0% nice", messages.bad_percent("0%")),
        (f"set {OWNER} 101% nice", messages.bad_percent("101%")),
        (f"set {OWNER} ten% nice", messages.bad_percent("ten%")),
        (f"set {OWNER} scripted-v9 8 nice", messages.unknown_model("scripted-v9", ["scripted"])),
        (
            f"set {OWNER} scripted 8 until:2001-01-01 nice",
            messages.date_in_the_past(datetime(2001, 1, 1, tzinfo=UTC)),
        ),
        (f"set {OWNER} 5% until:someday nice", messages.bad_date("someday")),
        (f"set {OWNER} 5% until: nice", messages.empty_option("until")),
        (
            f"set {OWNER} 5% until:2099-01-01 until:2099-02-01 nice",
            messages.repeated_option("until"),
        ),
        (f"set {OWNER} scripted -5 nice", messages.invalid_amount("-5")),
        (f"set {OWNER} scripted 8", messages.PRICE_REASON_NEEDED),
        ("set bob scripted 8 nice", messages.invalid_account("bob")),
        (f"set {OWNER} scripted", messages.CONSOLE_PRICE_USAGE),
        (f"clear {OWNER} scripted extra", messages.CONSOLE_PRICE_USAGE),
        ("", messages.CONSOLE_PRICE_USAGE),
    ],
)
async def test_a_bad_price_command_is_one_sentence_and_changes_nothing(
    console: ScriptedConsole, service: ImagineService, arguments: str, expected: str
) -> None:
    assert await console.say(f"/price {arguments}") == expected
    assert await service.ledger.price_overrides(None) == []


async def test_help_shows_the_price_commands_only_to_admins(
    console: ScriptedConsole, service: ImagineService, settings: Settings
) -> None:
    assert "/price set" in await console.say("/help")
    guest = ScriptedConsole(service, GUEST, settings.output_dir)
    assert "/price" not in await guest.say("/help")
