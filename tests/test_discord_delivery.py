"""Posting images on Discord when it fails part-way or its answer is lost: the real
discord.py client against the loopback Discord, on both databases.

What reached the channel is charged and the rest released; where Discord's answer
to a post is lost, the adapter reads the channel to find out which it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot import messages
from bot.flow import ImagineService
from bot.parsing import ImagineOptions, validate_request
from bot.platforms.discord import ImagineBot
from bot.settings import Settings
from ledger import Generation, GenerationStatus
from tests.fakes import ScriptedProvider
from tests.loopback_discord import (
    GUILD_ID,
    TOKEN,
    FollowupFault,
    Interaction,
    LoopbackDiscord,
    Message,
)
from tests.test_discord import (  # noqa: F401 - fixtures
    ALICE_ACCOUNT,
    bot,
    discord_fake,
    quote,
    running_bot,
    scripted,
    service,
)

MODELS = """
[models.scripted]
provider = "scripted"
provider_model = "scripted-v1"
name = "Scripted"
credits_per_image = 10
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 10
"""
STARTING_CREDITS = 200


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        discord_token=TOKEN,
        discord_guild_ids=str(GUILD_ID),
        starting_credits=STARTING_CREDITS,
        upload_timeout_seconds=0.5,
    )


async def generate_twelve(
    imagine: ImagineService, fake: LoopbackDiscord
) -> tuple[Interaction, Message]:
    """Press Generate on a request of 12 images, which Discord takes as two messages (10 and 2).

    The registry allows at most 10 images a request, so in use a second message
    comes from the 24 MB a message may carry; the flow takes any count, and this
    request is quoted past the registry to reach two messages with small images.
    """
    _, message = await quote(fake, {"prompt": "a fox"})
    request = validate_request(ImagineOptions(prompt="a fox", model="scripted"), imagine.catalog)
    twelve = await imagine.quote(ALICE_ACCOUNT, dataclasses.replace(request, count=12))
    # The quote message shows that request's button, as if it had been quoted for 12.
    generate = message.button("Generate") | {"custom_id": f"imagine:generate:{twelve.id}"}
    message.components = [{"type": 1, "components": [generate]}]
    click = await fake.click(message, generate)
    return click, message


async def settled(imagine: ImagineService) -> Generation:
    [generation] = await imagine.ledger.history(ALICE_ACCOUNT, limit=1)
    return generation


async def balance(imagine: ImagineService) -> tuple[int, int]:
    found = await imagine.credits.balance(ALICE_ACCOUNT)
    return found.available, found.held


def ending(message: Message) -> bool:
    return "credits available" in message.content


async def test_an_upload_refused_at_its_second_message_charges_the_ten_images_of_the_first(
    bot: ImagineBot,  # noqa: F811
    discord_fake: LoopbackDiscord,  # noqa: F811
    service: ImagineService,  # noqa: F811
) -> None:
    discord_fake.followup_fault = FollowupFault(2, "refuse", status=413)

    click, message = await generate_twelve(service, discord_fake)
    await discord_fake.wait_for(lambda: ending(message))

    [first] = discord_fake.followups(click)
    assert len(first.files) == 10
    assert message.content == (
        "Only 10 of 12 images could be posted here (the upload failed part-way);"
        " you were charged 100 credits for those and the rest was returned.\n"
        "Balance: 100 credits available."
    )
    generation = await settled(service)
    assert (generation.status, generation.images_delivered, generation.credits_charged) == (
        GenerationStatus.PARTIAL,
        10,
        100,
    )
    assert await balance(service) == (STARTING_CREDITS - 100, 0)


async def test_a_post_whose_answer_times_out_is_charged_once_the_channel_shows_it(
    bot: ImagineBot,  # noqa: F811
    discord_fake: LoopbackDiscord,  # noqa: F811
    service: ImagineService,  # noqa: F811
) -> None:
    discord_fake.followup_fault = FollowupFault(1, "hang")
    _, message = await quote(discord_fake, {"prompt": "a fox", "count": 2})

    await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: ending(message))

    assert discord_fake.history_reads == 1
    assert message.content == "Done: 2 images for 20 credits.\nBalance: 180 credits available."
    assert (await settled(service)).credits_charged == 20
    assert await balance(service) == (STARTING_CREDITS - 20, 0)


async def test_a_post_whose_connection_resets_after_discord_took_it_is_charged(
    bot: ImagineBot,  # noqa: F811
    discord_fake: LoopbackDiscord,  # noqa: F811
    service: ImagineService,  # noqa: F811
) -> None:
    discord_fake.followup_fault = FollowupFault(1, "reset")
    _, message = await quote(discord_fake, {"prompt": "a fox", "count": 2})

    await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: ending(message))

    assert discord_fake.history_reads == 1
    assert message.content == "Done: 2 images for 20 credits.\nBalance: 180 credits available."
    assert await balance(service) == (STARTING_CREDITS - 20, 0)


async def test_a_lost_answer_discord_cannot_confirm_is_not_charged_and_is_logged(
    bot: ImagineBot,  # noqa: F811
    discord_fake: LoopbackDiscord,  # noqa: F811
    service: ImagineService,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    discord_fake.followup_fault = FollowupFault(1, "hang")
    discord_fake.fail_history_with = 403
    _, message = await quote(discord_fake, {"prompt": "a fox", "count": 2})

    await discord_fake.click(message, message.button("Generate"))
    await discord_fake.wait_for(lambda: ending(message))

    assert message.content == (
        messages.failure("delivery_failed", messages.upload_lost("Discord"))
        + f"\nBalance: {STARTING_CREDITS} credits available."
    )
    assert await balance(service) == (STARTING_CREDITS, 0)
    assert "counted as not posted" in caplog.text


async def test_stopping_the_bot_mid_upload_charges_the_message_already_posted(
    service: ImagineService,  # noqa: F811
    settings: Settings,
    discord_fake: LoopbackDiscord,  # noqa: F811
    scripted: ScriptedProvider,  # noqa: F811
) -> None:
    discord_fake.followup_fault = FollowupFault(2, "stall")
    async with running_bot(service, settings, discord_fake):
        click, message = await generate_twelve(service, discord_fake)
        await discord_fake.wait_for(lambda: click.followups_tried == 2)

    assert discord_fake.history_reads == 1
    assert message.content == (
        "Only 10 of 12 images could be posted here (the bot stopped while posting them);"
        " you were charged 100 credits for those and the rest was returned.\n"
        "Balance: 100 credits available."
    )
    assert (await settled(service)).images_delivered == 10
    assert await balance(service) == (STARTING_CREDITS - 100, 0)
