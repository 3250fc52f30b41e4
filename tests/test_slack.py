"""The Slack adapter end to end: the real slack-bolt app over HTTP, signed requests, a loopback Web API."""

from __future__ import annotations

import asyncio
import contextlib
import html
import io
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from bot import messages
from bot.app import open_service
from bot.circuits import Health
from bot.flow import ImagineService
from bot.images import GRID_CELL
from bot.platforms.slack import (
    AGAIN_ACTION,
    CANCEL_ACTION,
    COMPARE_ACTION,
    EVENTS_PATH,
    GENERATE_ACTION,
    RESULT_ACTION,
    SlackImagine,
    events_application,
    serve_slack,
)
from bot.settings import Settings
from ledger import GenerationStatus
from providers.base import ReferenceImage
from providers.errors import ProviderUnavailable
from tests import fake_gemini
from tests.conftest import FakeClock
from tests.fake_gemini import FakeGemini, Reply, error_body
from tests.fakes import Script, ScriptedProvider, fail_first, slow_down, tiny_png
from tests.loopback_slack import (
    APP_TOKEN,
    BOT_TOKEN,
    CHANNEL,
    PRIVATE_CHANNEL,
    SHARE_TS,
    SIGNING_SECRET,
    TEAM,
    LoopbackSlack,
    SlackDriver,
    permalink,
)
from tests.loopback_stripe import API_KEY as STRIPE_KEY
from tests.loopback_stripe import WEBHOOK_SECRET as STRIPE_SECRET
from tests.loopback_stripe import LoopbackStripe
from tests.test_report import generate

pytestmark = pytest.mark.sqlite_only

ALICE = f"slack:{TEAM}:U0ALICE"
BOB = "U0BOB"
ADMIN = "U0ADMIN"

MODELS = """
[models.local-sketch]
provider = "local"
provider_model = "procedural-v1"
name = "Local Sketch"
credits_per_image = 1
resolutions = ["1K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4

[models.scripted]
provider = "scripted"
provider_model = "scripted-v1"
name = "Scripted"
credits_per_image = 10
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 2
max_reference_images = 1
"""


@pytest.fixture
async def slack() -> AsyncIterator[LoopbackSlack]:
    async with LoopbackSlack() as fake:
        yield fake


@pytest.fixture
def settings(database_url: str, tmp_path: Path, slack: LoopbackSlack) -> Settings:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        admin_accounts=(f"slack:{TEAM}:{ADMIN}",),
        starting_credits=50,
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_base_url=slack.base_url,
    )


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with open_service(settings, clock=clock) as service:
        yield service


@contextlib.asynccontextmanager
async def serving(bot: SlackImagine, slack: LoopbackSlack) -> AsyncIterator[SlackDriver]:
    """``bot`` listening on a local port, and a driver that sends it signed requests."""
    runner = web.AppRunner(events_application(bot))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            yield SlackDriver(f"http://127.0.0.1:{port}{EVENTS_PATH}", slack, session)
    finally:
        await bot.aclose()
        await runner.cleanup()


@pytest.fixture
async def driver(
    service: ImagineService, settings: Settings, slack: LoopbackSlack
) -> AsyncIterator[SlackDriver]:
    async with serving(SlackImagine(service, settings), slack) as driver:
        yield driver


@pytest.fixture
def scripted(service: ImagineService) -> ScriptedProvider:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    return provider


def buttons(acknowledgement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        element["action_id"]: element
        for block in acknowledgement.get("blocks", [])
        if block["type"] == "actions"
        for element in block["elements"]
    }


async def quote_id(driver: SlackDriver, text: str, user: str = "U0ALICE") -> str:
    """The quote's id, from the acknowledgement, or after "Working on it…" (a loaded machine
    took past the deadline) from what replaced it."""
    status, acknowledgement, response_url = await driver.command("/imagine", text, user=user)
    assert status == 200
    if acknowledgement["text"] == messages.SLACK_PREPARING:
        await driver.slack.wait_for(lambda: driver.slack.responded(response_url))
        acknowledgement = driver.slack.responded(response_url)[-1]
    return str(buttons(acknowledgement)[GENERATE_ACTION]["value"])


async def final_text(driver: SlackDriver, response_url: str, ending: str) -> str:
    def last() -> str:
        posted = driver.slack.responded(response_url)
        return posted[-1]["text"] if posted else ""

    await driver.slack.wait_for(lambda: ending in last())
    return last()


async def available(service: ImagineService, account: str = ALICE) -> int:
    return (await service.credits.balance(account)).available


# -- /imagine -------------------------------------------------------------------


async def test_imagine_is_acknowledged_with_the_price_and_two_buttons(driver: SlackDriver) -> None:
    status, acknowledgement, _ = await driver.command(
        "/imagine", "model:local-sketch count:2 aspect:16:9 a lighthouse"
    )

    assert status == 200
    assert acknowledgement["response_type"] == "ephemeral"
    assert acknowledgement["text"] == (
        "Local Sketch · 2 images · 1K · 16:9\nPrice: 2 credits · your balance: 50 credits"
    )
    found = buttons(acknowledgement)
    assert found[GENERATE_ACTION]["text"]["text"] == "Generate 2 images · 2 credits"
    assert found[CANCEL_ACTION]["text"]["text"] == "Cancel"


@pytest.mark.both_databases
async def test_generate_uploads_real_images_to_the_channel_and_charges(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    generation = await quote_id(driver, "count:2 aspect:16:9 a lighthouse")

    status, response_url = await driver.click(GENERATE_ACTION, generation)
    said = await final_text(driver, response_url, "Balance")

    assert status == 200
    assert said == "Done: 2 images for 2 credits.\nBalance: 48 credits available."
    [upload] = slack.uploads
    assert (
        upload.initial_comment == "<@U0ALICE> asked for “a lighthouse” · Local Sketch · 2 credits"
    )
    assert len(upload.files) == 2
    for _, data in upload.files:
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.size) == ("PNG", (1024, 576))
    assert await available(service) == 48
    assert await service.ledger.verify() == []


async def test_progress_replaces_the_quote_before_the_outcome(
    driver: SlackDriver, slack: LoopbackSlack
) -> None:
    generation = await quote_id(driver, "count:2 a lighthouse")

    _, response_url = await driver.click(GENERATE_ACTION, generation)
    await final_text(driver, response_url, "Balance")

    posted = slack.responded(response_url)
    assert all(message["replace_original"] for message in posted)
    assert [message["text"] for message in posted][:4] == [
        messages.SLACK_STARTING,
        "Generating 2 images with Local Sketch…",
        "Generating with Local Sketch: 1 of 2 done…",
        "Posting 2 images…",
    ]
    assert len(posted) == 5


GEMINI_MODELS = """
[models.gemini]
provider = "google"
provider_model = "gemini-3-pro-image"
name = "Gemini"
credits_per_image = 5
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 4
"""


