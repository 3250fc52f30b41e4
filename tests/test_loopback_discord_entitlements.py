"""The loopback Discord's premium purchases and shard routing, driven by the real discord.py client.

A purchase arrives as ENTITLEMENT_CREATE on shard 0 only; the app lists, consumes and
loses (on a refund) entitlements through discord.py's own calls; a premium button
the app shows is recorded with its SKU.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from tests.loopback_discord import (
    GUILD_ID,
    INVALID_SHARD,
    TOKEN,
    LoopbackDiscord,
)

PATIENCE_SECONDS = 10


class Shop(discord.Client):
    """A minimal premium app: ``/buy`` shows one premium button per SKU in ``sku_ids``."""

    def __init__(self, sku_ids: tuple[int, ...] = (), **options: Any) -> None:
        super().__init__(intents=discord.Intents(guilds=True), guild_ready_timeout=0.1, **options)
        self.tree = app_commands.CommandTree(self)
        self.received: list[tuple[str, discord.Entitlement]] = []
        """Every entitlement event, as ``("create" | "update" | "delete", entitlement)``."""

        @self.tree.command(name="buy", description="Buy credits")
        async def buy(interaction: discord.Interaction) -> None:
            view = discord.ui.View()
            for sku_id in sku_ids:
                view.add_item(discord.ui.Button(sku_id=sku_id))
            await interaction.response.send_message("Credit packs:", view=view, ephemeral=True)

    async def setup_hook(self) -> None:
        guild = discord.Object(GUILD_ID)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # discord.py waits 5 s before each IDENTIFY but the first (Discord's rate limit);
        # the fake has no such limit.
        return None

    async def on_entitlement_create(self, entitlement: discord.Entitlement) -> None:
        self.received.append(("create", entitlement))

    async def on_entitlement_update(self, entitlement: discord.Entitlement) -> None:
        self.received.append(("update", entitlement))

    async def on_entitlement_delete(self, entitlement: discord.Entitlement) -> None:
        self.received.append(("delete", entitlement))


class ShardedShop(Shop, discord.AutoShardedClient):
    """The same app as an ``AutoShardedClient``, as the bot runs."""


@pytest.fixture
async def discord_fake() -> AsyncIterator[LoopbackDiscord]:
    async with LoopbackDiscord() as fake:
        yield fake


@contextlib.asynccontextmanager
async def pointed_at(fake: LoopbackDiscord) -> AsyncIterator[None]:
    """Every client's REST calls and gateway connections go to ``fake`` meanwhile.

    Both are addresses the library keeps as settings: ``Route.BASE`` for REST, and
    ``DEFAULT_GATEWAY`` for a plain ``Client`` or an ``AutoShardedClient`` given its
    ``shard_count`` (only one without it asks ``GET /gateway/bot`` where to connect).
    """
    base, gateway = discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = base, gateway


@contextlib.asynccontextmanager
async def running(*clients: discord.Client) -> AsyncIterator[None]:
    """The clients started one after another, each until ready, and closed at the end."""
    tasks: list[asyncio.Task[None]] = []
    try:
        for client in clients:
            tasks.append(asyncio.create_task(client.start(TOKEN)))
            async with asyncio.timeout(PATIENCE_SECONDS):
                # The client's ready event exists only once it has logged in.
                while not client.is_ready():
                    if tasks[-1].done():
                        await tasks[-1]
                    await asyncio.sleep(0.01)
        yield
    finally:
        for client in clients:
            await client.close()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- shards -------------------------------------------------------------------


async def test_a_guild_event_goes_only_to_the_shard_of_its_guild(
    discord_fake: LoopbackDiscord,
) -> None:
    discord_fake.recommended_shards = 2
    shop = ShardedShop()
    async with pointed_at(discord_fake), running(shop):
        interaction = await discord_fake.slash("buy")
        await discord_fake.wait_for(lambda: interaction.callbacks)

    by_shard = {session.shard: session.events for session in discord_fake.sessions}
    guild_shard = (GUILD_ID >> 22) % 2
    assert "INTERACTION_CREATE" in by_shard[(guild_shard, 2)]
    assert "INTERACTION_CREATE" not in by_shard[(1 - guild_shard, 2)]
    assert "GUILD_CREATE" not in by_shard[(1 - guild_shard, 2)]


async def test_a_shard_beyond_the_shard_count_is_closed_as_an_invalid_shard(
    discord_fake: LoopbackDiscord,
) -> None:
    shop = ShardedShop(shard_ids=[2], shard_count=2)

    async with pointed_at(discord_fake), asyncio.timeout(PATIENCE_SECONDS):
        with pytest.raises(discord.ConnectionClosed) as refused:
            await shop.start(TOKEN)

    assert refused.value.code == INVALID_SHARD
    [session] = discord_fake.sessions
    assert (session.shard, session.close_code) == (None, INVALID_SHARD)
