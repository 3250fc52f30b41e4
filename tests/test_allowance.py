"""The free allowance: an allowance lot per account and period, granted at first use, never piling up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.app import open_service
from bot.flow import ImagineService
from bot.parsing import parse_imagine
from bot.pricing import period_bounds
from bot.settings import Settings
from ledger import LotKind
from ledger.schema import ledger_entries
from tests.conftest import FakeClock
from tests.loopback_discord import GUILD_ID, SUPPORTER_ROLE, TOKEN, LoopbackDiscord, User
from tests.test_console_flow import MODELS, OWNER, ScriptedConsole
from tests.test_discord import answer_to, running_bot

PRICING = """
[allowance]
credits = 10
period = "day"
[allowance.discord_roles]
"900000000000000777" = 50
"""


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    (tmp_path / "models.toml").write_text(MODELS)
    (tmp_path / "pricing.toml").write_text(PRICING)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=tmp_path / "models.toml",
        pricing_file=tmp_path / "pricing.toml",
        output_dir=tmp_path / "out",
    )


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with open_service(settings, extra_admins=frozenset({OWNER}), clock=clock) as service:
        yield service


async def allowance_grants(service: ImagineService) -> int:
    async with service.ledger.engine.connect() as connection:
        return (
            await connection.execute(
                select(func.count())
                .select_from(ledger_entries)
                .where(ledger_entries.c.idempotency_key.like("allowance:%"))
            )
        ).scalar_one()


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", datetime(2026, 11, 24, 12, 0), datetime(2026, 11, 24), datetime(2026, 11, 25)),
        ("week", datetime(2026, 11, 26, 9, 0), datetime(2026, 11, 23), datetime(2026, 11, 30)),
        ("month", datetime(2026, 12, 6, 1, 0), datetime(2026, 12, 1), datetime(2027, 1, 1)),
    ],
)
def test_a_period_runs_from_its_first_moment_to_the_next_periods_in_utc(
    period: str, now: datetime, start: datetime, end: datetime
) -> None:
    utc = {"tzinfo": UTC}
    assert period_bounds(period, now.replace(**utc)) == (  # type: ignore[arg-type]
        start.replace(**utc),
        end.replace(**utc),
    )


async def test_credits_shows_the_days_allowance_and_when_it_renews(
    service: ImagineService, settings: Settings
) -> None:
    said = await ScriptedConsole(service, OWNER, settings.output_dir).say("/credits")

    assert "  10 credits allowance · expires 2026-11-25 00:00 UTC" in said
    assert "Free credits: 10 credits a day, renewed 2026-11-25 00:00 UTC" in said


async def test_the_next_days_allowance_replaces_yesterdays_rather_than_adding_to_it(
    service: ImagineService, clock: FakeClock
) -> None:
    await service.credits.balance(OWNER)
    clock.advance(days=1)

    balance = await service.credits.balance(OWNER)

    assert [(lot.kind, lot.available) for lot in balance.lots] == [(LotKind.ALLOWANCE, 10)]
    assert balance.available == 10
    assert await allowance_grants(service) == 2


async def test_a_quote_spends_the_allowance_before_granted_credits(
    service: ImagineService, settings: Settings
) -> None:
    await service.credits.grant(OWNER, OWNER, 100)
    console = ScriptedConsole(service, OWNER, settings.output_dir)

    await console.say("/imagine model:local-sketch count:2 a lighthouse", "y")

    balance = await service.credits.balance(OWNER)
    assert [(lot.kind, lot.available) for lot in balance.lots] == [
        (LotKind.ALLOWANCE, 8),
        (LotKind.PROMO, 100),
    ]


async def test_twenty_first_quotes_at_once_from_two_processes_grant_the_allowance_once(
    settings: Settings, clock: FakeClock
) -> None:
    # Twenty quotes in one minute is past the default QUOTES_PER_MINUTE, not the point here.
    settings = settings.model_copy(update={"quotes_per_minute": 100})
    async with (
        open_service(settings, clock=clock) as first,
        open_service(settings, clock=clock) as second,
    ):
        request = parse_imagine("model:local-sketch a fox", first.catalog)
        await asyncio.gather(
            *((first if n % 2 else second).quote("discord:4242", request) for n in range(20))
        )

        assert await allowance_grants(first) == 1
        assert (await first.credits.balance("discord:4242")).available == 10


async def test_a_members_role_gives_its_own_allowance(service: ImagineService) -> None:
    balance = await service.credits.balance("discord:77", roles=("900000000000000777",))

    assert balance.available == 50


async def test_a_discord_member_with_a_listed_role_gets_that_roles_allowance(
    tmp_path: Path, database_url: str, clock: FakeClock
) -> None:
    (tmp_path / "models.toml").write_text(MODELS)
    (tmp_path / "pricing.toml").write_text(PRICING)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        models_file=tmp_path / "models.toml",
        pricing_file=tmp_path / "pricing.toml",
        discord_token=TOKEN,
        discord_guild_ids=str(GUILD_ID),
    )
    supporter = User(900_000_000_000_000_303, "sam", roles=(SUPPORTER_ROLE,))
    async with (
        open_service(settings, clock=clock) as service,
        LoopbackDiscord() as fake,
        running_bot(service, settings, fake),
    ):
        said = await answer_to(fake, "credits", {}, supporter)

    assert "  50 credits allowance · expires 2026-11-25 00:00 UTC" in said
    assert "Free credits: 50 credits a day" in said
