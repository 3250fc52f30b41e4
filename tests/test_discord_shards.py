"""Discord split by shards across processes: each process runs its own shards of
``DISCORD_SHARD_COUNT``, answers only its shards' guilds, syncs the commands under a
database lock, and only the one running shard 0 handles purchases. Several bots run in
this one test process, each as one process would, against the loopback Discord."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest

from bot import messages
from bot.app import open_service
from bot.flow import ImagineService
from bot.platforms.discord import ImagineBot, point_at
from bot.settings import Settings
from tests.conftest import FakeClock
from tests.loopback_discord import (
    ALICE,
    GUILD_ID,
    OTHER_GUILD_ID,
    TOKEN,
    Interaction,
    LoopbackDiscord,
)
from tests.test_discord import running_bot
from tests.test_discord_purchases import STARTER_SKU, available, discord_settings

pytestmark = pytest.mark.sqlite_only


class OneShardBot(ImagineBot):
    """The bot, without discord.py's 5 s pause before each IDENTIFY but the first (Discord's
    rate limit, which the fake has not): a test's bot runs one shard, yet may reconnect."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        return None


@contextlib.asynccontextmanager
async def pointed_at(discord_fake: LoopbackDiscord) -> AsyncIterator[None]:
    """The library's REST base at the fake meanwhile, as ``running_bot`` does."""
    original_base = discord.http.Route.BASE
    point_at(discord_fake.api_base)
    try:
        yield
    finally:
        discord.http.Route.BASE = original_base


def sharded(settings: Settings, *shard_ids: int) -> Settings:
    """``settings`` for the process running ``shard_ids`` of two shards."""
    return settings.model_copy(update={"discord_shard_count": 2, "discord_shard_ids": shard_ids})


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    both_guilds = discord_settings(database_url, tmp_path, starting_credits=50)
    return both_guilds.model_copy(update={"discord_guild_ids": f"{GUILD_ID},{OTHER_GUILD_ID}"})


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with open_service(settings, clock=clock) as service:
        yield service


@pytest.fixture
async def discord_fake() -> AsyncIterator[LoopbackDiscord]:
    async with LoopbackDiscord() as fake:
        # GUILD_ID is on shard 1 of two, OTHER_GUILD_ID on shard 0.
        fake.add_guild(OTHER_GUILD_ID)
        fake.add_sku(STARTER_SKU, "Starter pack")
        yield fake


async def imagine_in(discord_fake: LoopbackDiscord, guild: int) -> Interaction:
    interaction = await discord_fake.slash("imagine", {"prompt": "a lighthouse"}, guild=guild)
    await discord_fake.wait_for(lambda: interaction.original_id is not None)
    return interaction


