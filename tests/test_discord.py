"""The Discord adapter end to end: the real discord.py client against a loopback Discord.

Each test starts the bot, which connects to the fake's gateway, syncs its
commands and answers interactions the test sends, on both databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import discord
import pytest
from discord.gateway import DiscordWebSocket
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

from bot import messages, references, statements
from bot.app import open_service
from bot.circuits import Health
from bot.flow import ImagineService
from bot.images import GRID_CELL
from bot.platforms import discord as discord_adapter
from bot.platforms.discord import ImagineBot, point_at
from bot.settings import Settings
from ledger import GenerationStatus
from providers.base import ReferenceImage
from providers.errors import ProviderUnavailable
from tests.conftest import FakeClock
from tests.fakes import Script, ScriptedProvider, fail_first, one_colour_png, slow_down
from tests.loopback_discord import (
    ALICE,
    BOB,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE,
    GUILD_ID,
    MODAL,
    TOKEN,
    UPDATE_MESSAGE,
    Interaction,
    LoopbackDiscord,
    Message,
    User,
)
from tests.test_report import generate

pytestmark = pytest.mark.sqlite_only

ADMIN = User(900_000_000_000_000_199, "admin")
ALICE_ACCOUNT = f"discord:{ALICE.id}"
BOB_ACCOUNT = f"discord:{BOB.id}"

MODELS = """
[models.local-sketch]
provider = "local"
provider_model = "procedural-v1"
name = "Local Sketch"
credits_per_image = 1
resolutions = ["1K", "2K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4

[models.scripted]
provider = "scripted"
provider_model = "scripted-v1"
name = "Scripted"
credits_per_image = 10
resolutions = ["1K"]
aspect_ratios = ["1:1", "3:2", "2:3"]
max_images = 2
max_reference_images = 1
"""


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        admin_accounts=(f"discord:{ADMIN.id}",),
        discord_token=TOKEN,
        discord_guild_ids=str(GUILD_ID),
        starting_credits=50,
    )


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with open_service(settings, clock=clock) as service:
        yield service


@pytest.fixture
async def discord_fake() -> AsyncIterator[LoopbackDiscord]:
    async with LoopbackDiscord() as fake:
        yield fake


@contextlib.asynccontextmanager
async def running_bot(
    service: ImagineService,
    settings: Settings,
    discord_fake: LoopbackDiscord,
    *,
    bot_type: type[ImagineBot] = ImagineBot,
) -> AsyncIterator[ImagineBot]:
    # The bot points both at the fake (REST here, the gateway as it starts); both are
    # the library's, for every client in the process, so they are put back after.
    original_base, original_gateway = discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    point_at(discord_fake.api_base)
    bot = bot_type(service, settings, guild_ready_timeout=0.1)
    running = asyncio.create_task(bot.start(TOKEN))
    try:
        async with asyncio.timeout(10):
            # The client's ready event exists only once it has logged in.
            while not bot.is_ready():
                if running.done():
                    await running
                await asyncio.sleep(0.01)
        yield bot
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        discord.http.Route.BASE = original_base
        DiscordWebSocket.DEFAULT_GATEWAY = original_gateway


@pytest.fixture
async def bot(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> AsyncIterator[ImagineBot]:
    async with running_bot(service, settings, discord_fake) as running:
        yield running


@pytest.fixture
def scripted(service: ImagineService) -> ScriptedProvider:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    return provider


async def quote(
    discord_fake: LoopbackDiscord, options: dict[str, object], user: User = ALICE
) -> tuple[Interaction, Message]:
    interaction = await discord_fake.slash("imagine", options, user=user)
    await discord_fake.wait_for(lambda: interaction.original_id is not None)
    return interaction, discord_fake.original(interaction)


async def available(service: ImagineService, account: str = ALICE_ACCOUNT) -> int:
    return (await service.credits.balance(account)).available


# -- command sync -------------------------------------------------------------


async def test_commands_are_synced_to_the_configured_guild_with_registry_choices(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    [(scope, commands)] = discord_fake.sync_calls
    assert scope == str(GUILD_ID)
    assert {command["name"] for command in commands} == {
        "imagine",
        "compare",
        "credits",
        "price",
        "statement",
        "stats",
        "buy",
        "models",
        "subject",
        "help",
        "history",
        "settings",
    }
    [imagine] = [command for command in commands if command["name"] == "imagine"]
    options = {option["name"]: option for option in imagine["options"]}
    assert [choice["value"] for choice in options["model"]["choices"]] == [
        "local-sketch",
        "scripted",
    ]
    assert options["model"]["choices"][1]["name"] == "Scripted · 10 credits/image"
    assert (options["count"]["min_value"], options["count"]["max_value"]) == (1, 4)
    assert options["count"]["autocomplete"] is True
    assert options["resolution"]["autocomplete"] is True
    assert options["aspect"]["autocomplete"] is True
    assert options["reference"]["type"] == 11
    assert options["prompt"]["required"] is True
    [price] = [command for command in commands if command["name"] == "price"]
    price_options = {option["name"]: option for option in price["options"]}
    assert [choice["value"] for choice in price_options["action"]["choices"]] == [
        "set",
        "list",
        "clear",
    ]
    assert price_options["model"]["autocomplete"] is True
    assert (
        price_options["percent_off"]["min_value"],
        price_options["percent_off"]["max_value"],
    ) == (
        1,
        100,
    )


async def test_credits_offers_an_optional_expiry_for_grants(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    [(_, commands)] = discord_fake.sync_calls
    [credits] = [command for command in commands if command["name"] == "credits"]
    [expires] = [option for option in credits["options"] if option["name"] == "expires"]

    assert (expires["type"], expires.get("required", False)) == (3, False)
    assert expires["description"] == messages.DISCORD_EXPIRES_DESCRIPTION


async def test_an_unchanged_command_set_is_not_synced_again_on_restart(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    async with running_bot(service, settings, discord_fake):
        pass
    async with running_bot(service, settings, discord_fake):
        pass

    assert len(discord_fake.sync_calls) == 1


async def test_a_changed_command_set_is_synced_again(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord, tmp_path: Path
) -> None:
    async with running_bot(service, settings, discord_fake):
        pass
    cheaper = MODELS.replace("credits_per_image = 10", "credits_per_image = 8")
    settings.models_file.write_text(cheaper)
    async with open_service(settings) as repriced, running_bot(repriced, settings, discord_fake):
        pass

    assert len(discord_fake.sync_calls) == 2


async def test_without_guild_ids_the_commands_are_synced_globally(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    global_settings = settings.model_copy(update={"discord_guild_ids": None})
    async with running_bot(service, global_settings, discord_fake):
        pass

    assert [scope for scope, _ in discord_fake.sync_calls] == ["global"]


async def test_a_guild_that_refuses_the_commands_is_skipped_and_the_bot_still_serves(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    removed_from = "900000000000000777"
    discord_fake.refuse_commands_for.add(removed_from)
    both = settings.model_copy(update={"discord_guild_ids": f"{removed_from},{GUILD_ID}"})

    async with running_bot(service, both, discord_fake):
        said = await answer_to(discord_fake, "credits", {}, ALICE)

    assert said.startswith("Balance")
    assert [scope for scope, _ in discord_fake.sync_calls] == [str(GUILD_ID)]


# -- /imagine -----------------------------------------------------------------


async def test_imagine_answers_privately_with_the_price_and_two_buttons(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    interaction, message = await quote(
        discord_fake, {"prompt": "a lighthouse", "count": 2, "aspect": "16:9"}
    )

    assert interaction.callback_type == CHANNEL_MESSAGE
    assert message.ephemeral
    assert message.content == (
        "Local Sketch · 2 images · 1K · 16:9\nPrice: 2 credits · your balance: 50 credits"
    )
    assert [button["label"] for button in message.buttons] == [
        "Generate 2 images · 2 credits",
        "Cancel",
    ]


@pytest.mark.parametrize(
    ("prompt", "shown"),
    [
        ("[Free Nitro](https://evil.example)", r"\[Free Nitro\]\(https\://evil.example\)"),
        ("a fox\n# FREE CREDITS", r"a fox \# FREE CREDITS"),
        ("<@1001> and @everyone", r"\<\@1001\> and \@everyone"),
        (
            "**bold** __under__ ||spoiler|| `code`",
            r"\*\*bold\*\* \_\_under\_\_ \|\|spoiler\|\| \`code\`",
        ),
    ],
)
async def test_a_prompt_in_the_public_caption_is_shown_as_typed_never_as_markup(
    bot: ImagineBot, discord_fake: LoopbackDiscord, prompt: str, shown: str
) -> None:
    _, message = await quote(discord_fake, {"prompt": prompt})

    click = await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: message.content.startswith("Done"))

    [posted] = discord_fake.followups(click)
    assert posted.content == f"<@{ALICE.id}> asked for “{shown}” · Local Sketch · 1 credit"


@pytest.mark.both_databases
async def test_generate_posts_real_images_in_the_channel_and_charges_for_them(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse", "count": 2, "aspect": "16:9"})

    click = await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: message.content.startswith("Done"))

    assert click.callback_type == UPDATE_MESSAGE
    [posted] = discord_fake.followups(click)
    assert not posted.ephemeral
    assert posted.content == f"<@{ALICE.id}> asked for “a lighthouse” · Local Sketch · 2 credits"
    assert len(posted.files) == 2
    for upload in posted.files:
        with Image.open(io.BytesIO(upload.data)) as image:
            assert (image.format, image.size) == ("PNG", (1024, 576))
    assert message.content == "Done: 2 images for 2 credits.\nBalance: 48 credits available."
    assert message.buttons == []
    assert await available(service) == 48
    assert await service.ledger.verify() == []


async def test_progress_is_shown_in_the_private_message_before_the_outcome(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse", "count": 2})

    await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: message.content.startswith("Done"))

    assert "Generating 2 images with Local Sketch…" in message.versions
    assert "Posting 2 images…" in message.versions


async def test_another_user_pressing_generate_is_told_and_nothing_changes(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse"})

    click = await discord_fake.click(message, message.button("Generate"), user=BOB)
    await discord_fake.wait_for(lambda: click.original_id != message.id or click.callbacks)

    assert click.callback_type == CHANNEL_MESSAGE
    assert click.callbacks[0][1]["content"] == messages.NOT_YOUR_REQUEST
    assert click.callbacks[0][1]["flags"] & 64
    assert len(message.buttons) == 2
    assert await available(service) == 50


async def test_a_generate_the_balance_no_longer_covers_says_the_shortfall_and_keeps_the_quote(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a fox", "model": "scripted"})
    await service.credits.revoke(f"discord:{ADMIN.id}", ALICE_ACCOUNT, 45)

    click = await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: click.callbacks)

    assert click.callbacks[0][1]["content"] == messages.insufficient_credits(10, 5)
    assert click.callbacks[0][1]["flags"] & 64
    assert len(message.buttons) == 2
    assert await available(service) == 5


async def test_a_generate_while_the_bot_stops_says_to_try_again_and_charges_nothing(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a fox", "model": "scripted"})
    service.stop_accepting()

    click = await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: click.callbacks)

    assert click.callbacks[0][1]["content"] == messages.SHUTTING_DOWN
    assert await available(service) == 50


async def test_cancel_withdraws_the_quote_and_charges_nothing(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse"})

    await discord_fake.click(message, message.button("Cancel"))
    await discord_fake.wait_for(lambda: message.content == messages.CANCELLED)

    assert message.buttons == []
    [generation] = await service.ledger.history(ALICE_ACCOUNT, include_unconfirmed=True)
    assert generation.status == GenerationStatus.CANCELLED
    assert await available(service) == 50


@pytest.mark.both_databases
async def test_a_command_the_database_fails_is_answered_with_a_sentence(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fail_first(service.ledger, "open_quote", monkeypatch)

    interaction, message = await quote(discord_fake, {"prompt": "a lighthouse"})

    assert message.content == messages.SOMETHING_WENT_WRONG
    assert interaction.callbacks[0][1]["flags"] & 64
    assert await service.ledger.history(ALICE_ACCOUNT, include_unconfirmed=True) == []


@pytest.mark.both_databases
async def test_a_click_the_database_fails_is_told_to_the_clicker_and_charges_nothing(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse"})
    fail_first(service.ledger, "hold", monkeypatch)

    click = await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: bool(click.callbacks))

    assert click.callbacks[0][1]["content"] == messages.SOMETHING_WENT_WRONG
    assert click.callbacks[0][1]["flags"] & 64
    assert len(message.buttons) == 2
    [generation] = await service.ledger.history(ALICE_ACCOUNT, include_unconfirmed=True)
    assert generation.status == GenerationStatus.QUOTED
    assert await available(service) == 50


async def test_a_click_whose_hold_waits_past_the_deadline_is_deferred_then_generates(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse"})
    slow_down(service, "hold", monkeypatch)

    click = await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: message.content.startswith("Done"))

    assert click.callback_type == DEFERRED_UPDATE
    assert len(discord_fake.followups(click)) == 1
    assert await available(service) == 49


async def test_a_click_whose_deferral_discord_refuses_still_generates_and_settles_its_hold(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse"})
    slow_down(service, "hold", monkeypatch)
    discord_fake.fail_callbacks_with = 404

    click = await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: discord_fake.followups(click))
    await service.drain(grace_seconds=10)

    balance = await service.credits.balance(ALICE_ACCOUNT)
    assert (balance.available, balance.held) == (49, 0)


async def test_a_refusal_after_a_deferred_click_comes_in_a_message_of_its_own(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse"})
    slow_down(service, "hold", monkeypatch)

    click = await discord_fake.click(message, message.button("Generate"), user=BOB)
    await discord_fake.wait_for(lambda: bool(discord_fake.followups(click)))

    [refusal] = discord_fake.followups(click)
    assert refusal.content == messages.NOT_YOUR_REQUEST
    assert refusal.flags & 64
    assert len(message.buttons) == 2
    assert await available(service) == 50


async def test_a_cancel_that_waits_past_the_deadline_is_deferred_then_shown(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse"})
    slow_down(service, "cancel", monkeypatch)

    click = await discord_fake.click(message, message.button("Cancel"))
    await discord_fake.wait_for(lambda: message.content == messages.CANCELLED)

    assert click.callback_type == DEFERRED_UPDATE
    assert message.buttons == []
    assert await available(service) == 50


@pytest.mark.both_databases
async def test_a_second_press_generates_and_charges_once(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse", "count": 2})
    generate = message.button("Generate")

    presses = [
        await discord_fake.click(message, generate),
        await discord_fake.click(message, generate),
    ]
    await discord_fake.wait_for(lambda: message.content.startswith("Done"))
    await discord_fake.wait_for(lambda: all(press.callbacks for press in presses))

    # Whichever press the ledger took first generates; the other is told so.
    [generated] = [press for press in presses if discord_fake.followups(press)]
    [refused] = [press for press in presses if press is not generated]
    assert len(discord_fake.followups(generated)) == 1
    assert refused.callbacks[0][1]["content"].startswith("This request was already")
    assert await available(service) == 48


async def test_an_expired_quote_disables_its_buttons_and_says_so(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    service.quote_ttl = service.quote_ttl.__class__(seconds=0.2)
    async with running_bot(service, settings, discord_fake):
        _, message = await quote(discord_fake, {"prompt": "a lighthouse"})
        await discord_fake.wait_for(
            lambda: message.content == messages.DISCORD_QUOTE_EXPIRED_BUTTONS
        )

    assert [button["disabled"] for button in message.buttons] == [True, True]


async def test_a_quote_that_outlives_the_token_keeps_its_buttons_past_the_tokens_life(
    service: ImagineService,
    settings: Settings,
    discord_fake: LoopbackDiscord,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(discord_adapter, "_LONGEST_EDITABLE_SECONDS", 0.2)  # 14 minutes
    service.quote_ttl = timedelta(hours=1)
    async with running_bot(service, settings, discord_fake):
        _, message = await quote(discord_fake, {"prompt": "a lighthouse"})
        shown = message.content
        await asyncio.sleep(0.5)

    # Still valid for most of an hour: it must not be said to have expired.
    assert message.content == shown
    assert [button["disabled"] for button in message.buttons] == [False, False]


async def test_quotes_waiting_for_a_click_keep_no_task_running(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    await quote(discord_fake, {"prompt": "a warm-up"})
    tasks_before = len(asyncio.all_tasks())

    for number in range(5):
        await quote(discord_fake, {"prompt": f"lighthouse {number}"})

    assert len(asyncio.all_tasks()) == tasks_before


async def test_pressing_generate_after_expiry_charges_nothing_and_says_so(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService, clock: FakeClock
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse"})
    clock.advance(seconds=service.quote_ttl.total_seconds() + 1)

    await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: message.content == messages.QUOTE_EXPIRED)

    assert await available(service) == 50


@pytest.mark.both_databases
async def test_a_button_pressed_after_a_restart_still_works(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    async with running_bot(service, settings, discord_fake):
        _, message = await quote(discord_fake, {"prompt": "a lighthouse"})
    async with running_bot(service, settings, discord_fake):
        click = await discord_fake.click(message, message.button("Generate"))
        await discord_fake.wait_for(lambda: message.content.startswith("Done"))

    assert len(discord_fake.followups(click)) == 1
    assert await available(service) == 49


async def test_a_model_that_cannot_be_used_now_offers_the_alternative_s_button_which_survives_a_restart(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    for _ in range(service.circuits.failures):
        service.circuits.record("scripted", Health.DOWN, "unavailable")

    async with running_bot(service, settings, discord_fake):
        _, message = await quote(discord_fake, {"prompt": "a fox", "model": "scripted"})
    offer = message.content
    labels = [button["label"] for button in message.buttons]
    async with running_bot(service, settings, discord_fake):
        await discord_fake.click(message, message.button("Try"))
        await discord_fake.wait_for(lambda: message.content.startswith("Done"))

    assert offer.startswith(
        "Scripted is unavailable right now: its provider failed its last 5 requests"
        " · Try Local Sketch · 1 credit\n"
    )
    assert labels == ["Try Local Sketch · 1 credit", "Cancel"]
    assert message.content == "Done: 1 image for 1 credit.\nBalance: 49 credits available."


async def test_a_request_beyond_the_balance_is_refused_before_any_button(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await service.credits.open_account(ALICE_ACCOUNT)
    await service.credits.revoke(f"discord:{ADMIN.id}", ALICE_ACCOUNT, 45)

    _, message = await quote(discord_fake, {"prompt": "a fox", "model": "scripted"})

    assert message.content == messages.insufficient_credits(10, 5)
    assert message.buttons == []


async def test_an_unsupported_option_is_refused_with_what_the_model_supports(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    _, message = await quote(
        discord_fake, {"prompt": "a fox", "model": "scripted", "resolution": "4K"}
    )

    assert message.content == messages.unsupported_resolution("4K", "scripted", ["1K"])
    assert message.ephemeral


async def test_a_provider_failure_charges_nothing_and_says_so(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    scripted: ScriptedProvider,
) -> None:
    scripted.script = Script(images=0, error=ProviderUnavailable("overloaded"))
    _, message = await quote(discord_fake, {"prompt": "a fox", "model": "scripted"})

    click = await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: "no credits were charged" in message.content)

    assert discord_fake.followups(click) == []
    assert message.content.startswith(messages.failure("unavailable", "overloaded"))
    assert await available(service) == 50


async def test_a_failed_upload_releases_the_hold_and_says_so(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    discord_fake.fail_followups_with = 413
    _, message = await quote(discord_fake, {"prompt": "a fox"})

    await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: "no credits were charged" in message.content)

    assert "could not be posted here" in message.content
    assert await available(service) == 50
    assert (await service.credits.balance(ALICE_ACCOUNT)).held == 0


async def test_images_over_the_upload_limit_are_re_encoded_to_fit(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    discord_fake.attachment_limit = 200_000
    _, message = await quote(discord_fake, {"prompt": "a fox", "resolution": "2K"})

    click = await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: message.content.startswith("Done"))

    [posted] = discord_fake.followups(click)
    [upload] = posted.files
    assert len(upload.data) <= 200_000
    assert upload.filename.endswith(".jpg")


async def test_a_reference_image_reaches_the_provider(
    bot: ImagineBot, discord_fake: LoopbackDiscord, scripted: ScriptedProvider
) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(picture, "PNG")
    interaction = await discord_fake.slash(
        "imagine",
        {"prompt": "this, but blue", "model": "scripted"},
        attachment=("red.png", "image/png", picture.getvalue()),
    )
    await discord_fake.wait_for(
        lambda: interaction.original_id is not None and discord_fake.original(interaction).buttons
    )
    message = discord_fake.original(interaction)

    await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: scripted.requests)

    [reference] = scripted.requests[0].reference_images
    assert reference.mime_type == "image/png"
    with Image.open(io.BytesIO(reference.data)) as received:
        assert (received.size, received.getpixel((0, 0))) == ((32, 32), (255, 0, 0))


async def test_a_reference_reaches_the_provider_without_its_metadata(
    bot: ImagineBot, discord_fake: LoopbackDiscord, scripted: ScriptedProvider
) -> None:
    text = PngInfo()
    text.add_text("Author", "Alice Example")
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Alice's phone"
    picture = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(picture, "PNG", pnginfo=text, exif=exif)
    interaction = await discord_fake.slash(
        "imagine",
        {"prompt": "this, but blue", "model": "scripted"},
        attachment=("red.png", "image/png", picture.getvalue()),
    )
    await discord_fake.wait_for(
        lambda: interaction.original_id is not None and discord_fake.original(interaction).buttons
    )
    message = discord_fake.original(interaction)

    await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: scripted.requests)

    [reference] = scripted.requests[0].reference_images
    assert b"Alice" not in reference.data
    assert b"tEXt" not in reference.data and b"eXIf" not in reference.data


@pytest.mark.parametrize(
    ("filename", "content_type", "data", "refusal"),
    [
        (
            "red.png",
            "image/png",
            b"\x89PNG\r\n\x1a\nnot a picture at all",
            messages.reference_not_an_image("red.png"),
        ),
        ("red.png", "image/png", b"", messages.reference_empty("red.png")),
        (
            "bomb.png",
            "image/png",
            one_colour_png(20_000, 20_000),
            messages.reference_too_many_pixels("bomb.png", references.MAX_PIXELS),
        ),
    ],
    ids=["text-behind-a-png-header", "empty", "decompression-bomb"],
)
async def test_a_bad_reference_is_refused_and_nothing_is_quoted(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    filename: str,
    content_type: str,
    data: bytes,
    refusal: str,
) -> None:
    interaction = await discord_fake.slash(
        "imagine",
        {"prompt": "this, but blue", "model": "scripted"},
        attachment=(filename, content_type, data),
    )
    await discord_fake.wait_for(
        lambda: (
            interaction.original_id is not None
            and discord_fake.original(interaction).content == refusal
        )
    )

    assert discord_fake.original(interaction).buttons == []
    assert await service.ledger.history(ALICE_ACCOUNT, include_unconfirmed=True) == []


async def test_a_reference_that_is_not_an_image_is_refused(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    interaction = await discord_fake.slash(
        "imagine",
        {"prompt": "this, but blue", "model": "scripted"},
        attachment=("notes.pdf", "application/pdf", b"%PDF-1.7"),
    )
    refusal = messages.reference_not_an_image("notes.pdf")
    await discord_fake.wait_for(
        lambda: (
            interaction.original_id is not None
            and discord_fake.original(interaction).content == refusal
        )
    )

    assert interaction.callback_type == DEFERRED_CHANNEL_MESSAGE
    assert discord_fake.original(interaction).ephemeral


async def test_a_reference_discord_fails_to_hand_over_is_refused_with_what_to_do(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    discord_fake.fail_downloads_with = 404
    interaction = await discord_fake.slash(
        "imagine",
        {"prompt": "this, but blue", "model": "scripted"},
        attachment=("red.png", "image/png", b"\x89PNG"),
    )
    refusal = messages.reference_unreadable("red.png")
    await discord_fake.wait_for(
        lambda: (
            interaction.original_id is not None
            and discord_fake.original(interaction).content == refusal
        )
    )

    assert discord_fake.original(interaction).buttons == []
    assert await service.ledger.history(ALICE_ACCOUNT, include_unconfirmed=True) == []


# -- autocomplete ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "field", "expected"),
    [
        ("local-sketch", "resolution", ["1K", "2K"]),
        ("scripted", "resolution", ["1K"]),
        ("local-sketch", "aspect", ["1:1", "16:9"]),
        ("scripted", "aspect", ["1:1", "3:2", "2:3"]),
    ],
)
async def test_autocomplete_offers_only_what_the_chosen_model_supports(
    bot: ImagineBot, discord_fake: LoopbackDiscord, model: str, field: str, expected: list[str]
) -> None:
    choices = await discord_fake.autocomplete(
        "imagine", {"prompt": "a fox", "model": model, field: ""}, focused=field
    )

    assert [choice["value"] for choice in choices] == expected


async def test_autocomplete_without_a_model_follows_the_default_model(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    choices = await discord_fake.autocomplete(
        "imagine", {"prompt": "a fox", "resolution": "2"}, focused="resolution"
    )

    assert [choice["value"] for choice in choices] == ["2K"]


async def test_count_autocomplete_shows_each_count_s_price_with_the_batch_discount_and_balance(
    settings: Settings, discord_fake: LoopbackDiscord, clock: FakeClock, tmp_path: Path
) -> None:
    pricing_file = tmp_path / "pricing.toml"
    pricing_file.write_text("[batch]\ndiscounts = { 2 = 10 }\n")
    discounted = settings.model_copy(update={"pricing_file": pricing_file})
    async with (
        open_service(discounted, clock=clock) as service,
        running_bot(service, discounted, discord_fake),
    ):
        choices = await discord_fake.autocomplete(
            "imagine", {"prompt": "a fox", "model": "scripted", "count": ""}, focused="count"
        )

    assert [(choice["name"], choice["value"]) for choice in choices] == [
        ("1 image · 10 credits · you have 50", 1),
        ("2 images · 18 credits · you have 50", 2),
    ]


async def test_resolution_autocomplete_shows_the_account_s_own_price_at_the_chosen_count(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await service.ledger.set_price_override(
        ALICE_ACCOUNT, model_id="scripted", credits_per_image=8, actor="test", reason="loyal"
    )

    choices = await discord_fake.autocomplete(
        "imagine",
        {"prompt": "a fox", "model": "scripted", "count": 2, "resolution": ""},
        focused="resolution",
    )

    assert [(choice["name"], choice["value"]) for choice in choices] == [
        ("1K · 2 images · 16 credits · you have 50", "1K")
    ]


# -- where the bot serves -----------------------------------------------------------

ELSEWHERE = 900_000_000_000_000_888


@pytest.fixture
async def listed_bot(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> AsyncIterator[ImagineBot]:
    """The bot with global commands, serving only GUILD_ID, so other servers can run them."""
    listed = settings.model_copy(
        update={"discord_guild_ids": None, "discord_guild_allowlist": (str(GUILD_ID),)}
    )
    async with running_bot(service, listed, discord_fake) as running:
        yield running


@pytest.mark.parametrize("guild", [ELSEWHERE, None], ids=["another-server", "direct-message"])
async def test_only_a_listed_server_is_served_elsewhere_no_account_is_opened(
    listed_bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    guild: int | None,
) -> None:
    for name, options in (("imagine", {"prompt": "a lighthouse"}), ("credits", {})):
        interaction = await discord_fake.slash(name, options, guild=guild)
        await discord_fake.wait_for(lambda sent=interaction: sent.original_id is not None)

        message = discord_fake.original(interaction)
        assert (message.content, message.ephemeral) == (messages.NOT_SERVED_HERE, True)
    assert await service.ledger.account_exists(ALICE_ACCOUNT) is False

    _, message = await quote(discord_fake, {"prompt": "a lighthouse"})

    assert message.content.startswith("Local Sketch · 1 image")
    assert await available(service) == 50


async def test_autocomplete_where_the_bot_does_not_serve_offers_only_the_refusal(
    listed_bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    choices = await discord_fake.autocomplete(
        "imagine", {"prompt": "a fox", "resolution": ""}, focused="resolution", guild=ELSEWHERE
    )

    assert [choice["name"] for choice in choices] == [messages.NOT_SERVED_HERE]


@pytest.mark.parametrize("label", ["Generate", "Cancel"])
async def test_a_button_pressed_where_the_bot_does_not_serve_is_refused_and_changes_nothing(
    listed_bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService, label: str
) -> None:
    _, message = await quote(discord_fake, {"prompt": "a lighthouse"})
    [record] = await service.ledger.history(ALICE_ACCOUNT, include_unconfirmed=True)

    click = await discord_fake.click(message, message.button(label), guild=ELSEWHERE)
    await discord_fake.wait_for(lambda: click.callbacks)

    [(kind, answer)] = click.callbacks
    assert (kind, answer["content"]) == (CHANNEL_MESSAGE, messages.NOT_SERVED_HERE)
    assert answer["flags"] & 64
    assert (await service.ledger.generation(record.id)).status == GenerationStatus.QUOTED
    assert await available(service) == 50


# -- /credits, /models, /help -----------------------------------------------------


async def answer_to(
    discord_fake: LoopbackDiscord, name: str, options: dict[str, object], user: User
) -> str:
    interaction = await discord_fake.slash(name, options, user=user)
    await discord_fake.wait_for(lambda: interaction.original_id is not None)
    message = discord_fake.original(interaction)
    assert message.ephemeral
    return message.content


async def test_credits_shows_the_balance_and_recent_generations(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    said = await answer_to(discord_fake, "credits", {}, ALICE)

    assert said == f"{messages.balance_line(50, 0)}\n{messages.NO_HISTORY}"


async def test_a_credits_command_slower_than_the_deadline_allows_is_deferred_then_shown(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_down(service.credits, "statement", monkeypatch)

    interaction = await discord_fake.slash("credits", {})
    await discord_fake.wait_for(
        lambda: (
            interaction.original_id is not None
            and discord_fake.original(interaction).content.startswith("Balance")
        )
    )

    assert interaction.callback_type == DEFERRED_CHANNEL_MESSAGE
    assert discord_fake.original(interaction).ephemeral


async def test_a_non_admin_cannot_grant(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    said = await answer_to(
        discord_fake, "credits", {"action": "grant", "user": BOB, "amount": 100}, ALICE
    )

    assert said == messages.NOT_ADMIN
    assert await service.ledger.account_exists(BOB_ACCOUNT) is False


async def test_an_admin_grant_is_recorded_and_reports_the_new_balance(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    said = await answer_to(
        discord_fake,
        "credits",
        {"action": "grant", "user": BOB, "amount": 100, "reason": "contest prize"},
        ADMIN,
    )

    assert said == messages.granted(f"<@{BOB.id}>", 100, 150)
    [entry, *_] = await service.ledger.entries(BOB_ACCOUNT)
    assert (entry.actor, entry.reason) == (f"discord:{ADMIN.id}", "contest prize")


async def test_an_admin_grant_with_an_expiry_says_when_the_credits_expire(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    said = await answer_to(
        discord_fake,
        "credits",
        {"action": "grant", "user": BOB, "amount": 100, "expires": "7d"},
        ADMIN,
    )

    week_later = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert said == messages.granted(f"<@{BOB.id}>", 100, 150, week_later)
    balance = await service.credits.balance(BOB_ACCOUNT)
    [expiring] = [lot.expires_at for lot in balance.lots if lot.expires_at]
    assert expiring - week_later < timedelta(seconds=1)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"action": "grant", "expires": "next week"}, messages.bad_expiry("next week")),
        ({"action": "revoke", "expires": "7d"}, messages.EXPIRY_ON_REVOKE),
    ],
)
async def test_a_bad_expiry_is_one_sentence_and_leaves_the_balance_unchanged(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    options: dict[str, object],
    expected: str,
) -> None:
    await service.credits.open_account(BOB_ACCOUNT)

    said = await answer_to(discord_fake, "credits", {"user": BOB, "amount": 10, **options}, ADMIN)

    assert said == expected
    assert await available(service, BOB_ACCOUNT) == 50


async def test_an_admin_revoke_takes_credits_back(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await service.credits.open_account(BOB_ACCOUNT)

    said = await answer_to(
        discord_fake, "credits", {"action": "revoke", "user": BOB, "amount": 20}, ADMIN
    )

    assert said == messages.revoked(f"<@{BOB.id}>", 20, 30)


async def test_a_grant_without_a_user_says_how_to_grant(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    said = await answer_to(discord_fake, "credits", {"action": "grant", "amount": 5}, ADMIN)

    assert said == messages.DISCORD_GRANT_USAGE


# -- /statement ---------------------------------------------------------------------


async def statement_of(discord_fake: LoopbackDiscord, user: User = ALICE) -> Message:
    """The answer to ``/statement`` once it is complete (after a deferral, its edit)."""
    interaction = await discord_fake.slash("statement", {}, user=user)
    await discord_fake.wait_for(
        lambda: (
            interaction.original_id is not None
            and discord_fake.original(interaction).content.startswith(("Your", "No"))
        )
    )
    return discord_fake.original(interaction)


async def test_statement_attaches_your_changes_as_csv_with_the_running_balance(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await service.credits.grant(f"discord:{ADMIN.id}", ALICE_ACCOUNT, 20, "contest")
    await service.credits.revoke(f"discord:{ADMIN.id}", ALICE_ACCOUNT, 5, "correction")

    message = await statement_of(discord_fake)

    assert message.ephemeral
    assert message.content == messages.statement_attached(3, 65)
    [attached] = message.files
    assert attached.filename == "statement-2026-11-24.csv"
    header, *rows = csv.reader(io.StringIO(attached.data.decode()))
    assert tuple(header) == statements.COLUMNS
    assert [(row[1], row[3], row[7]) for row in rows] == [
        ("grant", "50", "50"),
        ("grant", "20", "70"),
        ("adjustment", "-5", "65"),
    ]


async def test_a_statement_slower_than_the_deadline_allows_is_deferred_then_attached(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_down(service.credits, "own_statement", monkeypatch)

    interaction = await discord_fake.slash("statement", {})
    await discord_fake.wait_for(
        lambda: interaction.original_id is not None and discord_fake.original(interaction).files
    )

    assert interaction.callback_type == DEFERRED_CHANNEL_MESSAGE
    message = discord_fake.original(interaction)
    assert (message.ephemeral, message.content) == (True, messages.statement_attached(1, 50))
    assert message.files[0].data.decode().splitlines()[1].split(",")[1] == "grant"


async def test_a_statement_with_no_entries_says_so_without_a_file(
    settings: Settings, discord_fake: LoopbackDiscord, clock: FakeClock
) -> None:
    unwelcomed = settings.model_copy(update={"starting_credits": 0})
    async with (
        open_service(unwelcomed, clock=clock) as service,
        running_bot(service, unwelcomed, discord_fake),
    ):
        message = await statement_of(discord_fake)

    assert (message.ephemeral, message.content, message.files) == (
        True,
        messages.NO_STATEMENT,
        [],
    )


# -- /stats -------------------------------------------------------------------------


async def test_stats_answers_an_admin_privately_with_the_chart_attached(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await generate(service, ALICE_ACCOUNT, "model:local-sketch count:2 a fox", Script())

    interaction = await discord_fake.slash("stats", {"model": "local-sketch"}, user=ADMIN)
    await discord_fake.wait_for(
        lambda: interaction.original_id is not None and discord_fake.original(interaction).files
    )

    message = discord_fake.original(interaction)
    assert message.ephemeral
    assert message.content.splitlines()[0].endswith(", local-sketch:")
    [chart] = message.files
    assert chart.filename == "stats-2026-11-24-local-sketch.png"
    with Image.open(io.BytesIO(chart.data)) as image:
        assert image.format == "PNG"


async def test_stats_are_refused_to_someone_not_an_admin(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    assert await answer_to(discord_fake, "stats", {}, ALICE) == messages.STATS_NOT_ADMIN


async def test_stats_offers_the_models_as_the_model_is_typed(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    choices = await discord_fake.autocomplete(
        "stats", {"model": "loc"}, focused="model", user=ADMIN
    )

    assert [choice["value"] for choice in choices] == ["local-sketch"]


# -- /price -------------------------------------------------------------------------


async def test_an_admin_s_price_for_a_model_is_the_next_quote_s_price(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    said = await answer_to(
        discord_fake,
        "price",
        {"action": "set", "user": BOB, "model": "scripted", "credits": 8, "reason": "loyal"},
        ADMIN,
    )

    assert said == messages.model_price_set(f"<@{BOB.id}>", "scripted", 8, None)
    [override] = await service.ledger.price_overrides(BOB_ACCOUNT)
    assert (override.actor, override.reason) == (f"discord:{ADMIN.id}", "loyal")
    _, quoted = await quote(discord_fake, {"prompt": "a fox", "model": "scripted"}, BOB)
    assert "Your price 8 per image, list 10." in quoted.content


async def test_an_admin_s_percent_off_is_the_next_quote_s_price(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    said = await answer_to(
        discord_fake,
        "price",
        {
            "action": "set",
            "user": BOB,
            "percent_off": 30,
            "until": "2099-01-01",
            "reason": "beta tester",
        },
        ADMIN,
    )

    assert said == messages.percent_off_set(f"<@{BOB.id}>", 30, datetime(2099, 1, 1, tzinfo=UTC))
    _, quoted = await quote(discord_fake, {"prompt": "a fox", "model": "scripted"}, BOB)
    assert "Your price 7 per image, list 10 (30% off, until 2099-01-01 00:00 UTC)." in (
        quoted.content
    )


async def test_an_admin_lists_and_clears_someone_s_prices(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await answer_to(
        discord_fake,
        "price",
        {"action": "set", "user": BOB, "model": "scripted", "credits": 8, "reason": "loyal"},
        ADMIN,
    )

    listed = await answer_to(discord_fake, "price", {"action": "list", "user": BOB}, ADMIN)
    assert listed.startswith(f"<@{BOB.id}>  scripted: 8 credits per image  set by <@{ADMIN.id}>")
    cleared = await answer_to(discord_fake, "price", {"action": "clear", "user": BOB}, ADMIN)
    assert cleared == messages.price_overrides_cleared(f"<@{BOB.id}>", None, 1)
    assert await service.ledger.price_overrides(None) == []


async def test_everyone_s_prices_name_discord_people_by_mention_and_others_by_id(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await service.ledger.set_price_override(
        BOB_ACCOUNT, model_id=None, percent_off=10, until=None, actor="cli:root", reason="beta"
    )
    await service.ledger.set_price_override(
        "slack:T1:U3", model_id=None, percent_off=20, until=None, actor="cli:root", reason="beta"
    )

    listed = await answer_to(discord_fake, "price", {"action": "list"}, ADMIN)

    lines = sorted(listed.splitlines())
    assert lines[0].startswith(f"<@{BOB.id}>  every model: 10% off  set by cli:root on ")
    assert lines[1].startswith("slack:T1:U3  every model: 20% off  set by cli:root on ")


async def test_everyone_s_prices_too_many_for_one_message_are_listed_in_several(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    for number in range(10):
        await service.ledger.set_price_override(
            f"discord:{900_000_000_000_000_300 + number}",
            model_id="scripted",
            credits_per_image=number + 1,
            until=None,
            actor="cli:admin",
            reason="r" * 400,
        )

    interaction = await discord_fake.slash("price", {"action": "list"}, user=ADMIN)

    def sent() -> list[Message]:
        if interaction.original_id is None:
            return []
        return [discord_fake.original(interaction), *discord_fake.followups(interaction)]

    await discord_fake.wait_for(
        lambda: sum(message.content.count("r" * 400) for message in sent()) == 10
    )
    assert len(sent()) > 1
    assert all(message.ephemeral and len(message.content) <= 2000 for message in sent())


async def test_a_price_set_by_a_non_admin_is_refused_and_changes_nothing(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    said = await answer_to(
        discord_fake,
        "price",
        {"action": "set", "user": ALICE, "percent_off": 100, "reason": "mine"},
        ALICE,
    )

    assert said == messages.NOT_ADMIN
    assert await service.ledger.price_overrides(None) == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"user": BOB, "model": "scripted-v9", "credits": 8},
            messages.unknown_model("scripted-v9", ["scripted"]),
        ),
        (
            {"user": BOB, "percent_off": 10, "until": "2001-01-01"},
            messages.date_in_the_past(datetime(2001, 1, 1, tzinfo=UTC)),
        ),
        (
            {"user": BOB, "model": "scripted", "credits": 8, "percent_off": 10},
            messages.PRICE_ONE_RULE,
        ),
        ({"model": "scripted", "credits": 8}, messages.DISCORD_PRICE_USAGE),
    ],
)
async def test_a_bad_price_command_is_one_sentence_and_changes_nothing(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    options: dict[str, object],
    expected: str,
) -> None:
    said = await answer_to(
        discord_fake, "price", {"action": "set", "reason": "nice", **options}, ADMIN
    )

    assert said == expected
    assert await service.ledger.price_overrides(None) == []


async def test_price_autocomplete_offers_the_models_matching_what_is_typed(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    choices = await discord_fake.autocomplete(
        "price", {"action": "set", "model": "scr"}, focused="model", user=ADMIN
    )

    assert [choice["value"] for choice in choices] == ["scripted"]


async def test_models_lists_the_models_with_prices(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    said = await answer_to(discord_fake, "models", {}, ALICE)

    assert "local-sketch" in said
    assert "scripted" in said
    assert said.startswith("```")


async def test_models_shows_the_user_s_own_price_beside_the_list_price(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await service.ledger.set_price_override(
        ALICE_ACCOUNT, model_id="scripted", credits_per_image=8, actor="test", reason="loyal"
    )

    said = await answer_to(discord_fake, "models", {}, ALICE)

    assert "10 (your price 8)" in said


async def test_a_models_table_too_long_for_one_message_is_sent_in_several_whole(
    settings: Settings, discord_fake: LoopbackDiscord, tmp_path: Path
) -> None:
    many = "".join(
        f'[models.local-{number}]\nprovider = "local"\nprovider_model = "procedural-v1"\n'
        f'name = "Local number {number} with a long name"\ncredits_per_image = 1\n'
        'resolutions = ["1K", "2K"]\naspect_ratios = ["1:1", "16:9", "9:16", "4:3"]\n'
        "max_images = 1\n"
        for number in range(40)
    )
    models_file = tmp_path / "many.toml"
    models_file.write_text(many)
    crowded = settings.model_copy(update={"models_file": models_file})
    async with open_service(crowded) as service, running_bot(service, crowded, discord_fake):
        interaction = await discord_fake.slash("models", {})
        await discord_fake.wait_for(lambda: len(discord_fake.followups(interaction)) >= 1)
        await asyncio.sleep(0.2)
        messages_sent = [discord_fake.original(interaction), *discord_fake.followups(interaction)]

    said = [message.content for message in messages_sent]
    assert len(said) > 1
    assert all(len(text) <= 2000 and text.startswith("```\nmodel ") for text in said)
    listed = "\n".join(said)
    assert all(f"local-{number} " in listed for number in range(40))


async def test_help_explains_the_commands_and_admin_commands_only_to_admins(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    for_alice = await answer_to(discord_fake, "help", {}, ALICE)
    for_admin = await answer_to(discord_fake, "help", {}, ADMIN)

    assert "/imagine" in for_alice
    assert "**/statement**" in for_alice
    assert "grant" not in for_alice
    assert "grant" in for_admin
    assert "/price" not in for_alice
    assert "/stats" not in for_alice
    assert "**/stats**" in for_admin
    assert "**/price**" in for_admin


async def test_stopping_the_bot_mid_generation_releases_the_hold_and_says_so(
    service: ImagineService,
    settings: Settings,
    discord_fake: LoopbackDiscord,
    scripted: ScriptedProvider,
) -> None:
    scripted.script = Script(hang=True)
    async with running_bot(service, settings, discord_fake):
        _, message = await quote(discord_fake, {"prompt": "a fox", "model": "scripted"})
        await discord_fake.click(message, message.button("Generate"))
        async with asyncio.timeout(10):
            await scripted.started.wait()

    balance = await service.credits.balance(ALICE_ACCOUNT)
    assert (balance.available, balance.held) == (50, 0)
    [generation] = await service.ledger.history(ALICE_ACCOUNT)
    assert (generation.status, generation.error_code) == (GenerationStatus.FAILED, "interrupted")
    assert message.content.startswith(messages.failure("interrupted"))


async def test_a_quote_slower_than_the_deadline_allows_is_deferred_then_shown(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_down(service, "quote", monkeypatch)

    interaction = await discord_fake.slash("imagine", {"prompt": "a lighthouse"})
    await discord_fake.wait_for(
        lambda: (
            interaction.original_id is not None and bool(discord_fake.original(interaction).buttons)
        )
    )

    assert interaction.callback_type == DEFERRED_CHANNEL_MESSAGE
    assert discord_fake.original(interaction).content.startswith("Local Sketch · 1 image")


@pytest.mark.parametrize(
    ("sizes", "batches"),
    [
        ([1_000] * 4, [(0, 4)]),
        ([1_000] * 12, [(0, 10), (10, 12)]),
        ([9_000_000] * 4, [(0, 2), (2, 4)]),
        ([30_000_000, 1_000], [(0, 1), (1, 2)]),
    ],
)
def test_images_go_in_as_few_messages_as_discords_per_message_limits_allow(
    sizes: list[int], batches: list[tuple[int, int]]
) -> None:
    assert discord_adapter._message_batches(sizes) == batches


# -- /compare -------------------------------------------------------------------


async def test_compare_shows_each_price_and_posts_the_grid_then_the_originals(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    interaction = await discord_fake.slash(
        "compare", {"prompt": "a lighthouse", "models": "local-sketch,scripted"}
    )
    await discord_fake.wait_for(lambda: interaction.original_id is not None)
    message = discord_fake.original(interaction)
    assert "  Scripted: 10 credits" in message.content
    assert "Total: 11 credits" in message.content

    click = await discord_fake.click(message, message.button("Compare 2 models · 11 credits"))
    await discord_fake.wait_for(lambda: "Compare done" in message.content)

    grid, *originals = discord_fake.followups(click)
    assert grid.content.endswith("· Compare · 11 credits")
    [upload] = grid.files
    with Image.open(io.BytesIO(upload.data)) as image:
        assert image.size[0] == 2 * GRID_CELL
    assert len(originals) == 2
    assert "Compare done: 11 credits in all." in message.content
    assert await available(service) == 39
    assert await service.ledger.verify() == []


# -- /history and /settings auto_confirm_under ----------------------------------


async def generated(
    discord_fake: LoopbackDiscord,
    user: User = ALICE,
    options: dict[str, object] | None = None,
) -> Message:
    """The public message holding the images of a request ``user`` made and confirmed
    (two Local Sketch images of a lighthouse unless ``options`` say otherwise)."""
    asked = options or {"prompt": "a lighthouse", "count": 2}
    _, message = await quote(discord_fake, asked, user)
    click = await discord_fake.click(message, message.button("Generate"), user=user)
    await discord_fake.wait_for(lambda: message.content.startswith("Done"))
    [posted] = discord_fake.followups(click)
    return posted


async def history(discord_fake: LoopbackDiscord, user: User = ALICE) -> Message:
    interaction = await discord_fake.slash("history", {}, user=user)
    await discord_fake.wait_for(lambda: interaction.original_id is not None)
    return discord_fake.original(interaction)


async def quoted_by(
    discord_fake: LoopbackDiscord, listed: Message, label: str, user: User
) -> Message:
    """The private quote that pressing ``label`` on ``listed`` as ``user`` answers with."""
    click = await discord_fake.click(listed, listed.button(label), user=user)
    # Until it answers, the click's original response is the message clicked.
    await discord_fake.wait_for(
        lambda: click.original_id != listed.id and discord_fake.original(click).buttons
    )
    return discord_fake.original(click)


async def confirmed(discord_fake: LoopbackDiscord, quoted: Message, user: User) -> Message:
    """``quoted`` once ``user`` pressed its Generate and it is done."""
    await discord_fake.click(quoted, quoted.button("Generate"), user=user)
    await discord_fake.wait_for(lambda: quoted.content.startswith("Done"))
    return quoted


async def again(
    discord_fake: LoopbackDiscord, listed: Message, user: User, label: str = "Again 1"
) -> Message:
    """Press Again on ``listed``'s first generation as ``user``, then its quote's Generate."""
    return await confirmed(discord_fake, await quoted_by(discord_fake, listed, label, user), user)


async def test_history_links_to_the_message_holding_the_images(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    posted = await generated(discord_fake)

    listed = await history(discord_fake)

    assert listed.ephemeral
    assert "local-sketch  2/2 images  2 credits" in listed.content
    assert "[jump](<https://discord.com/channels/" in listed.content
    assert f"/{posted.channel_id}/{posted.id}>)" in listed.content
    assert [button["label"] for button in listed.buttons] == ["Again 1"]


async def test_again_by_another_user_charges_that_user(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await generated(discord_fake, ALICE)
    listed = await history(discord_fake, ALICE)

    await again(discord_fake, listed, BOB)

    assert (await available(service, ALICE_ACCOUNT), await available(service, BOB_ACCOUNT)) == (
        48,
        48,
    )


@pytest.mark.both_databases
async def test_again_pressed_after_a_restart_still_quotes(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    async with running_bot(service, settings, discord_fake):
        await generated(discord_fake)
        listed = await history(discord_fake)
    async with running_bot(service, settings, discord_fake):
        await again(discord_fake, listed, ALICE)

    assert await available(service) == 46


async def test_a_request_under_the_auto_confirm_limit_generates_without_a_button(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await answer_to(discord_fake, "settings", {"auto_confirm_under": 5}, ALICE)

    interaction, message = await quote(discord_fake, {"prompt": "a lighthouse", "count": 2})
    await discord_fake.wait_for(lambda: message.content.startswith("Done"))

    assert message.buttons == []
    assert message.content.startswith("Done: 2 images for 2 credits (auto-confirmed under 5).")
    assert len(discord_fake.followups(interaction)) == 1
    assert await available(service) == 48


async def test_a_request_over_the_auto_confirm_limit_shows_the_button(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await answer_to(discord_fake, "settings", {"auto_confirm_under": 1}, ALICE)

    _, message = await quote(discord_fake, {"prompt": "a lighthouse", "count": 2})

    assert message.button("Generate")["label"] == "Generate 2 images · 2 credits"
    assert await available(service) == 50


# -- subjects ----------------------------------------------------------------


def subject_png(colour: str) -> tuple[str, str, bytes]:
    picture = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(picture, "PNG")
    return (f"{colour}.png", "image/png", picture.getvalue())


async def subject_answer(discord_fake: LoopbackDiscord, interaction: Interaction) -> str:
    """The ephemeral answer's final text (a deferred one is filled in later)."""
    await discord_fake.wait_for(
        lambda: (
            interaction.original_id is not None
            and discord_fake.original(interaction).content not in ("", None)
        )
    )
    return discord_fake.original(interaction).content


async def test_subject_save_stores_the_attached_images(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    interaction = await discord_fake.slash(
        "subject",
        {"action": "save", "name": "Ada"},
        attachments={"image1": subject_png("red"), "image2": subject_png("blue")},
    )
    assert await subject_answer(discord_fake, interaction) == messages.subject_saved(
        "ada", 2, False
    )
    stored = await service.ledger.subject_images(ALICE_ACCOUNT, "ada")
    assert len(stored) == 2


async def test_imagine_subject_autocomplete_lists_only_your_own_subjects(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    picture = [ReferenceImage(subject_png("red")[2], "image/png")]
    for name in ("ada", "alan"):
        await service.subjects.save(ALICE_ACCOUNT, name, picture)
    await service.subjects.save(BOB_ACCOUNT, "grace", picture)

    choices = await discord_fake.autocomplete(
        "imagine", {"prompt": "a portrait", "subject": "a"}, focused="subject"
    )

    assert [choice["value"] for choice in choices] == ["ada", "alan"]


async def test_imagine_with_a_subject_sends_its_images_to_the_provider(
    bot: ImagineBot,
    discord_fake: LoopbackDiscord,
    service: ImagineService,
    scripted: ScriptedProvider,
) -> None:
    await service.subjects.save(
        ALICE_ACCOUNT, "ada", [ReferenceImage(subject_png("red")[2], "image/png")]
    )
    interaction = await discord_fake.slash(
        "imagine", {"prompt": "Ada in blue", "model": "scripted", "subject": "ada"}
    )
    await discord_fake.wait_for(
        lambda: interaction.original_id is not None and discord_fake.original(interaction).buttons
    )
    message = discord_fake.original(interaction)
    await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: scripted.requests)
    [reference] = scripted.requests[0].reference_images
    with Image.open(io.BytesIO(reference.data)) as received:
        assert received.getpixel((0, 0)) == (255, 0, 0)


async def test_a_subject_with_an_attached_reference_past_the_limit_is_one_sentence(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    await service.subjects.save(
        ALICE_ACCOUNT, "ada", [ReferenceImage(subject_png("red")[2], "image/png")]
    )
    interaction = await discord_fake.slash(
        "imagine",
        {"prompt": "Ada in blue", "model": "scripted", "subject": "ada"},
        attachment=subject_png("blue"),
    )
    refusal = messages.too_many_reference_images(2, "scripted", 1, "ada")
    assert await subject_answer(discord_fake, interaction) == refusal
    assert await service.ledger.history(ALICE_ACCOUNT, limit=1, include_unconfirmed=True) == []


# -- the buttons under a posted result -----------------------------------------


def generation_id(posted: Message) -> str:
    return str(posted.button("Delete")["custom_id"]).rpartition(":")[2]


async def test_a_result_has_again_edit_and_delete_and_vary_only_for_a_model_taking_references(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    sketch = await generated(discord_fake)
    scripted = await generated(discord_fake, options={"prompt": "a fox", "model": "scripted"})

    assert [button["label"] for button in sketch.buttons] == ["Again", "Edit", "Delete"]
    assert [button["label"] for button in scripted.buttons] == ["Again", "Vary", "Edit", "Delete"]


async def test_again_under_a_result_by_another_user_charges_that_user(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    posted = await generated(discord_fake, ALICE)

    await again(discord_fake, posted, BOB, label="Again")

    assert (await available(service, ALICE_ACCOUNT), await available(service, BOB_ACCOUNT)) == (
        48,
        48,
    )


async def test_again_under_a_result_pressed_after_a_restart_still_quotes(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord
) -> None:
    async with running_bot(service, settings, discord_fake):
        posted = await generated(discord_fake)
    async with running_bot(service, settings, discord_fake):
        await again(discord_fake, posted, ALICE, label="Again")

    assert await available(service) == 46


async def test_vary_after_a_restart_sends_the_posted_image_as_the_reference(
    service: ImagineService,
    settings: Settings,
    discord_fake: LoopbackDiscord,
    scripted: ScriptedProvider,
) -> None:
    async with running_bot(service, settings, discord_fake):
        posted = await generated(discord_fake, options={"prompt": "a fox", "model": "scripted"})
    async with running_bot(service, settings, discord_fake):
        quoted = await quoted_by(discord_fake, posted, "Vary", BOB)
        await confirmed(discord_fake, quoted, BOB)

    [reference] = scripted.requests[1].reference_images
    assert scripted.requests[1].prompt == "a fox"
    with (
        Image.open(io.BytesIO(reference.data)) as received,
        Image.open(io.BytesIO(posted.files[0].data)) as shown,
    ):
        assert (received.size, received.getpixel((0, 0))) == (shown.size, shown.getpixel((0, 0)))
    assert await available(service, BOB_ACCOUNT) == 40


async def test_vary_of_a_model_taking_no_references_is_one_sentence_and_quotes_nothing(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    posted = await generated(discord_fake)
    # As on a result posted before its model stopped taking reference images.
    vary = {
        "type": 2,
        "style": 2,
        "label": "Vary",
        "custom_id": f"imagine:vary:{generation_id(posted)}",
    }
    posted.components[0]["components"].insert(1, vary)

    click = await discord_fake.click(posted, vary)
    await discord_fake.wait_for(lambda: discord_fake.original(click).content.endswith("varied."))

    answer = discord_fake.original(click)
    assert (answer.content, answer.buttons) == (messages.VARY_UNSUPPORTED, [])


async def test_edit_opens_a_form_with_the_prompt_prefilled(
    bot: ImagineBot, discord_fake: LoopbackDiscord
) -> None:
    posted = await generated(discord_fake)

    click = await discord_fake.click(posted, posted.button("Edit"), user=BOB)
    await discord_fake.wait_for(lambda: click.callbacks)

    assert click.callback_type == MODAL
    [prompt] = discord_fake.form_fields(click).values()
    assert prompt["value"] == "a lighthouse"


async def test_an_edit_submitted_after_a_restart_quotes_the_edited_prompt_for_the_submitter(
    service: ImagineService,
    settings: Settings,
    discord_fake: LoopbackDiscord,
    scripted: ScriptedProvider,
) -> None:
    async with running_bot(service, settings, discord_fake):
        posted = await generated(discord_fake, options={"prompt": "a fox", "model": "scripted"})
        click = await discord_fake.click(posted, posted.button("Edit"), user=BOB)
        await discord_fake.wait_for(lambda: click.callbacks)
    async with running_bot(service, settings, discord_fake):
        [field] = discord_fake.form_fields(click)
        submit = await discord_fake.submit(click, {field: "a fox in the snow"}, user=BOB)
        await discord_fake.wait_for(
            lambda: submit.original_id is not None and discord_fake.original(submit).buttons
        )
        await confirmed(discord_fake, discord_fake.original(submit), BOB)

    assert [request.prompt for request in scripted.requests] == ["a fox", "a fox in the snow"]
    assert (await available(service, ALICE_ACCOUNT), await available(service, BOB_ACCOUNT)) == (
        40,
        40,
    )


@pytest.mark.both_databases
async def test_delete_by_the_requester_after_a_restart_removes_the_message_and_refunds_nothing(
    service: ImagineService, settings: Settings, discord_fake: LoopbackDiscord, clock: FakeClock
) -> None:
    async with running_bot(service, settings, discord_fake):
        posted = await generated(discord_fake)
    before = clock.now
    async with running_bot(service, settings, discord_fake):
        click = await discord_fake.click(posted, posted.button("Delete"))
        await discord_fake.wait_for(lambda: click.original_id != posted.id)

    assert posted.deleted
    assert discord_fake.original(click).content == messages.DELETED
    deleted = await service.deleted(generation_id(posted))
    assert deleted is not None
    assert deleted[0] == ALICE_ACCOUNT and before < deleted[1] <= clock.now
    assert await available(service) == 48


async def test_delete_by_an_admin_removes_someone_else_s_result(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    posted = await generated(discord_fake)

    click = await discord_fake.click(posted, posted.button("Delete"), user=ADMIN)
    await discord_fake.wait_for(lambda: click.original_id != posted.id)

    assert posted.deleted
    deleted = await service.deleted(generation_id(posted))
    assert deleted is not None and deleted[0] == f"discord:{ADMIN.id}"


async def test_delete_by_a_stranger_is_refused_and_nothing_changes(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    posted = await generated(discord_fake)

    click = await discord_fake.click(posted, posted.button("Delete"), user=BOB)
    await discord_fake.wait_for(lambda: click.original_id != posted.id)

    answer = discord_fake.original(click)
    assert (answer.content, answer.ephemeral) == (messages.DELETE_NOT_YOURS, True)
    assert not posted.deleted
    assert await service.deleted(generation_id(posted)) is None


async def test_delete_of_a_message_already_gone_says_so_and_records_nothing(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    posted = await generated(discord_fake)
    posted.deleted = True

    click = await discord_fake.click(posted, posted.button("Delete"))
    await discord_fake.wait_for(lambda: click.original_id != posted.id)

    assert discord_fake.original(click).content == messages.DELETE_GONE
    assert await service.deleted(generation_id(posted)) is None


async def test_vary_whose_image_cannot_be_downloaded_says_so_and_quotes_nothing(
    bot: ImagineBot, discord_fake: LoopbackDiscord, service: ImagineService
) -> None:
    posted = await generated(discord_fake, options={"prompt": "a fox", "model": "scripted"})
    discord_fake.fail_downloads_with = 403

    click = await discord_fake.click(posted, posted.button("Vary"), user=BOB)
    await discord_fake.wait_for(
        lambda: discord_fake.original(click).content.startswith("Could not download")
    )

    assert discord_fake.original(click).buttons == []
    assert await available(service, BOB_ACCOUNT) == 50
