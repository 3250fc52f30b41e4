"""Uploading images to Slack when the last step fails part-way or its answer is lost: the real
slack-bolt app and Web API client against the loopback Slack, on both databases.

What Slack shared to the channel is charged and the rest released; where the
answer of ``files.completeUploadExternal`` is lost, the adapter asks ``files.info``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import messages
from bot.flow import ImagineService
from bot.platforms.slack import GENERATE_ACTION, SlackImagine
from bot.settings import Settings
from ledger import GenerationStatus
from tests.loopback_slack import (
    BOT_TOKEN,
    CHANNEL,
    SIGNING_SECRET,
    TEAM,
    CompletionFault,
    LoopbackSlack,
    SlackDriver,
)
from tests.test_slack import (  # noqa: F401 - fixtures
    MODELS,
    driver,
    final_text,
    quote_id,
    scripted,
    service,
    serving,
    slack,
)

ALICE = f"slack:{TEAM}:U0ALICE"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, slack: LoopbackSlack) -> Settings:  # noqa: F811
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        starting_credits=50,
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_base_url=slack.base_url,
        upload_timeout_seconds=0.5,
    )


async def generate_two(driver: SlackDriver) -> str:  # noqa: F811
    """Press Generate on two Scripted images (20 credits); returns the response_url answered on."""
    generation = await quote_id(driver, "model:scripted count:2 a fox")
    _, response_url = await driver.click(GENERATE_ACTION, generation)
    return response_url


async def balance(imagine: ImagineService) -> tuple[int, int]:
    found = await imagine.credits.balance(ALICE)
    return found.available, found.held


async def test_a_completion_that_fails_after_sharing_one_file_charges_for_that_one(
    driver: SlackDriver,  # noqa: F811
    slack: LoopbackSlack,  # noqa: F811
    service: ImagineService,  # noqa: F811
) -> None:
    slack.completion_fault = CompletionFault(shared=1, kind="error")

    said = await final_text(driver, await generate_two(driver), "Balance")

    assert slack.shared(CHANNEL) == 1
    assert said == (
        "Only 1 of 2 images could be posted here (the upload failed part-way);"
        " you were charged 10 credits for it and the rest was returned.\n"
        "Balance: 40 credits available."
    )
    [generation] = await service.ledger.history(ALICE)
    assert (generation.status, generation.credits_charged) == (GenerationStatus.PARTIAL, 10)
    assert await balance(service) == (40, 0)


async def test_a_completion_that_times_out_after_slack_shared_the_files_is_charged(
    driver: SlackDriver,  # noqa: F811
    slack: LoopbackSlack,  # noqa: F811
    service: ImagineService,  # noqa: F811
) -> None:
    slack.completion_fault = CompletionFault(shared=2, kind="hang")

    said = await final_text(driver, await generate_two(driver), "Balance")

    assert len(slack.called("files.info")) == 2
    assert said == "Done: 2 images for 20 credits.\nBalance: 30 credits available."
    assert await balance(service) == (30, 0)


async def test_a_completion_whose_connection_resets_after_slack_shared_the_files_is_charged(
    driver: SlackDriver,  # noqa: F811
    slack: LoopbackSlack,  # noqa: F811
    service: ImagineService,  # noqa: F811
) -> None:
    slack.completion_fault = CompletionFault(shared=2, kind="reset")

    said = await final_text(driver, await generate_two(driver), "Balance")

    assert len(slack.uploads) == 1
    assert said == "Done: 2 images for 20 credits.\nBalance: 30 credits available."
    assert await balance(service) == (30, 0)


async def test_a_lost_completion_slack_cannot_confirm_is_not_charged_and_is_logged(
    driver: SlackDriver,  # noqa: F811
    slack: LoopbackSlack,  # noqa: F811
    service: ImagineService,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    slack.completion_fault = CompletionFault(shared=2, kind="hang")
    slack.fail_files_info = True

    said = await final_text(driver, await generate_two(driver), "Balance")

    assert said == (
        messages.failure("delivery_failed", messages.upload_lost("Slack"))
        + "\nBalance: 50 credits available."
    )
    assert await balance(service) == (50, 0)
    assert "could not ask Slack whether" in caplog.text


async def test_stopping_the_bot_while_slack_completes_the_upload_charges_what_it_shared(
    service: ImagineService,  # noqa: F811
    settings: Settings,
    slack: LoopbackSlack,  # noqa: F811
) -> None:
    slack.completion_fault = CompletionFault(shared=2, kind="hang")
    bot = SlackImagine(service, settings.model_copy(update={"upload_timeout_seconds": 60}))
    async with serving(bot, slack) as driver:  # noqa: F811
        response_url = await generate_two(driver)
        await slack.wait_for(lambda: slack.shared(CHANNEL) == 2)

        await bot.aclose()  # what serve_slack does once the shutdown's grace period is over

        said = slack.responded(response_url)[-1]["text"]
    assert said == "Done: 2 images for 20 credits.\nBalance: 30 credits available."
    assert await balance(service) == (30, 0)