async def test_each_process_answers_imagine_only_in_the_guilds_of_its_own_shard(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    async with (
        running_bot(service, sharded(settings, 0), discord_fake),
        running_bot(service, sharded(settings, 1), discord_fake),
    ):
        on_shard_0 = await imagine_in(discord_fake, OTHER_GUILD_ID)
        on_shard_1 = await imagine_in(discord_fake, GUILD_ID)
        # Anything answered twice would have been by now: the next command came back.
        await imagine_in(discord_fake, GUILD_ID)

    assert (len(on_shard_0.callbacks), len(on_shard_1.callbacks)) == (1, 1)
    shard_0, shard_1 = discord_fake.sessions
    assert (shard_0.shard, shard_1.shard) == ((0, 2), (1, 2))
    assert shard_0.events.count("INTERACTION_CREATE") == 1
    assert shard_1.events.count("INTERACTION_CREATE") == 2


async def test_a_process_is_sent_only_the_guilds_of_its_shards(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    async with running_bot(service, sharded(settings, 0), discord_fake) as bot:
        guilds = [guild.id for guild in bot.guilds]

    assert guilds == [OTHER_GUILD_ID]


async def test_a_shard_count_alone_runs_every_shard_of_it_in_this_process(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    every_shard = settings.model_copy(update={"discord_shard_count": 2})
    async with running_bot(service, every_shard, discord_fake, bot_type=OneShardBot):
        answered = [await imagine_in(discord_fake, guild) for guild in (GUILD_ID, OTHER_GUILD_ID)]

    assert sorted(session.shard for session in discord_fake.sessions) == [(0, 2), (1, 2)]
    assert [len(interaction.callbacks) for interaction in answered] == [1, 1]


# -- /gateway/bot ---------------------------------------------------------------


async def test_start_up_logs_the_shard_count_discord_recommends(
    service: ImagineService,
    settings: Settings,
    discord_fake: LoopbackDiscord,
    caplog: pytest.LogCaptureFixture,
) -> None:
    discord_fake.recommended_shards = 2
    with caplog.at_level(logging.INFO, logger="bot.platforms.discord"):
        async with running_bot(service, sharded(settings, 1), discord_fake):
            pass

    assert messages.discord_shards_recommended(2, 2) in caplog.messages
    assert not [record for record in our_records(caplog) if record.levelno >= logging.WARNING]


def our_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The bot's own log records: discord.py warns once per process that voice is off."""
    return [record for record in caplog.records if record.name == "bot.platforms.discord"]


async def test_a_shard_count_below_the_recommended_one_is_warned_about(
    service: ImagineService,
    settings: Settings,
    discord_fake: LoopbackDiscord,
    caplog: pytest.LogCaptureFixture,
) -> None:
    discord_fake.recommended_shards = 4
    with caplog.at_level(logging.INFO, logger="bot.platforms.discord"):
        async with running_bot(service, sharded(settings, 1), discord_fake):
            pass

    warnings = [
        record.getMessage() for record in our_records(caplog) if record.levelno == logging.WARNING
    ]
    assert warnings == [messages.discord_too_few_shards(2, 4)]


async def test_without_a_shard_count_the_recommended_count_runs_in_one_process(
    service: ImagineService,
    settings: Settings,
    discord_fake: LoopbackDiscord,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="bot.platforms.discord"):
        async with running_bot(service, settings, discord_fake) as bot:
            shard_count = bot.shard_count

    assert shard_count == 1
    assert messages.discord_shards_recommended(1, None) in caplog.messages
    assert [session.shard for session in discord_fake.sessions] == [(0, 1)]


# -- command sync ---------------------------------------------------------------


@pytest.mark.both_databases
async def test_two_processes_syncing_at_once_send_discord_one_sync_per_scope(
    settings: Settings, discord_fake: LoopbackDiscord, clock: FakeClock
) -> None:
    async with pointed_at(discord_fake), contextlib.AsyncExitStack() as processes:
        bots = []
        for shard in (0, 1):
            # Each process with its own connections to the database, as two would.
            service = await processes.enter_async_context(open_service(settings, clock=clock))
            bot = ImagineBot(service, sharded(settings, shard), sync_on_start=False)
            processes.push_async_callback(bot.close)
            await bot.login(TOKEN)
            bots.append(bot)

        done = await asyncio.gather(*(bot.sync_commands() for bot in bots))

    assert sorted(scope for scope, _ in discord_fake.sync_calls) == sorted(
        [str(GUILD_ID), str(OTHER_GUILD_ID)]
    )
    # One synced both scopes; the other, let in after it, found them recorded.
    assert sorted(len(result.synced) for result in done) == [0, 2]


# -- purchases ------------------------------------------------------------------


async def test_a_process_without_shard_0_neither_reconciles_nor_handles_purchases(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    bought = await discord_fake.purchase(ALICE, STARTER_SKU, announce=False)
    entitlement_id = int(bought["id"])

    async with running_bot(service, sharded(settings, 1), discord_fake) as bot:
        # A command answered after READY: start-up's reconciliation would have begun.
        await imagine_in(discord_fake, GUILD_ID)
        await bot.on_entitlement_create(await bot.fetch_entitlement(entitlement_id))

    assert discord_fake.entitlement_listings == 0
    assert discord_fake.consume_calls == []
    assert await available(service) == 50


async def test_the_process_with_shard_0_fulfils_purchases_made_while_it_was_away(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    bought = await discord_fake.purchase(ALICE, STARTER_SKU, announce=False)
    entitlement_id = int(bought["id"])

    async with running_bot(service, sharded(settings, 0), discord_fake):
        await discord_fake.wait_for(lambda: discord_fake.entitlements[entitlement_id].consumed)

    assert await available(service) == 500
