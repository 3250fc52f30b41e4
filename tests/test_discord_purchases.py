"""Buying packs on Discord: premium buttons, entitlements granted once and consumed, refunds
taken back, test purchases, card payments through Stripe; the real discord.py against the
loopback Discord (and the loopback Stripe)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import messages
from bot.app import open_service
from bot.flow import ImagineService
from bot.platforms.discord import ImagineBot
from bot.settings import Settings
from ledger import Ledger, create_engine
from tests.conftest import FakeClock
from tests.loopback_discord import ALICE, BOB, GUILD_ID, TOKEN, LoopbackDiscord
from tests.loopback_stripe import API_KEY, WEBHOOK_SECRET, LoopbackStripe
from tests.test_discord import MODELS, running_bot
from tests.test_discord_cli import start

pytestmark = pytest.mark.sqlite_only

STARTER_SKU = 1_200_000_000_000_000_001
PRICING = f"""
[packs.starter]
credits = 500
price = "4.99"
discord_sku = "{STARTER_SKU}"

[packs.web-only]
credits = 100
price = "0.99"
"""
ALICE_ACCOUNT = f"discord:{ALICE.id}"


def discord_settings(database_url: str, tmp_path: Path, **extra: object) -> Settings:
    (tmp_path / "models.toml").write_text(MODELS)
    (tmp_path / "pricing.toml").write_text(PRICING)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=tmp_path / "models.toml",
        pricing_file=tmp_path / "pricing.toml",
        discord_token=TOKEN,
        discord_guild_ids=str(GUILD_ID),
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return discord_settings(database_url, tmp_path)


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with open_service(settings, clock=clock) as service:
        yield service


@pytest.fixture
async def discord_fake() -> AsyncIterator[LoopbackDiscord]:
    async with LoopbackDiscord() as fake:
        fake.add_sku(STARTER_SKU, "Starter pack")
        yield fake


@pytest.fixture
async def bot(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> AsyncIterator[ImagineBot]:
    async with running_bot(service, settings, discord_fake) as running:
        # Past the start-up's look for purchases made while away: a purchase a test makes
        # after that is the event's alone to fulfil, and is consumed once.
        await discord_fake.wait_for(lambda: discord_fake.entitlement_listings >= 1)
        yield running


async def available(service: ImagineService, account: str = ALICE_ACCOUNT) -> int:
    if not await service.ledger.account_exists(account):
        return 0
    return (await service.ledger.balance(account)).available


async def eventually_available(service: ImagineService, expected: int) -> int:
    """The balance once it is ``expected`` (an event the bot handles in its own time), or as it
    is after two seconds."""
    for _ in range(200):
        if (found := await available(service)) == expected:
            return found
        await asyncio.sleep(0.01)
    return await available(service)


async def test_buy_shows_a_premium_button_for_each_pack_with_a_discord_sku_only(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    interaction = await discord_fake.slash("buy", {})
    await discord_fake.wait_for(lambda: interaction.original_id is not None)

    shown = discord_fake.original(interaction)
    assert shown.ephemeral
    assert shown.premium_buttons == [STARTER_SKU]
    assert messages.pack_line("starter", 500, "4.99 USD") in shown.content
    assert "web-only" not in shown.content


async def test_start_up_says_which_packs_are_hidden_on_discord_and_why(
    service: ImagineService,
    settings: Settings,
    discord_fake: LoopbackDiscord,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="bot.platforms.discord"):
        async with running_bot(service, settings, discord_fake):
            pass

    assert messages.pack_hidden_on_discord("web-only") in caplog.messages


async def test_a_purchase_grants_its_pack_once_consumes_it_and_tells_the_buyer(
    bot: ImagineBot, service: ImagineService, discord_fake: LoopbackDiscord
) -> None:
    bought = await discord_fake.purchase(ALICE, STARTER_SKU)
    entitlement = int(bought["id"])

    await discord_fake.wait_for(lambda: discord_fake.entitlements[entitlement].consumed)

    assert await available(service) == 500
    assert discord_fake.consume_counts[entitlement] == 1
    await discord_fake.wait_for(lambda: discord_fake.channel_posts.get(ALICE.id))
    [told] = discord_fake.channel_posts[ALICE.id]
    assert told.content == messages.purchase_paid("starter", 500, 500, 0)


async def test_a_buyer_who_ran_buy_is_told_privately_under_it(
    bot: ImagineBot, service: ImagineService, discord_fake: LoopbackDiscord
) -> None:
    asked = await discord_fake.slash("buy", {})
    await discord_fake.wait_for(lambda: asked.original_id is not None)

    await discord_fake.purchase(ALICE, STARTER_SKU)
    await discord_fake.wait_for(lambda: discord_fake.followups(asked))

    [told] = discord_fake.followups(asked)
    assert told.ephemeral
    assert told.content == messages.purchase_paid("starter", 500, 500, 0)
    assert ALICE.id not in discord_fake.channel_posts


async def test_an_entitlement_announced_twice_grants_once(
    bot: ImagineBot, service: ImagineService, discord_fake: LoopbackDiscord
) -> None:
    bought = await discord_fake.purchase(ALICE, STARTER_SKU)
    entitlement = int(bought["id"])
    await discord_fake.wait_for(lambda: discord_fake.entitlements[entitlement].consumed)

    await bot.fulfil_missed_purchases()
    fetched = await bot.fetch_entitlement(entitlement)
    await bot.fulfil(fetched)

    assert await available(service) == 500


async def test_a_purchase_made_while_the_bot_was_away_is_fulfilled_at_start_up(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    bought = await discord_fake.purchase(ALICE, STARTER_SKU, announce=False)
    entitlement = int(bought["id"])

    async with running_bot(service, settings, discord_fake):
        await discord_fake.wait_for(lambda: discord_fake.entitlements[entitlement].consumed)

    assert await available(service) == 500


async def test_a_refund_takes_the_pack_back(
    bot: ImagineBot, service: ImagineService, discord_fake: LoopbackDiscord
) -> None:
    bought = await discord_fake.purchase(ALICE, STARTER_SKU)
    entitlement = int(bought["id"])
    await discord_fake.wait_for(lambda: discord_fake.entitlements[entitlement].consumed)

    await discord_fake.refund(entitlement)

    assert await eventually_available(service, 0) == 0
    purchase = await service.ledger.purchase_by_external_id("discord", str(entitlement))
    assert purchase is not None and purchase.credits_taken_back == 500


async def test_a_test_mode_purchase_grants_nothing_unless_allowed(
    bot: ImagineBot, service: ImagineService, discord_fake: LoopbackDiscord
) -> None:
    bought = await discord_fake.purchase(ALICE, STARTER_SKU, test_mode=True)
    entitlement = int(bought["id"])

    await discord_fake.wait_for(lambda: discord_fake.entitlements[entitlement].consumed)

    assert await available(service) == 0


async def test_a_test_mode_purchase_grants_its_pack_when_test_purchases_are_allowed(
    database_url: str, tmp_path: Path, clock: FakeClock, discord_fake: LoopbackDiscord
) -> None:
    settings = discord_settings(database_url, tmp_path, discord_allow_test_purchases=True)
    async with (
        open_service(settings, clock=clock) as service,
        running_bot(service, settings, discord_fake),
    ):
        bought = await discord_fake.purchase(ALICE, STARTER_SKU, test_mode=True)
        entitlement = int(bought["id"])
        await discord_fake.wait_for(lambda: discord_fake.entitlements[entitlement].consumed)

        assert await available(service) == 500


async def test_with_stripe_set_up_a_card_button_makes_a_checkout_link_for_the_clicker(
    database_url: str, tmp_path: Path, discord_fake: LoopbackDiscord
) -> None:
    async with LoopbackStripe() as stripe_fake:
        settings = discord_settings(
            database_url,
            tmp_path,
            stripe_api_key=API_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=stripe_fake.api_base,
            public_url="https://bot.example.com",
        )
        # The real clock: Stripe checks a session's expiry against its own.
        async with (
            open_service(settings) as service,
            running_bot(service, settings, discord_fake),
        ):
            asked = await discord_fake.slash("buy", {}, user=BOB)
            await discord_fake.wait_for(lambda: asked.original_id is not None)
            shown = discord_fake.original(asked)
            click = await discord_fake.click(shown, shown.button("starter by card"), user=BOB)
            await discord_fake.wait_for(lambda: discord_fake.followups(click))

    labels = [button.get("label", "") for button in shown.buttons]
    assert not any(label.startswith("web-only") for label in labels)
    [session] = stripe_fake.sessions.values()
    assert (session["client_reference_id"], session["metadata"]["pack"]) == (
        f"discord:{BOB.id}",
        "starter",
    )
    [link] = discord_fake.followups(click)
    assert link.ephemeral and session["url"] in link.content


async def test_a_bot_killed_between_granting_and_consuming_neither_loses_nor_doubles_the_pack(
    tmp_path: Path, discord_fake: LoopbackDiscord
) -> None:
    (tmp_path / "pricing.toml").write_text(PRICING)
    environment = {"PRICING_FILE": str(tmp_path / "pricing.toml")}
    discord_fake.hold_consumes()
    first = await start(tmp_path, discord_fake, "run", **environment)
    try:
        await discord_fake.wait_until_ready()
        bought = await discord_fake.purchase(ALICE, STARTER_SKU)
        entitlement = int(bought["id"])
        await discord_fake.wait_for(lambda: entitlement in discord_fake.consume_calls, patience=20)
    finally:
        first.kill()
        await first.wait()
    discord_fake.release_consumes()
    granted_before_restart = await balance_in(tmp_path)

    second = await start(tmp_path, discord_fake, "run", **environment)
    try:
        await discord_fake.wait_for(
            lambda: discord_fake.entitlements[entitlement].consumed, patience=20
        )
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()

    assert first.returncode == -signal.SIGKILL
    assert granted_before_restart == 500
    assert await balance_in(tmp_path) == 500
    assert discord_fake.consume_counts[entitlement] == 2


async def balance_in(folder: Path) -> int:
    """Alice's available credits in the database ``imagine-bot run`` keeps in ``folder``."""
    ledger = Ledger(create_engine(f"sqlite+aiosqlite:///{folder / 'imagine.db'}"))
    try:
        return (await ledger.balance(ALICE_ACCOUNT)).available
    finally:
        await ledger.close()
