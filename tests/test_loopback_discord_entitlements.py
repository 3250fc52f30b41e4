"""The loopback Discord's premium purchases and shard routing, driven by the real discord.py client.

A purchase arrives as ENTITLEMENT_CREATE on shard 0 only; the app lists, consumes and
loses (on a refund) entitlements through discord.py's own calls; a premium button
the app shows is recorded with its SKU.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import discord
import pytest
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from tests.loopback_discord import (
    ALICE,
    BOB,
    GUILD_ID,
    INVALID_SHARD,
    OTHER_GUILD_ID,
    TOKEN,
    UNKNOWN_ENTITLEMENT,
    LoopbackDiscord,
    PurchaseRefused,
)

PATIENCE_SECONDS = 10
PACK = 900_000_000_000_500_001
"""A credit pack: a consumable SKU."""
BIG_PACK = 900_000_000_000_500_002


class Shop(discord.Client):
    """A minimal premium app: ``/buy`` shows one premium button per SKU in ``sku_ids``.

    ``label``: a label on each (which Discord refuses on a premium button).
    """

    def __init__(
        self, sku_ids: tuple[int, ...] = (), *, label: str | None = None, **options: Any
    ) -> None:
        super().__init__(intents=discord.Intents(guilds=True), guild_ready_timeout=0.1, **options)
        self.tree = app_commands.CommandTree(self)
        self.received: list[tuple[str, discord.Entitlement]] = []
        """Every entitlement event, as ``("create" | "update" | "delete", entitlement)``."""
        self.held_at_buy: list[discord.Entitlement] = []
        """The entitlements the last /buy interaction came with."""
        self.failures: asyncio.Queue[app_commands.AppCommandError] = asyncio.Queue()
        """Errors of /buy, such as Discord refusing its answer."""

        @self.tree.error
        async def failed(
            _interaction: discord.Interaction, error: app_commands.AppCommandError
        ) -> None:
            self.failures.put_nowait(error)

        @self.tree.command(name="buy", description="Buy credits")
        async def buy(interaction: discord.Interaction) -> None:
            self.held_at_buy = list(interaction.entitlements)
            view = discord.ui.View()
            for sku_id in sku_ids:
                view.add_item(discord.ui.Button(sku_id=sku_id, label=label))
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
        fake.add_sku(PACK, "100 credits")
        fake.add_sku(BIG_PACK, "500 credits")
        yield fake


@pytest.fixture
async def shop(discord_fake: LoopbackDiscord) -> AsyncIterator[Shop]:
    """A plain ``Client`` (its IDENTIFY names no shard) connected to the fake."""
    client = Shop((PACK, BIG_PACK))
    async with pointed_at(discord_fake), running(client):
        yield client


async def listed(client: discord.Client, **filters: Any) -> list[discord.Entitlement]:
    return [entitlement async for entitlement in client.entitlements(limit=None, **filters)]


async def expecting(client: discord.Client, kind: str) -> asyncio.Future[discord.Entitlement]:
    """The next ``entitlement_{kind}`` event the client dispatches, once it comes."""
    waiting = asyncio.ensure_future(
        client.wait_for(f"entitlement_{kind}", timeout=PATIENCE_SECONDS)
    )
    # wait_for registers its listener when it first runs: before the event may arrive.
    await asyncio.sleep(0)
    return waiting


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


async def test_a_shard_identified_again_while_its_session_is_connected_is_refused(
    discord_fake: LoopbackDiscord,
) -> None:
    first = ShardedShop(shard_ids=[1], shard_count=2)
    again = ShardedShop(shard_ids=[1], shard_count=2)

    async with pointed_at(discord_fake), running(first), asyncio.timeout(PATIENCE_SECONDS):
        # discord.py does not retry a shard closed with 4010: it closes the whole client.
        with pytest.raises(discord.ConnectionClosed) as refused:
            await again.start(TOKEN)
        await again.close()
        assert not first.is_closed()

    assert refused.value.code == INVALID_SHARD
    assert [(session.shard, session.close_code) for session in discord_fake.sessions] == [
        ((1, 2), None),
        (None, INVALID_SHARD),
    ]


async def test_a_shard_may_identify_again_once_its_session_closed(
    discord_fake: LoopbackDiscord,
) -> None:
    async with pointed_at(discord_fake):
        async with running(ShardedShop(shard_ids=[1], shard_count=2)):
            pass
        async with running(ShardedShop(shard_ids=[1], shard_count=2)):
            pass

    assert [session.shard for session in discord_fake.sessions] == [(1, 2), (1, 2)]


async def test_each_shard_is_sent_only_its_own_guilds_at_identify(
    discord_fake: LoopbackDiscord,
) -> None:
    discord_fake.add_guild(OTHER_GUILD_ID)
    first, second = (
        ShardedShop(shard_ids=[0], shard_count=2),
        ShardedShop(shard_ids=[1], shard_count=2),
    )
    async with pointed_at(discord_fake), running(first, second):
        guilds = ([guild.id for guild in first.guilds], [guild.id for guild in second.guilds])

    assert guilds == ([OTHER_GUILD_ID], [GUILD_ID])


async def test_a_purchase_reaches_the_app_as_entitlement_create_for_the_user_and_sku(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    created = await expecting(shop, "create")
    sent = await discord_fake.purchase(ALICE, PACK)
    entitlement = await created

    assert entitlement.id == int(sent["id"])
    assert (entitlement.user_id, entitlement.sku_id) == (ALICE.id, PACK)
    assert entitlement.type is discord.EntitlementType.purchase
    assert entitlement.application_id == shop.application_id
    assert (entitlement.consumed, entitlement.deleted, entitlement.ends_at) == (False, False, None)


async def test_a_test_mode_purchase_is_type_4_and_may_be_bought_again_unconsumed(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    await discord_fake.purchase(ALICE, PACK, test_mode=True)
    created = await expecting(shop, "create")
    await discord_fake.purchase(ALICE, PACK, test_mode=True)

    assert (await created).type is discord.EntitlementType.test_mode_purchase


async def test_a_consumable_cannot_be_bought_again_until_the_app_consumes_it(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    created = await expecting(shop, "create")
    await discord_fake.purchase(ALICE, PACK)
    with pytest.raises(PurchaseRefused):
        await discord_fake.purchase(ALICE, PACK)

    await (await created).consume()

    await discord_fake.purchase(ALICE, PACK)


async def test_listing_finds_a_purchase_announced_while_the_app_was_down(
    discord_fake: LoopbackDiscord,
) -> None:
    missed = await discord_fake.purchase(ALICE, PACK, announce=False)
    client = Shop()

    async with pointed_at(discord_fake), running(client):
        [entitlement] = await listed(client, exclude_ended=True)

    assert client.received == []
    assert (entitlement.id, entitlement.user_id, entitlement.consumed) == (
        int(missed["id"]),
        ALICE.id,
        False,
    )


async def test_listing_with_exclude_ended_leaves_out_an_ended_entitlement(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    ended = await discord_fake.purchase(ALICE, PACK, announce=False, ends_at=yesterday)
    lasting = await discord_fake.purchase(BOB, PACK, announce=False)

    every = await listed(shop)
    current = await listed(shop, exclude_ended=True)

    assert [e.id for e in every] == [int(ended["id"]), int(lasting["id"])]
    assert [e.id for e in current] == [int(lasting["id"])]


async def test_listing_filters_by_user_and_by_sku(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    alices = await discord_fake.purchase(ALICE, PACK, announce=False)
    await discord_fake.purchase(ALICE, BIG_PACK, announce=False)
    await discord_fake.purchase(BOB, PACK, announce=False)

    found = await listed(shop, user=discord.Object(ALICE.id), skus=[discord.Object(PACK)])

    assert [entitlement.id for entitlement in found] == [int(alices["id"])]


async def test_listing_pages_through_more_than_a_hundred_in_ascending_order(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    bought = [
        int((await discord_fake.purchase(ALICE, PACK, test_mode=True, announce=False))["id"])
        for _ in range(150)
    ]

    assert [entitlement.id for entitlement in await listed(shop)] == bought


async def test_listing_before_an_entitlement_pages_back_through_the_older_ones(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    bought = [
        int((await discord_fake.purchase(ALICE, PACK, test_mode=True, announce=False))["id"])
        for _ in range(150)
    ]

    older = await listed(shop, before=discord.Object(bought[-1]))

    # discord.py yields each page of 100 in ascending order, the newest page first.
    assert [entitlement.id for entitlement in older] == bought[49:149] + bought[:49]


async def test_a_page_limit_outside_1_to_100_is_refused_as_an_invalid_form_body(
    shop: Shop,
) -> None:
    assert shop.application_id is not None
    with pytest.raises(discord.HTTPException) as refused:
        await shop.http.get_entitlements(shop.application_id, limit=101)

    assert (refused.value.status, refused.value.code) == (400, 50035)
    assert "limit" in refused.value.text


async def test_the_app_lists_its_skus_as_consumables(shop: Shop) -> None:
    skus = await shop.fetch_skus()

    assert [(sku.id, sku.name, sku.type) for sku in skus] == [
        (PACK, "100 credits", discord.SKUType.consumable),
        (BIG_PACK, "500 credits", discord.SKUType.consumable),
    ]


async def test_an_entitlement_is_fetched_by_id_and_an_unknown_one_is_not_found(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    bought = await discord_fake.purchase(ALICE, PACK, announce=False)

    fetched = await shop.fetch_entitlement(int(bought["id"]))
    with pytest.raises(discord.NotFound) as refused:
        await shop.fetch_entitlement(1234)

    assert (fetched.user_id, fetched.sku_id) == (ALICE.id, PACK)
    assert refused.value.code == UNKNOWN_ENTITLEMENT


async def test_consume_reaches_the_route_and_the_listing_then_shows_it_consumed(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    created = await expecting(shop, "create")
    await discord_fake.purchase(ALICE, PACK)
    entitlement = await created

    await entitlement.consume()

    assert discord_fake.consume_calls == [entitlement.id]
    assert discord_fake.entitlements[entitlement.id].consumed
    [again] = await listed(shop, exclude_ended=True)
    assert (again.id, again.consumed) == (entitlement.id, True)


async def test_consuming_an_unknown_entitlement_is_refused_as_discord_does(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    assert shop.application_id is not None
    with pytest.raises(discord.NotFound) as refused:
        await shop.http.consume_entitlement(shop.application_id, 1234)

    assert refused.value.code == UNKNOWN_ENTITLEMENT
    assert discord_fake.consume_counts[1234] == 1


async def test_every_consume_request_is_counted(discord_fake: LoopbackDiscord, shop: Shop) -> None:
    created = await expecting(shop, "create")
    await discord_fake.purchase(ALICE, PACK)
    entitlement = await created

    await entitlement.consume()
    await entitlement.consume()

    assert discord_fake.consume_counts == {entitlement.id: 2}


async def test_a_refund_reaches_the_app_as_entitlement_delete(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    bought = await discord_fake.purchase(ALICE, PACK, announce=False)
    deleted = await expecting(shop, "delete")

    await discord_fake.refund(int(bought["id"]))

    entitlement = await deleted
    assert (entitlement.id, entitlement.user_id, entitlement.deleted) == (
        int(bought["id"]),
        ALICE.id,
        True,
    )


async def test_a_refunded_entitlement_is_listed_only_when_asked_for_with_before(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    refunded = await discord_fake.purchase(ALICE, PACK, announce=False)
    await discord_fake.refund(int(refunded["id"]), announce=False)
    later = await discord_fake.purchase(BOB, PACK, announce=False)

    # discord.py 2.7 sends exclude_deleted only when paging with ``before``: without it,
    # Discord's default (true) applies whatever the call asked for.
    without_before = await listed(shop, exclude_deleted=False)
    with_before = await listed(shop, exclude_deleted=False, before=discord.Object(int(later["id"])))

    assert [e.id for e in without_before] == [int(later["id"])]
    assert [(e.id, e.deleted) for e in with_before] == [(int(refunded["id"]), True)]


async def test_an_interaction_carries_the_entitlements_the_user_holds_unconsumed(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    held = await discord_fake.purchase(ALICE, PACK, announce=False)
    await discord_fake.purchase(BOB, BIG_PACK, announce=False)

    interaction = await discord_fake.slash("buy", user=ALICE)
    await discord_fake.wait_for(lambda: interaction.callbacks)

    assert [entitlement.id for entitlement in shop.held_at_buy] == [int(held["id"])]


async def test_an_entitlement_event_reaches_only_the_process_holding_shard_0(
    discord_fake: LoopbackDiscord,
) -> None:
    # The bot's layout across processes: one AutoShardedClient per shard range.
    first, second = (
        ShardedShop(shard_ids=[0], shard_count=2),
        ShardedShop(shard_ids=[1], shard_count=2),
    )
    async with pointed_at(discord_fake), running(first, second):
        created = await expecting(first, "create")
        await discord_fake.purchase(ALICE, PACK)
        await created

    assert [kind for kind, _ in first.received] == ["create"]
    assert second.received == []
    by_shard = {session.shard: session.events for session in discord_fake.sessions}
    assert "ENTITLEMENT_CREATE" in by_shard[(0, 2)]
    assert "ENTITLEMENT_CREATE" not in by_shard[(1, 2)]


async def test_two_sessions_of_one_shard_both_receive_its_events_as_on_discord(
    discord_fake: LoopbackDiscord,
) -> None:
    # Discord does not refuse a second IDENTIFY of a shard: a bot run twice gets
    # every purchase twice, so it must credit each entitlement id once.
    discord_fake.allow_duplicate_shards = True
    once, twice = Shop(), Shop()
    async with pointed_at(discord_fake), running(once, twice):
        first = await expecting(once, "create")
        second = await expecting(twice, "create")
        await discord_fake.purchase(ALICE, PACK)
        assert (await first).id == (await second).id

    assert [session.shard for session in discord_fake.sessions] == [(0, 1), (0, 1)]


# -- premium buttons ----------------------------------------------------------


async def test_a_premium_button_the_app_shows_is_recorded_with_its_sku(
    discord_fake: LoopbackDiscord, shop: Shop
) -> None:
    interaction = await discord_fake.slash("buy")
    await discord_fake.wait_for(lambda: interaction.original_id is not None)

    message = discord_fake.original(interaction)
    assert message.premium_buttons == [PACK, BIG_PACK]
    assert all("custom_id" not in button for button in message.buttons)


async def test_a_premium_button_with_a_label_is_refused_as_discord_does(
    discord_fake: LoopbackDiscord,
) -> None:
    labelled = Shop((PACK,), label="Buy 100 credits")
    async with pointed_at(discord_fake), running(labelled):
        interaction = await discord_fake.slash("buy")
        async with asyncio.timeout(PATIENCE_SECONDS):
            failure = await labelled.failures.get()

    assert isinstance(failure, app_commands.CommandInvokeError)
    assert isinstance(failure.original, discord.HTTPException)
    assert (failure.original.status, failure.original.code) == (400, 50035)
    assert interaction.original_id is None