async def test_with_every_step_a_queue_and_a_retry_progress_leaves_the_last_message_to_the_outcome(
    settings: Settings, slack: LoopbackSlack, clock: FakeClock, tmp_path: Path
) -> None:
    models_file = tmp_path / "gemini.toml"
    models_file.write_text(GEMINI_MODELS)
    one_at_a_time = settings.model_copy(
        update={
            "models_file": models_file,
            "gemini_api_key": fake_gemini.API_KEY,
            "gemini_base_url": None,
            "provider_limits": {"google": 1},
        }
    )
    async with FakeGemini() as gemini:
        gemini_settings = one_at_a_time.model_copy(update={"gemini_base_url": gemini.base_url})
        # Bob's image takes a while; the first call for Alice's is rate-limited, then retried.
        gemini.script(
            Reply(delay_seconds=2),
            Reply(429, error_body(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.")),
        )
        async with (
            open_service(gemini_settings, clock=clock) as service,
            serving(SlackImagine(service, gemini_settings), slack) as driver,
        ):
            bobs = await quote_id(driver, "a harbour", user=BOB)
            _, bobs_url = await driver.click(GENERATE_ACTION, bobs, user=BOB)
            # Bob holds the only Gemini slot from here until his image is done.
            await final_text(driver, bobs_url, "Generating")
            alices = await quote_id(driver, "count:3 a lighthouse")

            _, response_url = await driver.click(GENERATE_ACTION, alices)
            said = await final_text(driver, response_url, "Balance")
            await final_text(driver, bobs_url, "Balance")

    assert [message["text"] for message in slack.responded(response_url)] == [
        messages.SLACK_STARTING,
        "Queued: 1 ahead of you…",
        "Generating 3 images with Gemini…",
        "Generating with Gemini: 1 of 3 done…",
        said,
    ]
    assert said.startswith("Done: 3 images for 15 credits.")
    assert len(gemini.calls) == 1 + 3 + 1
    assert slack.refused == []


async def test_an_outcome_the_response_url_no_longer_takes_is_sent_privately(
    driver: SlackDriver, slack: LoopbackSlack, scripted: ScriptedProvider
) -> None:
    scripted.release = asyncio.Event()
    generation = await quote_id(driver, "model:scripted a fox")
    _, response_url = await driver.click(GENERATE_ACTION, generation)
    await scripted.wait_for_requests(1)

    slack.expire(response_url)
    scripted.release.set()
    await slack.wait_for(lambda: slack.called("chat.postEphemeral"))

    [sent] = slack.called("chat.postEphemeral")
    assert (sent["channel"], sent["user"]) == (CHANNEL, "U0ALICE")
    assert sent["text"] == "Done: 1 image for 10 credits.\nBalance: 40 credits available."
    assert [refused["text"] for _, refused in slack.refused] == [
        "Posting 1 image…",
        sent["text"],
    ]


async def test_help_and_a_bare_imagine_show_usage_with_the_models(driver: SlackDriver) -> None:
    for text in ("", "help"):
        _, acknowledgement, _ = await driver.command("/imagine", text)

        assert "*/imagine*" in acknowledgement["text"]
        assert "local-sketch" in acknowledgement["text"]


async def test_imagine_price_answers_the_quote_without_buttons_and_records_nothing(
    driver: SlackDriver, service: ImagineService
) -> None:
    _, acknowledgement, _ = await driver.command(
        "/imagine", "price model:local-sketch count:2 aspect:16:9 a lighthouse"
    )

    assert acknowledgement["text"] == messages.estimate_summary(
        "Local Sketch · 2 images · 1K · 16:9\nPrice: 2 credits · your balance: 50 credits"
    )
    assert "blocks" not in acknowledgement
    assert await service.ledger.history(ALICE, include_unconfirmed=True) == []


async def test_a_parse_error_is_specific_and_nothing_is_quoted(
    driver: SlackDriver, service: ImagineService
) -> None:
    _, acknowledgement, _ = await driver.command("/imagine", "model:scripted resolution:4K a fox")

    assert acknowledgement["text"] == messages.unsupported_resolution("4K", "scripted", ["1K"])
    assert "blocks" not in acknowledgement
    assert await service.ledger.history(ALICE, include_unconfirmed=True) == []


async def test_insufficient_credits_offer_no_button_and_say_the_shortfall(
    driver: SlackDriver, service: ImagineService
) -> None:
    _, acknowledgement, _ = await driver.command("/imagine", "model:scripted count:2 a fox")
    await service.credits.revoke(f"slack:{TEAM}:{ADMIN}", ALICE, 40)

    _, refused, _ = await driver.command("/imagine", "model:scripted count:2 a fox")

    assert buttons(acknowledgement)
    assert refused["text"] == messages.insufficient_credits(20, 10)
    assert buttons(refused) == {}


async def test_another_users_click_is_refused_and_changes_nothing(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    generation = await quote_id(driver, "a lighthouse")

    _, response_url = await driver.click(GENERATE_ACTION, generation, user=BOB)
    await slack.wait_for(lambda: slack.responded(response_url))

    [answer] = slack.responded(response_url)
    assert answer["text"] == messages.NOT_YOUR_REQUEST
    assert answer["replace_original"] is False
    assert slack.uploads == []
    assert await available(service) == 50


async def test_a_generate_the_balance_no_longer_covers_says_the_shortfall_and_keeps_the_quote(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    generation = await quote_id(driver, "model:scripted a fox")
    await service.credits.revoke(f"slack:{TEAM}:{ADMIN}", ALICE, 45)

    _, response_url = await driver.click(GENERATE_ACTION, generation)
    await slack.wait_for(lambda: slack.responded(response_url))

    [answer] = slack.responded(response_url)
    assert answer["text"] == messages.insufficient_credits(10, 5)
    assert answer["replace_original"] is False
    assert await available(service) == 5


async def test_a_generate_while_the_bot_stops_says_to_try_again_and_charges_nothing(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    generation = await quote_id(driver, "model:scripted a fox")
    service.stop_accepting()

    _, response_url = await driver.click(GENERATE_ACTION, generation)
    await slack.wait_for(lambda: slack.responded(response_url))

    [answer] = slack.responded(response_url)
    assert answer["text"] == messages.SHUTTING_DOWN
    assert await available(service) == 50


async def test_a_generate_whose_starting_message_cannot_be_shown_still_generates_and_settles(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    generation = await quote_id(driver, "a lighthouse")

    # Nothing listens on port 1: every message to this response_url fails to connect.
    await driver.click(GENERATE_ACTION, generation, response_url="http://127.0.0.1:1/respond/x")
    await slack.wait_for(lambda: slack.uploads)

    await service.drain(grace_seconds=10)
    balance = await service.credits.balance(ALICE)
    assert (balance.available, balance.held) == (49, 0)


async def test_a_model_that_cannot_be_used_now_offers_the_alternative_s_button(
    driver: SlackDriver, service: ImagineService
) -> None:
    for _ in range(service.circuits.failures):
        service.circuits.record("scripted", Health.DOWN, "unavailable")

    _, acknowledgement, _ = await driver.command("/imagine", "model:scripted a fox")
    generate = buttons(acknowledgement)[GENERATE_ACTION]
    _, response_url = await driver.click(GENERATE_ACTION, generate["value"])
    said = await final_text(driver, response_url, "Balance")

    assert acknowledgement["text"].startswith(
        "Scripted is unavailable right now: its provider failed its last 5 requests"
        " · Try Local Sketch · 1 credit\n"
    )
    assert generate["text"]["text"] == "Try Local Sketch · 1 credit"
    assert said == "Done: 1 image for 1 credit.\nBalance: 49 credits available."


async def test_cancel_charges_nothing(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    generation = await quote_id(driver, "a lighthouse")

    _, response_url = await driver.click(CANCEL_ACTION, generation)
    said = await final_text(driver, response_url, messages.CANCELLED)

    assert said == messages.CANCELLED
    [record] = await service.ledger.history(ALICE, include_unconfirmed=True)
    assert record.status == GenerationStatus.CANCELLED
    assert await available(service) == 50


async def test_a_click_after_expiry_charges_nothing_and_says_so(
    driver: SlackDriver, service: ImagineService, clock: FakeClock
) -> None:
    generation = await quote_id(driver, "a lighthouse")
    clock.advance(seconds=service.quote_ttl.total_seconds() + 1)

    _, response_url = await driver.click(GENERATE_ACTION, generation)
    said = await final_text(driver, response_url, "expired")

    assert said == messages.QUOTE_EXPIRED
    assert await available(service) == 50


@pytest.mark.both_databases
async def test_a_double_click_generates_and_charges_once(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    generation = await quote_id(driver, "count:2 a lighthouse")

    _, first = await driver.click(GENERATE_ACTION, generation)
    _, second = await driver.click(GENERATE_ACTION, generation)
    await final_text(driver, first, "Balance")
    await slack.wait_for(lambda: slack.responded(second))

    assert slack.responded(second)[0]["text"].startswith("This request was already")
    assert len(slack.uploads) == 1
    assert await available(service) == 48


@pytest.mark.both_databases
async def test_a_redelivered_click_does_nothing(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    generation = await quote_id(driver, "a lighthouse")

    status, response_url = await driver.click(
        GENERATE_ACTION, generation, headers={"X-Slack-Retry-Num": "1"}
    )

    assert status == 200
    assert slack.responded(response_url) == []
    [record] = await service.ledger.history(ALICE, include_unconfirmed=True)
    assert record.status == GenerationStatus.QUOTED


async def test_a_bad_signature_is_refused_and_does_nothing(
    driver: SlackDriver, service: ImagineService
) -> None:
    driver.secret = "not-the-secret"

    status, _, _ = await driver.command("/imagine", "a lighthouse")

    assert status == 401
    assert await service.ledger.history(ALICE, include_unconfirmed=True) == []


async def test_a_stale_timestamp_is_refused_and_does_nothing(
    driver: SlackDriver, service: ImagineService
) -> None:
    status, _, _ = await driver.command(
        "/imagine", "a lighthouse", timestamp=int(time.time()) - 10 * 60
    )

    assert status == 401
    assert await service.ledger.history(ALICE, include_unconfirmed=True) == []


async def test_a_provider_failure_charges_nothing_and_says_so(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.script = Script(images=0, error=ProviderUnavailable("overloaded"))
    generation = await quote_id(driver, "model:scripted a fox")

    _, response_url = await driver.click(GENERATE_ACTION, generation)
    said = await final_text(driver, response_url, "Balance")

    assert said.startswith(messages.failure("unavailable", "overloaded"))
    assert slack.uploads == []
    assert await available(service) == 50


async def test_a_public_channel_it_is_not_in_is_joined_before_the_upload(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    slack.member_of.clear()
    _, acknowledgement, _ = await driver.command("/imagine", "a lighthouse", channel="C0OTHER")
    generation = buttons(acknowledgement)[GENERATE_ACTION]["value"]

    _, response_url = await driver.click(GENERATE_ACTION, generation, channel="C0OTHER")
    said = await final_text(driver, response_url, "Balance")

    assert said.startswith("Done: 1 image for 1 credit.")
    assert [call["channel"] for call in slack.called("conversations.join")] == ["C0OTHER"]
    assert [upload.channel for upload in slack.uploads] == ["C0OTHER"]
    assert await available(service) == 49


async def test_a_private_channel_it_is_not_in_explains_the_invite_and_charges_nothing(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    _, acknowledgement, _ = await driver.command(
        "/imagine", "a lighthouse", channel=PRIVATE_CHANNEL
    )
    generation = buttons(acknowledgement)[GENERATE_ACTION]["value"]

    _, response_url = await driver.click(GENERATE_ACTION, generation, channel=PRIVATE_CHANNEL)
    said = await final_text(driver, response_url, "Balance")

    assert "/invite @Imagine" in said
    assert "no credits were charged" in said
    assert slack.uploads == []
    assert await available(service) == 50


# -- where the bot serves -----------------------------------------------------------

ELSEWHERE = "T0ELSEWHERE"


@pytest.fixture
async def listed_driver(
    service: ImagineService, settings: Settings, slack: LoopbackSlack
) -> AsyncIterator[SlackDriver]:
    """The bot serving only TEAM."""
    listed = settings.model_copy(update={"slack_team_allowlist": (TEAM,)})
    async with serving(SlackImagine(service, listed), slack) as driver:
        yield driver


async def test_only_a_listed_workspace_is_served_elsewhere_no_account_is_opened(
    listed_driver: SlackDriver, service: ImagineService
) -> None:
    for command, text in (("/imagine", "a lighthouse"), ("/credits", ""), ("/imagine", "")):
        status, acknowledgement, _ = await listed_driver.command(command, text, team=ELSEWHERE)

        assert status == 200
        assert acknowledgement == {"response_type": "ephemeral", "text": messages.NOT_SERVED_HERE}
    assert await service.ledger.account_exists(f"slack:{ELSEWHERE}:U0ALICE") is False

    generation = await quote_id(listed_driver, "a lighthouse")

    assert generation
    assert await available(service) == 50


@pytest.mark.parametrize("action", [GENERATE_ACTION, CANCEL_ACTION])
async def test_a_button_pressed_where_the_bot_does_not_serve_is_refused_and_changes_nothing(
    listed_driver: SlackDriver, slack: LoopbackSlack, service: ImagineService, action: str
) -> None:
    generation = await quote_id(listed_driver, "a lighthouse")

    _, response_url = await listed_driver.click(action, generation, team=ELSEWHERE)
    await slack.wait_for(lambda: slack.responded(response_url))

    [answer] = slack.responded(response_url)
    assert (answer["text"], answer["replace_original"]) == (messages.NOT_SERVED_HERE, False)
    assert (await service.ledger.generation(generation)).status == GenerationStatus.QUOTED
    assert await available(service) == 50


# -- /credits ---------------------------------------------------------------------


async def test_credits_shows_the_balance_and_history(driver: SlackDriver) -> None:
    _, acknowledgement, _ = await driver.command("/credits", "")

    assert acknowledgement["text"] == f"{messages.balance_line(50, 0)}\n{messages.NO_HISTORY}"
    assert acknowledgement["response_type"] == "ephemeral"


async def test_a_non_admin_cannot_grant(driver: SlackDriver, service: ImagineService) -> None:
    _, acknowledgement, _ = await driver.command("/credits", f"grant <@{BOB}|bob> 100 please")

    assert acknowledgement["text"] == messages.NOT_ADMIN
    assert await service.ledger.account_exists(f"slack:{TEAM}:{BOB}") is False


async def test_an_admin_grant_is_recorded_with_actor_and_reason(
    driver: SlackDriver, service: ImagineService
) -> None:
    _, acknowledgement, _ = await driver.command(
        "/credits", f"grant <@{BOB}|bob> 100 contest prize", user=ADMIN
    )

    assert acknowledgement["text"] == messages.granted(f"<@{BOB}>", 100, 150)
    [entry, *_] = await service.ledger.entries(f"slack:{TEAM}:{BOB}")
    assert (entry.actor, entry.reason) == (f"slack:{TEAM}:{ADMIN}", "contest prize")


async def test_an_admin_grant_with_an_expiry_says_when_the_credits_expire(
    driver: SlackDriver, service: ImagineService
) -> None:
    _, acknowledgement, _ = await driver.command(
        "/credits", f"grant <@{BOB}|bob> 100 contest expires:2027-01-01 prize", user=ADMIN
    )

    new_year = datetime(2027, 1, 1, tzinfo=UTC)
    assert acknowledgement["text"] == messages.granted(f"<@{BOB}>", 100, 150, new_year)
    balance = await service.credits.balance(f"slack:{TEAM}:{BOB}")
    assert [lot.expires_at for lot in balance.lots if lot.expires_at] == [new_year]
    [entry, *_] = await service.ledger.entries(f"slack:{TEAM}:{BOB}")
    assert entry.reason == "contest prize"


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        (f"grant <@{BOB}> 100 expires:someday", messages.bad_expiry("someday")),
        (f"revoke <@{BOB}> 10 expires:7d", messages.EXPIRY_ON_REVOKE),
    ],
)
async def test_a_bad_expiry_is_one_sentence_and_leaves_the_balance_unchanged(
    driver: SlackDriver, service: ImagineService, typed: str, expected: str
) -> None:
    await service.credits.open_account(f"slack:{TEAM}:{BOB}")

    _, acknowledgement, _ = await driver.command("/credits", typed, user=ADMIN)

    assert acknowledgement["text"] == expected
    assert await available(service, f"slack:{TEAM}:{BOB}") == 50


async def test_a_grant_reason_is_recorded_as_the_admin_typed_it(
    driver: SlackDriver, service: ImagineService
) -> None:
    await driver.command(
        "/credits", f"grant <@{BOB}|bob> 100 art &amp; design, thanks <@{ADMIN}|ada>", user=ADMIN
    )

    [entry, *_] = await service.ledger.entries(f"slack:{TEAM}:{BOB}")
    assert entry.reason == "art & design, thanks @ada"


async def test_an_admin_revoke_takes_credits_back(
    driver: SlackDriver, service: ImagineService
) -> None:
    await service.credits.open_account(f"slack:{TEAM}:{BOB}")

    _, acknowledgement, _ = await driver.command("/credits", f"revoke <@{BOB}> 20", user=ADMIN)

    assert acknowledgement["text"] == messages.revoked(f"<@{BOB}>", 20, 30)


@pytest.mark.both_databases
async def test_the_same_grant_command_delivered_twice_grants_once(
    driver: SlackDriver, service: ImagineService
) -> None:
    for _ in range(2):
        _, acknowledgement, _ = await driver.command(
            "/credits", f"grant <@{BOB}|bob> 100", user=ADMIN, trigger_id="trigger-once"
        )
        assert acknowledgement["text"] == messages.granted(f"<@{BOB}>", 100, 150)

    assert await available(service, f"slack:{TEAM}:{BOB}") == 150


async def test_a_credits_command_slower_than_slacks_deadline_is_acknowledged_then_sent(
    driver: SlackDriver,
    slack: LoopbackSlack,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_down(service.credits, "statement", monkeypatch)

    status, acknowledgement, response_url = await driver.command("/credits", "")
    await slack.wait_for(lambda: slack.responded(response_url))

    assert status == 200
    assert acknowledgement["text"] == messages.SLACK_PREPARING
    [answer] = slack.responded(response_url)
    assert answer["text"] == f"{messages.balance_line(50, 0)}\n{messages.NO_HISTORY}"


async def test_an_unknown_credits_word_says_what_credits_takes(driver: SlackDriver) -> None:
    _, acknowledgement, _ = await driver.command("/credits", "give <@U0BOB|bob> 5")

    assert acknowledgement["text"] == messages.slack_credits_usage("give")


async def test_a_grant_without_a_mention_says_how_to_grant(driver: SlackDriver) -> None:
    _, acknowledgement, _ = await driver.command("/credits", "grant bob 100", user=ADMIN)

    assert acknowledgement["text"] == messages.slack_admin_usage("grant")


# -- /credits price ------------------------------------------------------------------

BOB_ACCOUNT = f"slack:{TEAM}:{BOB}"


async def test_an_admin_s_price_for_a_model_is_the_next_quote_s_price(
    driver: SlackDriver, service: ImagineService
) -> None:
    _, acknowledgement, _ = await driver.command(
        "/credits", f"price set <@{BOB}|bob> scripted 8 loyal &amp; kind", user=ADMIN
    )

    assert acknowledgement["text"] == messages.model_price_set(f"<@{BOB}>", "scripted", 8, None)
    assert acknowledgement["response_type"] == "ephemeral"
    [override] = await service.ledger.price_overrides(BOB_ACCOUNT)
    assert (override.actor, override.reason) == (f"slack:{TEAM}:{ADMIN}", "loyal & kind")
    _, quoted, _ = await driver.command("/imagine", "model:scripted a fox", user=BOB)
    assert "Your price 8 per image, list 10." in quoted["text"]


async def test_an_admin_s_percent_off_is_the_next_quote_s_price(driver: SlackDriver) -> None:
    _, acknowledgement, _ = await driver.command(
        "/credits", f"price set <@{BOB}|bob> 25% until:2099-01-01 beta tester", user=ADMIN
    )

    until = datetime(2099, 1, 1, tzinfo=UTC)
    assert acknowledgement["text"] == messages.percent_off_set(f"<@{BOB}>", 25, until)
    _, quoted, _ = await driver.command("/imagine", "model:scripted a fox", user=BOB)
    assert (
        "Your price 7.5 per image, list 10 (25% off, until 2099-01-01 00:00 UTC)."
        in (quoted["text"])
    )


async def test_an_admin_lists_and_clears_someone_s_prices(
    driver: SlackDriver, service: ImagineService
) -> None:
    await driver.command("/credits", f"price set <@{BOB}> scripted 8 loyal", user=ADMIN)

    _, listed, _ = await driver.command("/credits", f"price list <@{BOB}|bob>", user=ADMIN)
    assert listed["text"].startswith(f"<@{BOB}>  scripted: 8 credits per image  set by")
    _, cleared, _ = await driver.command("/credits", f"price clear <@{BOB}> scripted", user=ADMIN)
    assert cleared["text"] == messages.price_overrides_cleared(f"<@{BOB}>", "scripted", 1)
    assert await service.ledger.price_overrides(None) == []


async def test_everyone_s_prices_name_this_workspace_s_people_by_mention_and_others_by_id(
    driver: SlackDriver, service: ImagineService
) -> None:
    await driver.command("/credits", f"price set <@{BOB}> scripted 8 loyal", user=ADMIN)
    await service.ledger.set_price_override(
        "discord:42", model_id=None, percent_off=10, until=None, actor="cli:root", reason="beta"
    )

    _, listed, _ = await driver.command("/credits", "price list", user=ADMIN)

    lines = sorted(listed["text"].splitlines())
    assert lines[0].startswith(f"<@{BOB}>  scripted: 8 credits per image  set by <@{ADMIN}> on ")
    assert lines[1].startswith("discord:42  every model: 10% off  set by cli:root on ")


async def test_no_prices_of_someone_s_own_names_them_by_mention(driver: SlackDriver) -> None:
    _, listed, _ = await driver.command("/credits", f"price list <@{BOB}>", user=ADMIN)

    assert listed["text"] == messages.no_price_overrides(f"<@{BOB}>")


async def test_a_price_set_by_a_non_admin_is_refused_and_changes_nothing(
    driver: SlackDriver, service: ImagineService
) -> None:
    _, acknowledgement, _ = await driver.command("/credits", "price set <@U0ALICE> 100% mine")

    assert acknowledgement["text"] == messages.NOT_ADMIN
    assert await service.ledger.price_overrides(None) == []


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        (f"set <@{BOB}> 150% nice", messages.bad_percent("150%")),
        (f"set <@{BOB}> scripted-v9 8 nice", messages.unknown_model("scripted-v9", ["scripted"])),
        (
            f"set <@{BOB}> 10% until:2001-01-01 nice",
            messages.date_in_the_past(datetime(2001, 1, 1, tzinfo=UTC)),
        ),
        (f"set {BOB_ACCOUNT} 10% nice", messages.SLACK_PRICE_USAGE),
        ("raise everything", messages.SLACK_PRICE_USAGE),
    ],
)
async def test_a_bad_price_command_is_one_sentence_and_changes_nothing(
    driver: SlackDriver, service: ImagineService, typed: str, expected: str
) -> None:
    _, acknowledgement, _ = await driver.command("/credits", f"price {typed}", user=ADMIN)

    assert acknowledgement["text"] == expected
    assert await service.ledger.price_overrides(None) == []


async def test_help_shows_the_price_and_stats_commands_only_to_admins(driver: SlackDriver) -> None:
    _, for_alice, _ = await driver.command("/imagine", "help")
    _, for_admin, _ = await driver.command("/imagine", "help", user=ADMIN)

    assert "/credits price" not in for_alice["text"]
    assert "/stats" not in for_alice["text"]
    assert "*/credits price set @someone" in for_admin["text"]
    assert "*/stats [model:<id>]*" in for_admin["text"]


def test_http_mode_without_a_signing_secret_says_what_to_set(
    settings: Settings, service: ImagineService
) -> None:
    with pytest.raises(ValueError, match="SLACK_SIGNING_SECRET"):
        SlackImagine(service, settings.model_copy(update={"slack_signing_secret": None}))


async def test_socket_mode_answers_a_slash_command_over_the_connection(
    settings: Settings, service: ImagineService, slack: LoopbackSlack
) -> None:
    socket_settings = settings.model_copy(
        update={"slack_app_token": APP_TOKEN, "slack_signing_secret": None}
    )
    serving = asyncio.create_task(serve_slack(service, socket_settings))
    try:
        envelope = await slack.send_envelope(
            "slash_commands",
            {
                "team_id": TEAM,
                "channel_id": "C0GENERAL",
                "user_id": "U0ALICE",
                "command": "/imagine",
                "text": "count:2 a lighthouse",
                "api_app_id": "A0APP",
                "response_url": slack.response_url(),
                "trigger_id": "trigger-1",
            },
        )
        await slack.wait_for(lambda: slack.socket_reply(envelope))
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    reply = slack.socket_reply(envelope)
    assert reply is not None
    assert reply["payload"]["text"].startswith("Local Sketch · 2 images · 1K · 1:1")
    assert GENERATE_ACTION in buttons(reply["payload"])


@pytest.mark.both_databases
async def test_a_command_the_database_fails_is_answered_with_a_sentence(
    driver: SlackDriver, service: ImagineService, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_first(service.ledger, "open_quote", monkeypatch)

    status, acknowledgement, _ = await driver.command("/imagine", "a lighthouse")

    assert status == 200
    assert acknowledgement == {
        "response_type": "ephemeral",
        "text": messages.SOMETHING_WENT_WRONG,
    }
    assert await service.ledger.history(ALICE, include_unconfirmed=True) == []


async def test_a_slow_command_the_database_then_fails_replaces_its_placeholder(
    driver: SlackDriver,
    slack: LoopbackSlack,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fail_first(service.ledger, "open_quote", monkeypatch)
    slow_down(service, "quote", monkeypatch)

    _, acknowledgement, response_url = await driver.command("/imagine", "a lighthouse")
    await slack.wait_for(lambda: slack.responded(response_url))

    assert acknowledgement["text"] == messages.SLACK_PREPARING
    [answer] = slack.responded(response_url)
    assert (answer["text"], answer["replace_original"]) == (messages.SOMETHING_WENT_WRONG, True)


@pytest.mark.both_databases
async def test_a_click_the_database_fails_is_told_to_the_clicker_and_charges_nothing(
    driver: SlackDriver,
    slack: LoopbackSlack,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generation = await quote_id(driver, "a lighthouse")
    fail_first(service.ledger, "hold", monkeypatch)

    _, response_url = await driver.click(GENERATE_ACTION, generation)
    await slack.wait_for(lambda: slack.responded(response_url))

    [answer] = slack.responded(response_url)
    assert (answer["text"], answer["replace_original"]) == (messages.SOMETHING_WENT_WRONG, False)
    assert answer["response_type"] == "ephemeral"
    assert (await service.ledger.generation(generation)).status == GenerationStatus.QUOTED
    assert await available(service) == 50


async def test_a_quote_slower_than_slacks_deadline_is_acknowledged_then_sent(
    driver: SlackDriver,
    slack: LoopbackSlack,
    service: ImagineService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_down(service, "quote", monkeypatch)

    status, acknowledgement, response_url = await driver.command("/imagine", "a lighthouse")
    await slack.wait_for(lambda: slack.responded(response_url))

    assert status == 200
    assert acknowledgement["text"] == messages.SLACK_PREPARING
    [quote] = slack.responded(response_url)
    assert quote["text"].startswith("Local Sketch · 1 image")
    assert GENERATE_ACTION in buttons(quote)


async def test_slack_entities_are_unescaped_for_the_model_and_escaped_in_the_caption(
    driver: SlackDriver, slack: LoopbackSlack, scripted: ScriptedProvider
) -> None:
    generation = await quote_id(driver, "model:scripted fish &amp; chips &lt;!channel&gt;")

    _, response_url = await driver.click(GENERATE_ACTION, generation)
    await final_text(driver, response_url, "Balance")

    assert scripted.requests[0].prompt == "fish & chips <!channel>"
    [upload] = slack.uploads
    assert "fish &amp; chips &lt;!channel&gt;" in upload.initial_comment
    assert "<!channel>" not in upload.initial_comment


async def test_mentions_channels_and_links_reach_the_model_as_the_user_saw_them(
    driver: SlackDriver, slack: LoopbackSlack, scripted: ScriptedProvider
) -> None:
    # What Slack sends, with "Escape channels, users, and links" on, for:
    # "@bob and @devs at #general, @here: x.com, https://example.com/a, this, mail a@b.co on <date>"
    generation = await quote_id(
        driver,
        "model:scripted <@U0BOB|bob> and <!subteam^S0DEVS|@devs> at <#C0GENERAL|general>,"
        " <!here>: <http://x.com|x.com>, <https://example.com/a>,"
        " <https://example.com/b|this>, mail <mailto:a@b.co|a@b.co>"
        " on <!date^1700000000^{date}|Nov 14>",
    )

    _, response_url = await driver.click(GENERATE_ACTION, generation)
    await final_text(driver, response_url, "Balance")

    assert scripted.requests[0].prompt == (
        "@bob and @devs at #general, @here: x.com, https://example.com/a,"
        " this (https://example.com/b), mail a@b.co on Nov 14"
    )


async def test_a_prompt_in_the_public_caption_cannot_ping_link_or_format(
    driver: SlackDriver, slack: LoopbackSlack, scripted: ScriptedProvider
) -> None:
    typed = (
        "@here <!channel> *loud* _slanted_ ~gone~ `code` #general :fire: see https://evil.example"
    )
    escaped = typed.replace("<", "&lt;").replace(">", "&gt;")
    generation = await quote_id(
        driver, f"model:scripted <@U0BOB|bob> {escaped}\n&gt; quoted <https://evil.example|click>"
    )

    _, response_url = await driver.click(GENERATE_ACTION, generation)
    await final_text(driver, response_url, "Balance")

    prompt = scripted.requests[0].prompt
    [upload] = slack.uploads
    caption = upload.initial_comment
    # Slack reads control sequences only between < and >; none is left but the asker's mention.
    assert caption.count("<") == 1 and caption.startswith("<@U0ALICE> asked for")
    for made in ("@here", "@bob", "*loud*", "_slanted_", "~gone~", "`code`", "#general", ":fire:"):
        assert made in prompt and made not in caption
    assert "://" not in caption and "evil.example" not in caption
    assert "\n" not in caption
    # Read back as Slack shows it, the caption holds the prompt to the letter, on one line.
    shown = html.unescape(caption).replace("\u200b", "")
    assert f"“{' '.join(prompt.split())}”" in shown


async def test_a_generation_cut_short_by_stopping_the_bot_tells_the_user_so(
    service: ImagineService, settings: Settings, slack: LoopbackSlack, scripted: ScriptedProvider
) -> None:
    scripted.script = Script(hang=True)
    bot = SlackImagine(service, settings)
    async with serving(bot, slack) as driver:
        generation = await quote_id(driver, "model:scripted a fox")
        _, response_url = await driver.click(GENERATE_ACTION, generation)
        async with asyncio.timeout(10):
            await scripted.started.wait()

        await bot.aclose()  # what serve_slack does once the shutdown's grace period is over

        said = [message["text"] for message in slack.responded(response_url)]
        assert said[-1].startswith(messages.failure("interrupted"))
        balance = await service.credits.balance(f"slack:{TEAM}:U0ALICE")
        assert (balance.available, balance.held) == (50, 0)


async def test_on_an_enterprise_organization_the_owner_can_click_their_own_quote(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    generation = await quote_id(driver, "a lighthouse")

    await driver.click(GENERATE_ACTION, generation, user_team="E0ORG")

    await slack.wait_for(lambda: slack.uploads)
    await service.drain(10)
    assert await available(service) == 49


async def test_credits_statement_shows_your_last_entries_as_text(driver: SlackDriver) -> None:
    _, acknowledgement, _ = await driver.command("/credits", "statement")

    lines = acknowledgement["text"].strip("`").splitlines()
    assert lines[0].split()[:3] == ["time", "kind", "lot"]
    assert lines[1].split()[1:3] == ["grant", "1"]
    assert lines[1].split()[-2:] == ["50", "0"]
    assert acknowledgement["response_type"] == "ephemeral"


# -- /stats ---------------------------------------------------------------------------


async def stats_answer(driver: SlackDriver, slack: LoopbackSlack, text: str) -> dict[str, Any]:
    """An admin's /stats answer once complete: the acknowledgement, or after "Working on it…"
    (drawing the chart took past the deadline), what replaced it."""
    _, acknowledgement, response_url = await driver.command("/stats", text, user=ADMIN)
    if acknowledgement["text"] != messages.SLACK_PREPARING:
        return acknowledgement
    await slack.wait_for(lambda: slack.responded(response_url))
    return slack.responded(response_url)[-1]


async def test_stats_answers_an_admin_privately_and_sends_the_chart_to_their_direct_messages(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generate(service, ALICE, "model:local-sketch count:2 a fox", Script())

    answer = await stats_answer(driver, slack, "model:local-sketch")

    assert answer["response_type"] == "ephemeral"
    figures, sent = answer["text"].rsplit("\n", 1)
    assert sent == messages.SLACK_STATS_CHART_SENT
    assert slack.called("conversations.open")[0]["users"] == ADMIN
    [upload] = slack.uploads
    assert (upload.channel, upload.initial_comment) == (f"D{ADMIN}", figures)
    [(filename, png)] = upload.files
    assert filename == "stats-2026-11-24-local-sketch.png"
    with Image.open(io.BytesIO(png)) as chart:
        assert chart.format == "PNG"


async def test_stats_say_why_a_chart_slack_refused_was_not_sent(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generate(service, ALICE, "model:local-sketch a fox", Script())
    slack.fail_conversations_open = True

    answer = await stats_answer(driver, slack, "")

    why = messages.upload_refused("Slack", "missing_scope")
    assert answer["text"].endswith("\n" + messages.stats_chart_not_sent(why))
    assert slack.uploads == []


async def test_stats_are_refused_to_someone_not_an_admin(
    driver: SlackDriver, slack: LoopbackSlack
) -> None:
    _, acknowledgement, _ = await driver.command("/stats", "")

    assert acknowledgement["text"] == messages.STATS_NOT_ADMIN
    assert slack.called("conversations.open") == []


async def test_buy_answers_each_pack_with_a_checkout_link_for_the_member_alone_and_tells_them_when_paid(
    database_url: str, tmp_path: Path, slack: LoopbackSlack, clock: FakeClock
) -> None:
    (tmp_path / "models.toml").write_text(MODELS)
    (tmp_path / "pricing.toml").write_text('[packs.starter]\ncredits = 500\nprice = "4.99"\n')
    async with LoopbackStripe() as stripe_fake:
        settings = Settings(
            _env_file=None,
            database_url=database_url,
            models_file=tmp_path / "models.toml",
            pricing_file=tmp_path / "pricing.toml",
            slack_bot_token=BOT_TOKEN,
            slack_signing_secret=SIGNING_SECRET,
            slack_api_base_url=slack.base_url,
            stripe_api_key=STRIPE_KEY,
            stripe_webhook_secret=STRIPE_SECRET,
            stripe_api_base=stripe_fake.api_base,
            public_url="https://bot.example.com",
        )
        # The real clock: Stripe checks a session's expiry against its own.
        async with (
            open_service(settings) as service,
            serving(SlackImagine(service, settings), slack) as driver,
        ):
            status, answer, _ = await driver.command("/buy", "")
            [session] = stripe_fake.sessions.values()
            link = session["url"]
            paid = LoopbackStripe.payload(stripe_fake.complete(session["id"]))
            await service.purchases.stripe_webhook(paid, stripe_fake.sign(paid, STRIPE_SECRET))

    assert (status, answer["response_type"]) == (200, "ephemeral")
    assert link in answer["text"]
    assert session["client_reference_id"] == ALICE
    [told] = slack.called("chat.postEphemeral")
    assert (told["channel"], told["user"]) == (CHANNEL, "U0ALICE")
    assert told["text"] == messages.purchase_paid("starter", 500, 500, 0)


# -- /compare -------------------------------------------------------------------


async def test_compare_shows_each_price_and_posts_the_grid_then_the_originals(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    status, acknowledgement, _ = await driver.command(
        "/compare", "models:local-sketch,scripted a lighthouse"
    )
    assert status == 200
    assert "  Scripted: 10 credits" in acknowledgement["text"]
    assert "Total: 11 credits" in acknowledgement["text"]
    button = buttons(acknowledgement)[COMPARE_ACTION]
    assert button["text"]["text"] == "Compare 2 models · 11 credits"

    _, response_url = await driver.click(COMPARE_ACTION, button["value"])
    said = await final_text(driver, response_url, "Balance")

    assert "Compare done: 11 credits in all." in said
    grid, *originals = slack.uploads
    assert "· Compare · 11 credits" in grid.initial_comment
    [(_, data)] = grid.files
    with Image.open(io.BytesIO(data)) as image:
        assert image.size[0] == 2 * GRID_CELL
    assert len(originals) == 2
    assert await available(service) == 39
    assert await service.ledger.verify() == []


# -- subjects ----------------------------------------------------------------


async def test_subject_save_on_slack_says_where_subjects_are_saved(driver: SlackDriver) -> None:
    _, acknowledgement, _ = await driver.command("/subject", "save ada")

    assert acknowledgement["text"] == messages.SLACK_SUBJECT_SAVE


async def test_subject_list_and_delete_on_slack_act_on_your_own_subjects(
    driver: SlackDriver, service: ImagineService
) -> None:
    await service.subjects.save(ALICE, "ada", [ReferenceImage(tiny_png(), "image/png")])

    _, listed, _ = await driver.command("/subject", "list")
    _, deleted, _ = await driver.command("/subject", "delete Ada")

    assert listed["text"].startswith("Your subjects:\n• ada: 1 image, ")
    assert deleted["text"] == messages.subject_deleted("ada")
    assert await service.ledger.list_subjects(ALICE) == []


async def test_imagine_with_a_subject_quotes_its_images_on_slack(
    driver: SlackDriver, service: ImagineService
) -> None:
    await service.subjects.save(ALICE, "ada", [ReferenceImage(tiny_png(), "image/png")])

    await quote_id(driver, "model:scripted subject:ada Ada at sea")

    [quote] = await service.ledger.history(ALICE, limit=1, include_unconfirmed=True)
    assert quote.reference_count == 1


# -- /history, Again and /settings auto_confirm_under ---------------------------------


async def generated(driver: SlackDriver, text: str, user: str = "U0ALICE") -> None:
    """``/imagine text`` quoted, Generate pressed, and its outcome told."""
    generation = await quote_id(driver, text, user=user)
    _, response_url = await driver.click(GENERATE_ACTION, generation, user=user)
    await final_text(driver, response_url, "Balance")


async def test_history_links_to_the_uploaded_images_with_an_again_button(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "a lighthouse")
    [completed] = slack.called("files.completeUploadExternal")
    first_file = json.loads(completed["files"])[0]["id"]
    [generation] = await service.credits.history_entries(ALICE)

    _, listed, _ = await driver.command("/history", "")

    assert f"<{permalink(first_file)}|view>" in listed["text"]
    assert "“a lighthouse”" in listed["text"]
    again = buttons(listed)[f"{AGAIN_ACTION}_1"]
    assert (again["text"]["text"], again["value"]) == ("Again 1", generation.id)


async def test_again_by_another_user_quotes_and_charges_that_user(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "count:2 a lighthouse")
    [past] = await service.credits.history_entries(ALICE)

    _, again_url = await driver.click(f"{AGAIN_ACTION}_1", past.id, user=BOB)
    await slack.wait_for(lambda: slack.responded(again_url))
    [quote] = slack.responded(again_url)
    _, response_url = await driver.click(
        GENERATE_ACTION, buttons(quote)[GENERATE_ACTION]["value"], user=BOB
    )
    await final_text(driver, response_url, "Balance")

    assert quote["replace_original"] is False
    assert await available(service, f"slack:{TEAM}:{BOB}") == 48
    assert await available(service) == 48
    assert len(slack.uploads) == 2


async def test_a_request_under_the_auto_confirm_limit_generates_without_a_button(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await driver.command("/settings", "auto_confirm_under:5")

    _, acknowledgement, response_url = await driver.command("/imagine", "count:2 a lighthouse")
    said = await final_text(driver, response_url, "Balance")

    assert acknowledgement == {"response_type": "ephemeral", "text": messages.SLACK_STARTING}
    assert said == (
        "Done: 2 images for 2 credits (auto-confirmed under 5).\nBalance: 48 credits available."
    )
    assert len(slack.uploads) == 1
    assert await available(service) == 48


async def test_a_request_over_the_auto_confirm_limit_shows_the_button(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await driver.command("/settings", "auto_confirm_under:1")

    _, acknowledgement, _ = await driver.command("/imagine", "count:2 a lighthouse")

    assert GENERATE_ACTION in buttons(acknowledgement)
    assert slack.uploads == []
    assert await available(service) == 50


async def test_a_bad_auto_confirm_value_is_one_sentence_and_changes_nothing(
    driver: SlackDriver, service: ImagineService
) -> None:
    await driver.command("/settings", "auto_confirm_under:5")

    _, answer, _ = await driver.command("/settings", "auto_confirm_under:lots")

    assert answer["text"] == messages.bad_auto_confirm("lots")
    assert await service.credits.auto_confirm_under(ALICE) == 5


async def test_history_shows_a_prompt_as_typed_not_as_slack_markup(driver: SlackDriver) -> None:
    # As Slack sends "a <b> & me" typed: its control characters as entities.
    await generated(driver, "a &lt;b&gt; &amp; me")

    _, listed, _ = await driver.command("/history", "")

    assert "“a &lt;b&gt; &amp; me”" in listed["text"]


async def test_an_again_under_the_auto_confirm_limit_generates_in_place_of_the_history(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "a lighthouse")
    [past] = await service.credits.history_entries(ALICE)
    await driver.command("/settings", "auto_confirm_under:5")

    _, again_url = await driver.click(f"{AGAIN_ACTION}_1", past.id)
    said = await final_text(driver, again_url, "Balance")

    assert slack.responded(again_url)[0] == {
        "text": messages.SLACK_STARTING,
        "response_type": "ephemeral",
        "replace_original": True,
    }
    assert said.startswith("Done: 1 image for 1 credit (auto-confirmed under 5).")
    assert len(slack.uploads) == 2


# -- the buttons under a posted result ------------------------------------------------


def result_buttons(slack: LoopbackSlack) -> tuple[str, dict[str, dict[str, Any]]]:
    """The ts of the one buttons message in the channel, and its buttons by action."""
    [(ts, posted)] = [
        (ts, message) for ts, message in slack.messages.items() if message.get("blocks")
    ]
    blocks = posted["blocks"]
    found = buttons({"blocks": json.loads(blocks) if isinstance(blocks, str) else blocks})
    return ts, {
        action.removeprefix(f"{RESULT_ACTION}_"): button for action, button in found.items()
    }


async def test_a_delivered_result_gets_again_edit_and_delete_buttons_carrying_the_generation(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "a lighthouse")
    [past] = await service.credits.history_entries(ALICE)

    _, found = result_buttons(slack)

    assert list(found) == ["again", "edit", "delete"]
    assert {button["value"].split()[0] for button in found.values()} == {past.id}


async def test_a_result_of_a_model_that_takes_references_also_gets_vary(
    driver: SlackDriver, slack: LoopbackSlack
) -> None:
    await generated(driver, "model:scripted a lighthouse")

    _, found = result_buttons(slack)

    assert list(found) == ["again", "vary", "edit", "delete"]


async def test_again_under_a_result_by_another_user_quotes_and_charges_that_user(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "count:2 a lighthouse")
    ts, found = result_buttons(slack)

    _, again_url = await driver.click(
        f"{RESULT_ACTION}_again", found["again"]["value"], user=BOB, message_ts=ts
    )
    await slack.wait_for(lambda: slack.responded(again_url))
    [quote] = slack.responded(again_url)
    _, response_url = await driver.click(
        GENERATE_ACTION, buttons(quote)[GENERATE_ACTION]["value"], user=BOB
    )
    await final_text(driver, response_url, "Balance")

    assert (quote["response_type"], quote["replace_original"]) == ("ephemeral", False)
    assert await available(service, f"slack:{TEAM}:{BOB}") == 48
    assert await available(service) == 48


async def test_vary_quotes_the_same_request_with_the_posted_image_as_reference(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "model:scripted a lighthouse")
    ts, found = result_buttons(slack)

    _, vary_url = await driver.click(
        f"{RESULT_ACTION}_vary", found["vary"]["value"], user=BOB, message_ts=ts
    )
    await slack.wait_for(lambda: slack.responded(vary_url))
    [quote] = slack.responded(vary_url)

    assert GENERATE_ACTION in buttons(quote)
    [varied] = await service.ledger.history(
        f"slack:{TEAM}:{BOB}", limit=1, include_unconfirmed=True
    )
    assert varied.reference_count == 1


async def test_a_vary_whose_image_cannot_be_fetched_says_so_and_quotes_nothing(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "model:scripted a lighthouse")
    ts, found = result_buttons(slack)
    slack.fail_files_info = True

    _, vary_url = await driver.click(
        f"{RESULT_ACTION}_vary", found["vary"]["value"], user=BOB, message_ts=ts
    )
    await slack.wait_for(lambda: slack.responded(vary_url))

    assert slack.responded(vary_url)[0]["text"] == messages.VARY_UNREADABLE
    assert await service.ledger.history(f"slack:{TEAM}:{BOB}", include_unconfirmed=True) == []


async def test_an_again_under_a_result_within_the_auto_confirm_limit_generates_at_once(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "a lighthouse")
    ts, found = result_buttons(slack)
    await driver.command("/settings", "auto_confirm_under:5")

    _, again_url = await driver.click(
        f"{RESULT_ACTION}_again", found["again"]["value"], message_ts=ts
    )
    await slack.wait_for(lambda: slack.called("chat.postEphemeral"))

    assert slack.responded(again_url)[0]["text"] == messages.SLACK_STARTING
    [outcome] = slack.called("chat.postEphemeral")
    assert outcome["text"].startswith("Done: 1 image for 1 credit (auto-confirmed under 5).")
    assert len(slack.uploads) == 2
    assert await available(service) == 48


async def test_edit_opens_a_form_with_the_prompt_and_its_submission_quotes_the_edit(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "a lighthouse")
    ts, found = result_buttons(slack)

    await driver.click(f"{RESULT_ACTION}_edit", found["edit"]["value"], user=BOB, message_ts=ts)
    await slack.wait_for(lambda: slack.called("views.open"))
    [opened] = slack.called("views.open")
    view = json.loads(opened["view"]) if isinstance(opened["view"], str) else opened["view"]
    [field] = view["blocks"]
    status = await driver.submit(
        view, {field["block_id"]: {field["element"]["action_id"]: "a red lighthouse"}}, user=BOB
    )
    await slack.wait_for(lambda: slack.called("chat.postEphemeral"))

    assert field["element"]["initial_value"] == "a lighthouse"
    assert status == 200
    [said] = slack.called("chat.postEphemeral")
    assert (said["channel"], said["user"]) == (CHANNEL, BOB)
    [edited] = await service.ledger.history(
        f"slack:{TEAM}:{BOB}", limit=1, include_unconfirmed=True
    )
    assert edited.prompt == "a red lighthouse"


async def test_delete_by_a_stranger_is_refused_and_changes_nothing(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "a lighthouse")
    ts, found = result_buttons(slack)
    [past] = await service.credits.history_entries(ALICE)

    _, delete_url = await driver.click(
        f"{RESULT_ACTION}_delete", found["delete"]["value"], user=BOB, message_ts=ts
    )
    await slack.wait_for(lambda: slack.responded(delete_url))

    assert slack.responded(delete_url)[0]["text"] == messages.DELETE_NOT_YOURS
    assert slack.called("chat.delete") == []
    assert await service.deleted(past.id) is None


async def test_delete_by_the_requester_removes_the_bot_s_messages_and_records_it(
    driver: SlackDriver, slack: LoopbackSlack, service: ImagineService
) -> None:
    await generated(driver, "a lighthouse")
    ts, found = result_buttons(slack)
    [past] = await service.credits.history_entries(ALICE)

    _, delete_url = await driver.click(
        f"{RESULT_ACTION}_delete", found["delete"]["value"], message_ts=ts
    )
    await slack.wait_for(lambda: slack.responded(delete_url))

    assert slack.responded(delete_url)[0]["text"] == messages.DELETED
    assert [call["ts"] for call in slack.called("chat.delete")] == [SHARE_TS, ts]
    assert ts not in slack.messages
    recorded = await service.deleted(past.id)
    assert recorded is not None and recorded[0] == ALICE
    assert await available(service) == 49


@pytest.mark.parametrize("action", ["again", "vary", "edit", "delete"])
async def test_each_result_button_works_after_a_restart(
    action: str,
    driver: SlackDriver,
    slack: LoopbackSlack,
    service: ImagineService,
    settings: Settings,
) -> None:
    await generated(driver, "model:scripted a lighthouse")
    ts, found = result_buttons(slack)

    async with serving(SlackImagine(service, settings), slack) as restarted:
        _, url = await restarted.click(
            f"{RESULT_ACTION}_{action}", found[action]["value"], message_ts=ts
        )
        if action == "edit":
            await slack.wait_for(lambda: slack.called("views.open"))
        else:
            await slack.wait_for(lambda: slack.responded(url))

    if action == "delete":
        assert slack.responded(url)[0]["text"] == messages.DELETED
    elif action != "edit":
        assert GENERATE_ACTION in buttons(slack.responded(url)[0])
