"""The imagine flow end to end through the console adapter, on both databases.

A scripted console types the lines and answers the confirm question; the
local provider and a scripted test provider make real images.
"""

from __future__ import annotations

import asyncio
import io
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import text, update

from bot import messages
from bot.app import open_service
from bot.credits import parse_amount
from bot.errors import AlreadyHandled, ModelUnavailable, NotYourRequest, QuoteExpired
from bot.flow import DELIVERY_ALLOWANCE_SECONDS, ImagineService, PostedImages, Quote, Retry
from bot.images import GRID_CELL
from bot.parsing import ImagineOptions, parse_compare, parse_imagine, validate_request
from bot.platforms.console import ConsoleChat
from bot.progress import Delivering, Generating, ProgressEvent, Queued
from bot.settings import Settings
from ledger import Balance, Generation, GenerationStatus, Ledger, create_engine
from ledger.schema import accounts
from providers.base import (
    GeneratedImage,
    GenerationResult,
    ImageDone,
    ImageRequest,
    ReferenceImage,
    generate_each,
)
from providers.errors import ContentBlocked, RateLimited
from tests.conftest import FakeClock, run_out_leases
from tests.fakes import Script, ScriptedProvider, fail_first, tiny_png

OWNER = "console:local"
GUEST = "console:guest"

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
resolution_credits = { "2K" = 15 }
resolutions = ["1K", "2K"]
aspect_ratios = ["1:1"]
max_images = 4
max_reference_images = 2
"""


class ScriptedConsole:
    """Types lines into a ConsoleChat and answers its questions from a queue."""

    def __init__(self, service: ImagineService, account: str, output_dir: Path) -> None:
        self.printed: list[str] = []
        self.questions: list[str] = []
        self.answers: deque[str | Callable[[], str]] = deque()
        self.chat = ConsoleChat(
            service,
            account,
            output_dir=output_dir,
            read_line=self._read_line,
            write=self.printed.append,
        )

    async def _read_line(self, prompt: str) -> str | None:
        self.questions.append(prompt)
        if not self.answers:
            return None
        answer = self.answers.popleft()
        return answer() if callable(answer) else answer

    async def say(self, line: str, *answers: str | Callable[[], str]) -> str:
        """Type ``line``, answer any question with ``answers``; returns what the bot printed."""
        self.answers.extend(answers)
        start = len(self.printed)
        await self.chat.handle(line)
        return "\n".join(self.printed[start:])


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    return path


@pytest.fixture
def settings(database_url: str, models_file: Path, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        output_dir=tmp_path / "out",
        generation_timeout_seconds=5,
        provider_concurrency=1,
    )


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with open_service(settings, extra_admins=frozenset({OWNER}), clock=clock) as service:
        await service.credits.open_account(OWNER, welcome_credits=100)
        yield service


@pytest.fixture
def scripted(service: ImagineService) -> ScriptedProvider:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    return provider


@pytest.fixture
def console(service: ImagineService, settings: Settings) -> ScriptedConsole:
    return ScriptedConsole(service, OWNER, settings.output_dir)


class RecordingDelivery:
    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.delivered: list[GeneratedImage] = []
        self.concluded: list[str] = []
        self.reported = asyncio.Event()

    async def progress(self, event: ProgressEvent) -> None:
        self.events.append(event)
        self.reported.set()

    async def deliver(
        self, images: list[GeneratedImage], generation: Generation, posted: PostedImages
    ) -> None:
        self.delivered.extend(images)
        posted.landed(len(images))

    async def conclude(self, report: str) -> None:
        self.concluded.append(report)


async def available(service: ImagineService, account: str = OWNER) -> int:
    return (await service.credits.balance(account)).available


async def last_generation(service: ImagineService, account: str = OWNER) -> Generation:
    [generation] = await service.ledger.history(account, limit=1, include_unconfirmed=True)
    return generation


async def test_imagine_saves_real_images_and_charges_for_them(
    console: ScriptedConsole, service: ImagineService, settings: Settings
) -> None:
    said = await console.say("/imagine model:local-sketch count:2 aspect:16:9 a lighthouse", "y")
    assert "Local Sketch · 2 images · 1K · 16:9" in said
    assert "Generate 2 images · 2 credits? [y/N] " in console.questions
    assert "Done: 2 images for 2 credits." in said
    saved = sorted(settings.output_dir.iterdir())
    assert len(saved) == 2
    for path in saved:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (1024, 576))
        assert f"saved {path}" in said
    assert await available(service) == 98
    generation = await last_generation(service)
    assert (generation.status, generation.model_id, generation.credits_charged) == (
        GenerationStatus.COMPLETED,
        "local-sketch",
        2,
    )
    assert await service.ledger.verify() == []


async def test_the_quote_shows_price_and_balance_before_anything_is_charged(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/imagine model:scripted count:3 resolution:2K a fox", "n")
    assert "Price: 45 credits · your balance: 100 credits" in said
    assert await available(service) == 100


async def test_insufficient_credits_are_refused_before_the_question(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await service.credits.revoke(OWNER, OWNER, 95)
    said = await console.say("/imagine model:scripted a fox")
    assert said == messages.insufficient_credits(10, 5)
    assert console.questions == []
    assert await service.ledger.history(OWNER, include_unconfirmed=True) == []


async def test_answering_no_cancels_and_charges_nothing(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    said = await console.say("/imagine model:scripted a fox", "n")
    assert messages.CANCELLED in said
    assert (await last_generation(service)).status == GenerationStatus.CANCELLED
    assert await available(service) == 100
    assert scripted.requests == []


async def test_a_quote_confirmed_after_it_expired_charges_nothing(
    console: ScriptedConsole, service: ImagineService, clock: FakeClock, scripted: ScriptedProvider
) -> None:
    def answer_too_late() -> str:
        clock.advance(seconds=service.quote_ttl.total_seconds() + 1)
        return "y"

    said = await console.say("/imagine model:scripted a fox", answer_too_late)
    assert messages.QUOTE_EXPIRED in said
    assert (await last_generation(service)).status == GenerationStatus.EXPIRED
    assert await available(service) == 100
    assert scripted.requests == []


@pytest.mark.parametrize("click", ["confirm", "cancel"])
async def test_a_click_on_a_quote_the_sweep_already_expired_is_told_it_expired(
    service: ImagineService, clock: FakeClock, click: str
) -> None:
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    clock.advance(seconds=service.quote_ttl.total_seconds() + 1)
    await service.recover()

    with pytest.raises(QuoteExpired) as refusal:
        if click == "confirm":
            await service.confirm(quote.id, OWNER, RecordingDelivery())
        else:
            await service.cancel(quote.id, OWNER)

    # Shown in place of the buttons, as an expiry found by the click itself is.
    assert refusal.value.ends_the_request
    assert await available(service) == 100


async def test_a_double_confirm_generates_and_charges_once(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    request = parse_imagine("model:scripted count:2 a fox", service.catalog)
    quote = await service.quote(OWNER, request)
    results = await asyncio.gather(
        service.confirm(quote.id, OWNER, RecordingDelivery()),
        service.confirm(quote.id, OWNER, RecordingDelivery()),
        return_exceptions=True,
    )
    outcomes = [result for result in results if not isinstance(result, BaseException)]
    assert len(outcomes) == 1
    assert [type(r) for r in results if isinstance(r, BaseException)] == [AlreadyHandled]
    assert len(scripted.requests) == 1
    assert await available(service) == 80


async def test_a_confirm_after_the_generation_finished_changes_nothing(
    service: ImagineService,
) -> None:
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    await service.confirm(quote.id, OWNER, RecordingDelivery())
    with pytest.raises(AlreadyHandled):
        await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert await available(service) == 90


async def test_another_account_cannot_confirm_a_request(service: ImagineService) -> None:
    await service.credits.open_account(GUEST)
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    with pytest.raises(NotYourRequest):
        await service.confirm(quote.id, GUEST, RecordingDelivery())
    outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert outcome.generation.status == GenerationStatus.COMPLETED


async def test_a_provider_failure_releases_everything_and_says_so(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.script = Script(images=0, error=RateLimited("429 quota"))
    said = await console.say("/imagine model:scripted count:2 a fox", "y")
    assert "rate-limiting" in said
    assert "no credits were charged" in said
    generation = await last_generation(service)
    assert (generation.status, generation.error_code) == (GenerationStatus.FAILED, "rate_limited")
    assert await available(service) == 100
    assert await service.ledger.verify() == []


async def test_a_safety_block_charges_nothing_and_names_the_filter(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.script = Script(images=0, error=ContentBlocked("the prompt mentions violence"))
    said = await console.say("/imagine model:scripted a fox", "y")
    assert "safety filter blocked this request (the prompt mentions violence)" in said
    assert (await last_generation(service)).error_code == "blocked"
    assert await available(service) == 100


async def test_a_partial_result_charges_only_the_delivered_images(
    console: ScriptedConsole,
    service: ImagineService,
    scripted: ScriptedProvider,
    settings: Settings,
) -> None:
    scripted.script = Script(images=1, error=ContentBlocked("IMAGE_SAFETY"))
    said = await console.say("/imagine model:scripted count:3 a fox", "y")
    assert "Only 1 of 3 images could be made" in said
    assert "charged 10 credits" in said
    assert len(list(settings.output_dir.iterdir())) == 1
    generation = await last_generation(service)
    assert (generation.status, generation.images_delivered, generation.credits_charged) == (
        GenerationStatus.PARTIAL,
        1,
        10,
    )
    assert await available(service) == 90


async def test_a_provider_that_never_answers_times_out_and_charges_nothing(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    service.generation_timeout = timedelta(milliseconds=50)
    scripted.script = Script(hang=True)
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert outcome.message == messages.failure("timeout")
    assert outcome.generation.error_code == "timeout"
    assert await available(service) == 100


async def test_images_that_cannot_be_saved_are_not_charged(
    service: ImagineService, tmp_path: Path
) -> None:
    blocked_folder = tmp_path / "not-a-folder"
    blocked_folder.write_text("a file where the output folder should be")
    console = ScriptedConsole(service, OWNER, blocked_folder)
    said = await console.say("/imagine model:scripted a fox", "y")
    assert "could not be posted here" in said
    assert (await last_generation(service)).error_code == "delivery_failed"
    assert await available(service) == 100


async def test_progress_is_reported_image_by_image_then_delivery(service: ImagineService) -> None:
    quote = await service.quote(
        OWNER, parse_imagine("model:scripted count:2 a fox", service.catalog)
    )
    delivery = RecordingDelivery()
    await service.confirm(quote.id, OWNER, delivery)
    assert delivery.events == [
        Generating("Scripted", 0, 2),
        Generating("Scripted", 1, 2),
        Generating("Scripted", 2, 2),
        Delivering(2),
    ]


async def test_a_request_waiting_for_the_provider_is_told_its_place(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.release = asyncio.Event()
    first = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    second = await service.quote(OWNER, parse_imagine("model:scripted a cat", service.catalog))
    waiting = RecordingDelivery()
    running = asyncio.create_task(service.confirm(first.id, OWNER, RecordingDelivery()))
    await scripted.started.wait()
    queued = asyncio.create_task(service.confirm(second.id, OWNER, waiting))
    await waiting.reported.wait()
    assert waiting.events == [Queued(1)]
    scripted.release.set()
    await asyncio.gather(running, queued)
    assert await available(service) == 80


async def test_a_request_queued_past_its_reply_window_is_released_without_reaching_the_provider(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.release = asyncio.Event()
    first = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    second = await service.quote(OWNER, parse_imagine("model:scripted a cat", service.catalog))
    running = asyncio.create_task(service.confirm(first.id, OWNER, RecordingDelivery()))
    await scripted.started.wait()
    service.generation_timeout = timedelta(seconds=1)
    # Room to wait in the queue for a fifth of a second, then too little left to generate and post.
    reachable_for = 1.1 + DELIVERY_ALLOWANCE_SECONDS + 0.2

    outcome = await service.generate(
        await service.hold(second.id, OWNER), RecordingDelivery(), reachable_for=reachable_for
    )

    assert outcome.message == messages.failure("queued_too_long")
    assert outcome.generation.status == GenerationStatus.FAILED
    assert [request.prompt for request in scripted.requests] == ["a fox"]
    scripted.release.set()
    await running
    assert await available(service) == 90


async def test_a_generation_cancelled_midway_releases_its_hold(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.script = Script(hang=True)
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    task = asyncio.create_task(service.confirm(quote.id, OWNER, RecordingDelivery()))
    await scripted.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    generation = await service.ledger.generation(quote.id)
    assert (generation.status, generation.error_code) == (GenerationStatus.FAILED, "interrupted")
    balance = await service.credits.balance(OWNER)
    assert (balance.available, balance.held) == (100, 0)


async def test_a_generation_cut_short_by_a_shutdown_tells_the_user_so(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.script = Script(hang=True)
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    delivery = RecordingDelivery()
    task = asyncio.create_task(service.confirm(quote.id, OWNER, delivery))
    await scripted.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    [report] = delivery.concluded
    assert report.startswith(messages.failure("interrupted"))


async def test_a_generation_cancelled_after_posting_its_images_is_charged_for_them(
    service: ImagineService, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording_started = asyncio.Event()
    record_posted = service.ledger.mark_posted

    async def first_record_never_ends(
        generation_id: str, images: int, link: str | None = None
    ) -> None:
        if not recording_started.is_set():
            recording_started.set()
            await asyncio.Event().wait()
        await record_posted(generation_id, images, link)

    monkeypatch.setattr(service.ledger, "mark_posted", first_record_never_ends)
    quote = await service.quote(
        OWNER, parse_imagine("model:scripted count:2 a fox", service.catalog)
    )
    delivery = RecordingDelivery()
    task = asyncio.create_task(service.confirm(quote.id, OWNER, delivery))
    await recording_started.wait()
    task.cancel()  # as a shutdown does once its grace period is over
    with pytest.raises(asyncio.CancelledError):
        await task

    generation = await service.ledger.generation(quote.id)
    assert len(delivery.delivered) == 2
    assert delivery.concluded[0].startswith("Done: 2 images for 20 credits.")
    assert (generation.status, generation.images_delivered, generation.credits_charged) == (
        GenerationStatus.COMPLETED,
        2,
        20,
    )
    balance = await service.credits.balance(OWNER)
    assert (balance.available, balance.held) == (80, 0)


async def test_a_slow_progress_message_at_the_time_limit_does_not_lose_the_finished_images(
    service: ImagineService, scripted: ScriptedProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.generation_timeout = timedelta(seconds=4)  # a grace of 0.4 s after it

    async def first_image_only(request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        async def make(index: int) -> GeneratedImage:
            if index:
                await asyncio.Event().wait()
            return GeneratedImage(tiny_png(), "image/png", 8, 8)

        return await generate_each(request, make, on_image_done)

    monkeypatch.setattr(scripted, "generate", first_image_only)

    class SlowAtTheLimit(RecordingDelivery):
        async def progress(self, event: ProgressEvent) -> None:
            await super().progress(event)
            if isinstance(event, Generating) and event.finished == 2:
                await asyncio.sleep(1.0)  # a platform's rate limit, say

    quote = await service.quote(
        OWNER, parse_imagine("model:scripted count:2 a fox", service.catalog)
    )
    delivery = SlowAtTheLimit()

    outcome = await service.confirm(quote.id, OWNER, delivery)

    assert len(delivery.delivered) == 1
    assert outcome.generation.images_delivered == 1
    assert await available(service) == 90


async def test_holds_left_by_a_crash_are_released_at_start_up(service: ImagineService) -> None:
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    await service.ledger.hold(quote.id, OWNER, lease=timedelta(0))
    [released] = await service.recover()
    assert released.error_message == messages.INTERRUPTED_RELEASED
    assert await available(service) == 100


async def test_credits_shows_each_lot_and_when_it_expires(
    console: ScriptedConsole, service: ImagineService, clock: FakeClock
) -> None:
    await service.credits.grant(OWNER, OWNER, 20, "contest", expires_at=clock() + timedelta(days=7))

    said = await console.say("/credits")

    assert said.splitlines()[:3] == [
        "Balance: 120 credits available.",
        "  20 credits promo · expires 2026-12-01 12:00 UTC",
        "  100 credits promo · never expires",
    ]


async def test_credits_shows_the_balance_and_recent_generations(
    console: ScriptedConsole,
) -> None:
    await console.say("/imagine model:local-sketch a lighthouse at dusk", "y")
    said = await console.say("/credits")
    assert "Balance: 99 credits available." in said
    assert "local-sketch  1/1 images  1 credit  completed  “a lighthouse at dusk”" in said


async def test_credits_with_no_history_suggests_a_first_command(
    service: ImagineService, settings: Settings
) -> None:
    console = ScriptedConsole(service, GUEST, settings.output_dir)
    said = await console.say("/credits")
    assert messages.NO_HISTORY in said


async def test_models_lists_every_active_model_with_its_price(console: ScriptedConsole) -> None:
    said = await console.say("/models")
    assert "local-sketch" in said
    assert "10@1K 15@2K" in said


async def test_models_shows_the_account_s_own_price_beside_the_list_price(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await service.ledger.set_price_override(
        OWNER, model_id=None, percent_off=20, actor=OWNER, reason="beta tester"
    )

    said = await console.say("/models")

    assert "10@1K 15@2K (your price 8@1K 12@2K)" in said


async def test_imagine_price_answers_the_quote_without_a_question_and_records_nothing(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/imagine price model:scripted count:3 resolution:2K a fox")

    assert "Price: 45 credits · your balance: 100 credits" in said
    assert "An estimate: nothing is held." in said
    assert console.questions == []
    assert await service.ledger.history(OWNER, include_unconfirmed=True) == []
    assert await available(service) == 100


async def test_help_lists_admin_commands_only_to_admins(
    console: ScriptedConsole, service: ImagineService, settings: Settings
) -> None:
    assert "/grant" in await console.say("/help")
    guest = ScriptedConsole(service, GUEST, settings.output_dir)
    guest_help = await guest.say("/help")
    assert "/imagine" in guest_help
    assert "/grant" not in guest_help
    assert "/stats" not in guest_help


@pytest.mark.sqlite_only  # Drawing is the same whatever the database (tests/test_stats.py).
async def test_stats_prints_the_figures_and_saves_the_chart_in_the_output_folder(
    console: ScriptedConsole, settings: Settings
) -> None:
    await console.say("/imagine model:local-sketch count:2 a fox", "y")

    said = (await console.say("/stats")).splitlines()

    chart = settings.output_dir / "stats-2026-11-24.png"
    assert said[1] == "1 generation · 2 images · 2 credits spent"
    assert said[-1] == messages.saved_to(str(chart))
    with Image.open(chart) as saved:
        assert saved.format == "PNG"


async def test_stats_are_refused_to_a_guest(service: ImagineService, settings: Settings) -> None:
    guest = ScriptedConsole(service, GUEST, settings.output_dir)

    assert await guest.say("/stats") == messages.STATS_NOT_ADMIN


async def test_an_admin_grant_adds_credits_and_is_recorded(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/grant console:guest 50 contest prize")
    assert said == messages.granted(GUEST, 50, 50)
    [entry] = await service.ledger.entries(GUEST)
    assert (entry.actor, entry.reason) == (OWNER, "contest prize")


async def test_an_admin_grant_expiring_after_a_duration_says_when_and_the_lot_expires_then(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/grant console:guest 50 expires:7d contest prize")

    week_later = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert said == messages.granted(GUEST, 50, 50, week_later)
    [lot] = (await service.credits.balance(GUEST)).lots
    assert lot.expires_at is not None
    assert lot.expires_at - week_later < timedelta(seconds=1)


async def test_an_admin_grant_expiring_on_a_date_keeps_the_reason_around_the_option(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/grant console:guest 50 contest expires:2027-01-01 prize")

    new_year = datetime(2027, 1, 1, tzinfo=UTC)
    assert said == messages.granted(GUEST, 50, 50, new_year)
    assert said.endswith("expiring 2027-01-01 00:00 UTC; their balance is now 50 credits.")
    [lot] = (await service.credits.balance(GUEST)).lots
    assert lot.expires_at == new_year
    [entry] = await service.ledger.entries(GUEST)
    assert entry.reason == "contest prize"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/grant console:guest 50 expires:soon", messages.bad_expiry("soon")),
        ("/grant console:guest 50 expires:0d", messages.bad_duration("0d")),
        (
            "/grant console:guest 50 expires:2001-01-01",
            messages.date_in_the_past(datetime(2001, 1, 1, tzinfo=UTC)),
        ),
        ("/grant console:guest 50 expires:7d expires:8d", messages.repeated_option("expires")),
        ("/revoke console:guest 5 expires:7d", messages.EXPIRY_ON_REVOKE),
    ],
)
async def test_a_bad_expiry_is_one_sentence_and_leaves_the_balance_unchanged(
    console: ScriptedConsole, service: ImagineService, line: str, expected: str
) -> None:
    await console.say("/grant console:guest 10")

    assert await console.say(line) == expected
    assert await available(service, GUEST) == 10


async def test_a_grant_by_a_non_admin_is_refused(
    service: ImagineService, settings: Settings
) -> None:
    guest = ScriptedConsole(service, GUEST, settings.output_dir)
    said = await guest.say(f"/grant {GUEST} 1000")
    assert said == messages.NOT_ADMIN
    assert await available(service, GUEST) == 0


async def test_a_grant_with_an_expiry_by_a_non_admin_is_refused_as_not_an_admin_s(
    service: ImagineService, settings: Settings
) -> None:
    guest = ScriptedConsole(service, GUEST, settings.output_dir)
    assert await guest.say(f"/grant {GUEST} 1000 expires:soon") == messages.NOT_ADMIN


async def test_a_revoke_beyond_the_available_balance_is_refused(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await console.say("/grant console:guest 5")
    said = await console.say("/revoke console:guest 6")
    assert said == messages.revoke_exceeds_balance(6, 5)
    assert await available(service, GUEST) == 5


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/grant console:guest", messages.admin_usage("grant")),
        ("/grant console:guest -5", messages.invalid_amount("-5")),
        ("/grant console:guest 1,5", messages.invalid_amount("1,5")),
        ("/grant console:guest ²", messages.invalid_amount("²")),
        ("/grant console:guest ١٢", messages.invalid_amount("١٢")),
        ("/grant bob 5", messages.invalid_account("bob")),
        ("/grant discord:0123 5", messages.invalid_account("discord:0123")),
        ("/revoke console:nobody 5", messages.unknown_account("console:nobody")),
    ],
)
async def test_bad_admin_commands_are_explained(
    console: ScriptedConsole, line: str, expected: str
) -> None:
    assert await console.say(line) == expected


async def test_a_grant_reason_may_hold_an_apostrophe(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await console.say("/grant console:guest 5 Bob's prize")

    [entry, *_] = await service.ledger.entries(GUEST)
    assert (entry.amount, entry.reason) == (5, "Bob's prize")


async def test_a_bad_request_is_explained_and_changes_nothing(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/imagine model:scripted count:9 a fox")
    assert said == messages.bad_count("9", 4, "scripted")
    assert await service.ledger.history(OWNER, include_unconfirmed=True) == []


async def test_text_without_a_slash_points_to_imagine(console: ScriptedConsole) -> None:
    assert await console.say("a fox in the snow") == messages.NOT_A_COMMAND


async def test_an_unknown_command_points_to_help(console: ScriptedConsole) -> None:
    assert await console.say("/paint a fox") == messages.unknown_command("paint")


async def test_the_welcome_grant_is_given_once(service: ImagineService) -> None:
    await service.credits.open_account(OWNER, welcome_credits=100)
    assert await available(service) == 100


async def test_the_welcome_grant_is_not_given_again_when_its_amount_changes(
    service: ImagineService,
) -> None:
    welcomed = await service.credits.open_account(GUEST, welcome_credits=50)

    balance = await service.credits.open_account(GUEST, welcome_credits=80)

    assert balance == welcomed
    assert [entry.reason for entry in await service.ledger.entries(GUEST)] == ["welcome credits"]


@pytest.mark.parametrize(("typed", "credits"), [("1000", 1000), ("1,000", 1000), ("1_000", 1000)])
def test_an_amount_may_group_its_thousands(typed: str, credits: int) -> None:
    assert parse_amount(typed) == credits


async def test_an_account_created_by_a_grant_also_receives_the_starting_credits(
    settings: Settings, clock: FakeClock
) -> None:
    generous = settings.model_copy(update={"starting_credits": 7})
    async with open_service(generous, extra_admins=frozenset({OWNER}), clock=clock) as service:
        balance = await service.credits.grant(OWNER, GUEST, 10)
        assert balance.available == 17
        assert await available(service, GUEST) == 17


async def test_new_accounts_receive_the_starting_credits(
    settings: Settings, clock: FakeClock
) -> None:
    generous = settings.model_copy(update={"starting_credits": 7})
    async with open_service(generous, clock=clock) as service:
        assert await available(service, GUEST) == 7


REFERENCE = ReferenceImage(tiny_png(), "image/png")


async def quote_with_a_reference(service: ImagineService) -> Quote:
    options = ImagineOptions(
        prompt="a fox like this", model="scripted", reference_images=(REFERENCE,)
    )
    return await service.quote(OWNER, validate_request(options, service.catalog))


async def test_reference_images_reach_the_provider(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    quote = await quote_with_a_reference(service)
    await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert scripted.requests[0].reference_images == (REFERENCE,)


async def test_the_sweep_leaves_a_generation_this_process_is_running(
    service: ImagineService, scripted: ScriptedProvider, clock: FakeClock
) -> None:
    scripted.release = asyncio.Event()
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    running = asyncio.create_task(service.confirm(quote.id, OWNER, RecordingDelivery()))
    await scripted.started.wait()
    await run_out_leases(service.ledger)
    assert await service.recover() == []
    scripted.release.set()
    outcome = await running
    assert outcome.generation.status == GenerationStatus.COMPLETED
    assert await available(service) == 90


async def test_the_periodic_sweep_releases_stale_holds(
    service: ImagineService, clock: FakeClock
) -> None:
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    await service.ledger.hold(quote.id, OWNER, lease=timedelta(0))
    service.heartbeat_interval = timedelta(milliseconds=1)
    sweeper = asyncio.create_task(service.sweep_periodically())
    try:
        for _ in range(500):
            if (await service.ledger.generation(quote.id)).status != GenerationStatus.RUNNING:
                break
            await asyncio.sleep(0.01)
    finally:
        sweeper.cancel()
    assert (await service.ledger.generation(quote.id)).error_code == "interrupted"
    assert await available(service) == 100


async def test_images_posted_after_another_process_settled_the_request_are_told_as_they_are(
    service: ImagineService,
    scripted: ScriptedProvider,
    database_url: str,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scripted.release = asyncio.Event()
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    running = asyncio.create_task(service.confirm(quote.id, OWNER, RecordingDelivery()))
    await scripted.started.wait()
    # This process stalls past its lease, and another one settles the request as abandoned.
    await run_out_leases(service.ledger)
    other = Ledger(create_engine(database_url), clock, owner="another-process")
    try:
        assert await other.settle_abandoned(
            quote.id, reason=messages.INTERRUPTED_RELEASED, posted_reason=""
        )
    finally:
        await other.close()

    scripted.release.set()
    outcome = await running

    assert outcome.message == (
        "1 image posted, but this request had already been settled as interrupted"
        " while the bot was not answering for it: charged 0 credits."
    )
    assert len(outcome.images) == 1
    assert await available(service) == 100
    assert (
        service.metrics.registry.get_sample_value(
            "imagine_settled_before_capture_total", {"model": "scripted"}
        )
        == 1
    )
    assert any("after it was settled" in record.getMessage() for record in caplog.records)


async def test_a_click_on_a_model_switched_off_since_the_quote_is_refused_and_holds_nothing(
    service: ImagineService,
) -> None:
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    # Restarted with the model switched off, or its provider's key gone.
    service.catalog = replace(service.catalog, unavailable={"scripted": "it has no API key"})

    with pytest.raises(ModelUnavailable) as refused:
        await service.confirm(quote.id, OWNER, RecordingDelivery())

    assert refused.value.message == (
        "scripted is unavailable: it has no API key. /models lists the ones you can use."
    )
    assert (await service.ledger.generation(quote.id)).status == GenerationStatus.QUOTED
    assert await service.credits.balance(OWNER) == Balance(OWNER, available=100, held=0)


async def test_the_provider_options_priced_in_the_quote_are_the_ones_generated_with(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    [scripted_model] = [model for model in service.catalog.registry if model.id == "scripted"]
    changed = replace(scripted_model, provider_options={"quality": "high"})
    registry = service.catalog.registry
    service.catalog = replace(
        service.catalog,
        registry=replace(
            registry,
            models=tuple(changed if m.id == "scripted" else m for m in registry.models),
        ),
    )

    await service.confirm(quote.id, OWNER, RecordingDelivery())

    assert quote.generation.options["provider_options"] == {}
    assert scripted.requests[-1].options == {}


# -- the database failing while a generation settles ---------------------------

QUICK_RETRY = Retry(first_wait_seconds=0.01, longest_wait_seconds=0.02, give_up_after_seconds=0.2)


async def sweep_after_the_lease_ran_out(service: ImagineService) -> None:
    await run_out_leases(service.ledger)
    await service.recover()


async def test_a_capture_the_database_drops_is_tried_again_and_charged_once(
    service: ImagineService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.settle_retry = QUICK_RETRY
    fail_first(service.ledger, "capture", monkeypatch, times=2)
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert outcome.message == "Done: 1 image for 10 credits."
    assert outcome.report.endswith("Balance: 90 credits available.")
    assert await available(service) == 90
    assert await service.ledger.verify() == []


async def test_images_posted_while_the_database_is_unreachable_until_the_bot_stops_are_charged_by_the_sweep(
    service: ImagineService, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.settle_retry = QUICK_RETRY
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    fail_first(service.ledger, "capture", monkeypatch)
    delivery = RecordingDelivery()
    outcome = await service.confirm(quote.id, OWNER, delivery)
    assert (outcome.report, len(delivery.delivered)) == (messages.CAPTURE_DELAYED, 1)
    assert (await service.credits.balance(OWNER)).held == 10
    await service.stop_settling()  # as the bot stopping does
    monkeypatch.undo()
    await sweep_after_the_lease_ran_out(service)
    settled = await service.ledger.generation(quote.id)
    assert (settled.status, settled.credits_charged) == (GenerationStatus.COMPLETED, 10)
    balance = await service.credits.balance(OWNER)
    assert (balance.available, balance.held) == (90, 0)


async def test_a_capture_the_database_refuses_for_good_is_not_tried_again_and_its_cause_logged(
    service: ImagineService,
    scripted: ScriptedProvider,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service.settle_retry = QUICK_RETRY
    attempts = 0
    capture = service.ledger.capture

    async def counted(*args: Any, **kwargs: Any) -> Generation:
        nonlocal attempts
        attempts += 1
        return await capture(*args, **kwargs)

    monkeypatch.setattr(service.ledger, "capture", counted)
    scripted.release = asyncio.Event()
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    running = asyncio.create_task(service.confirm(quote.id, OWNER, RecordingDelivery()))
    await scripted.started.wait()
    async with service.ledger.engine.begin() as connection:
        await connection.execute(text("ALTER TABLE ledger_entries RENAME TO misplaced"))
    try:
        scripted.release.set()
        outcome = await running
    finally:
        async with service.ledger.engine.begin() as connection:
            await connection.execute(text("ALTER TABLE misplaced RENAME TO ledger_entries"))

    assert outcome.report == messages.CAPTURE_DELAYED
    assert attempts == 1
    assert "ledger_entries" in caplog.text


def sample(service: ImagineService, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_settlements_are_counted_by_kind_and_reason_with_their_retries(
    service: ImagineService, scripted: ScriptedProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.settle_retry = QUICK_RETRY
    fail_first(service.ledger, "capture", monkeypatch, times=2)
    first = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    await service.confirm(first.id, OWNER, RecordingDelivery())
    scripted.script = Script(images=0, error=RateLimited("429 quota"))
    second = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    await service.confirm(second.id, OWNER, RecordingDelivery())
    third = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    await service.ledger.hold(third.id, OWNER, lease=timedelta(0))
    await service.recover()

    total = "imagine_settlements_total"
    assert sample(service, total, kind="capture", reason="completed") == 1
    assert sample(service, total, kind="release", reason="rate_limited") == 1
    assert sample(service, total, kind="sweep", reason="failed") == 1
    assert sample(service, "imagine_settlement_retries_total") == 2


async def test_a_running_bot_checks_the_ledger_as_it_starts(service: ImagineService) -> None:
    for _ in range(500):
        if sample(service, "imagine_ledger_checked_timestamp_seconds"):
            break
        await asyncio.sleep(0.01)
    assert sample(service, "imagine_ledger_checked_timestamp_seconds") > 0
    assert sample(service, "imagine_ledger_discrepancies") == 0


async def test_a_balance_changed_behind_the_ledgers_back_is_counted_and_logged(
    service: ImagineService, caplog: pytest.LogCaptureFixture
) -> None:
    async with service.ledger.engine.begin() as connection:
        await connection.execute(
            update(accounts).where(accounts.c.id == OWNER).values(available=1_000)
        )

    assert await service.check_ledger() == 1

    assert sample(service, "imagine_ledger_discrepancies") == 1
    assert "console:local stores 1000 available / 0 held" in caplog.text


async def test_a_release_the_database_drops_is_tried_again(
    service: ImagineService, scripted: ScriptedProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.settle_retry = QUICK_RETRY
    scripted.script = Script(images=0, error=RateLimited("429 quota"))
    fail_first(service.ledger, "release", monkeypatch, times=2)
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert outcome.message == messages.failure("rate_limited")
    assert outcome.generation.status == GenerationStatus.FAILED
    assert await available(service) == 100


async def test_a_hold_the_database_cannot_release_now_is_returned_once_the_database_is_back(
    service: ImagineService,
    scripted: ScriptedProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service.settle_retry = QUICK_RETRY
    scripted.script = Script(images=0, error=RateLimited("429 quota"))
    fail_first(service.ledger, "release", monkeypatch)
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert outcome.report == messages.failure("rate_limited", returned_later=True)
    assert "held credits will be returned automatically" in outcome.report
    monkeypatch.undo()
    assert await service.drain(10)
    generation = await service.ledger.generation(quote.id)
    assert (generation.status, generation.error_code) == (GenerationStatus.FAILED, "rate_limited")
    balance = await service.credits.balance(OWNER)
    assert (balance.available, balance.held) == (100, 0)


async def test_a_balance_the_database_cannot_read_is_left_out_of_the_report(
    service: ImagineService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.settle_retry = QUICK_RETRY
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    fail_first(service.ledger, "balance", monkeypatch)
    outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert (outcome.report, outcome.balance) == ("Done: 1 image for 10 credits.", None)
    assert outcome.generation.credits_charged == 10


async def test_an_unexpected_error_in_the_flow_releases_the_hold_and_says_so(
    service: ImagineService, scripted: ScriptedProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def breaks_its_contract(request: object, on_image_done: object) -> None:
        return None

    monkeypatch.setattr(scripted, "generate", breaks_its_contract)
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert outcome.message == "Something went wrong while generating; no credits were charged."
    assert (outcome.generation.status, outcome.generation.error_code) == (
        GenerationStatus.FAILED,
        "internal",
    )
    assert await available(service) == 100


async def test_a_command_the_database_fails_is_answered_and_the_chat_goes_on(
    console: ScriptedConsole, service: ImagineService, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_first(service.ledger, "open_quote", monkeypatch, times=1)

    assert await console.say("/imagine model:scripted a fox", "y") == messages.SOMETHING_WENT_WRONG
    assert "Done: 1 image for 10 credits." in await console.say(
        "/imagine model:scripted a fox", "y"
    )


async def test_a_settlement_that_fails_for_a_bug_is_not_tried_again(
    service: ImagineService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.settle_retry = Retry(first_wait_seconds=0.01, give_up_after_seconds=60)
    attempts = 0

    async def broken(generation_id: str, images_delivered: int, **_: object) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("a bug")

    monkeypatch.setattr(service.ledger, "capture", broken)
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    outcome = await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert (outcome.message, attempts) == (messages.CAPTURE_DELAYED, 1)


async def test_statement_shows_each_change_to_your_credits_with_the_balance_after_it(
    console: ScriptedConsole,
) -> None:
    await console.say("/imagine model:local-sketch a lighthouse", "y")

    said = await console.say("/statement")

    header, *rows = said.splitlines()
    assert header.split() == [
        "time", "kind", "lot", "available_change", "held_change", "generation", "model",
        "available", "held",
    ]  # fmt: skip
    assert [row.split()[1] for row in rows] == ["grant", "hold", "capture"]
    assert rows[-1].split()[-2:] == ["99", "0"]


async def test_compare_quote_lists_each_models_price_and_the_total(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/compare models:local-sketch,scripted a fox", "n")
    assert "  Local Sketch: 1 credit" in said
    assert "  Scripted: 10 credits" in said
    assert "Total: 11 credits · your balance: 100 credits" in said
    assert "Compare 2 models · 11 credits? [y/N] " in console.questions
    assert await available(service) == 100


async def test_compare_confirm_holds_the_total_at_once(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.release = asyncio.Event()
    said = asyncio.create_task(console.say("/compare models:local-sketch,scripted a fox", "y"))
    await scripted.wait_for_requests(1)
    balance = await service.credits.balance(OWNER)
    assert (balance.available, balance.held) == (89, 11)
    scripted.release.set()
    await said


async def test_compare_short_of_the_total_is_refused_before_the_question(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await service.credits.revoke(OWNER, OWNER, 95, "test")
    said = await console.say("/compare models:local-sketch,scripted a fox")
    assert messages.insufficient_credits(11, 5) in said
    assert console.questions == []


async def test_compare_where_one_model_fails_charges_only_the_others(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.script = Script(images=0, error=ContentBlocked("blocked"))
    said = await console.say("/compare models:local-sketch,scripted a fox", "y")
    assert "Compare done: 1 credit in all." in said
    assert await available(service) == 99
    [failed] = [
        generation
        for generation in await service.ledger.history(OWNER, limit=5)
        if generation.model_id == "scripted"
    ]
    assert (failed.status, failed.credits_charged) == (GenerationStatus.FAILED, 0)
    assert await service.ledger.verify() == []


async def test_compare_grid_has_a_cell_per_model_and_names_the_failed_one(
    service: ImagineService, scripted: ScriptedProvider
) -> None:
    scripted.script = Script(images=0, error=ContentBlocked("blocked"))
    request = parse_compare("models:local-sketch,scripted a fox", service.catalog)
    quote = await service.quote_compare(OWNER, request)
    delivery = RecordingDelivery()
    ended = await service.confirm_compare(quote.id, OWNER, delivery)
    assert ended.grid is not None
    with Image.open(io.BytesIO(ended.grid.data)) as grid:
        assert grid.size == (2 * GRID_CELL, ended.grid.height)
    assert delivery.delivered[0].data == ended.grid.data
    assert ended.labels[1] == messages.compare_cell_failed("Scripted")


async def test_compare_names_the_model_lacking_the_aspect(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/compare models:local-sketch,scripted aspect:16:9 a fox")
    assert said == messages.unsupported_aspect("16:9", "scripted", ("1:1",))
    assert console.questions == []


async def test_a_compare_confirmed_twice_generates_and_charges_once(
    service: ImagineService,
) -> None:
    request = parse_compare("models:local-sketch,scripted a fox", service.catalog)
    quote = await service.quote_compare(OWNER, request)
    await service.confirm_compare(quote.id, OWNER, RecordingDelivery())
    with pytest.raises(AlreadyHandled):
        await service.confirm_compare(quote.id, OWNER, RecordingDelivery())
    assert await available(service) == 89
    assert await service.ledger.verify() == []


# -- /history and /settings auto_confirm_under --------------------------------

REQUEST = "/imagine model:local-sketch count:2 a lighthouse"


async def test_history_shows_where_each_generation_was_saved(
    console: ScriptedConsole, settings: Settings
) -> None:
    await console.say(REQUEST, "y")
    said = await console.say("/history")
    [first, *_] = sorted(settings.output_dir.iterdir())
    assert "1. " in said and "local-sketch  2/2 images  2 credits" in said
    assert said.endswith(str(first))


async def test_a_request_under_the_limit_generates_without_asking_and_says_its_cost(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await console.say("/settings auto_confirm_under:5")
    said = await console.say(REQUEST)
    assert not [question for question in console.questions if "[y/N]" in question]
    assert "Done: 2 images for 2 credits (auto-confirmed under 5)." in said
    assert await available(service) == 98


async def test_a_request_over_the_limit_still_asks(console: ScriptedConsole) -> None:
    await console.say("/settings auto_confirm_under:1")
    await console.say(REQUEST, "n")
    assert "Generate 2 images · 2 credits? [y/N] " in console.questions


async def test_a_limit_of_zero_always_asks(console: ScriptedConsole) -> None:
    await console.say("/settings auto_confirm_under:5")
    said = await console.say("/settings auto_confirm_under:0")
    await console.say(REQUEST, "n")
    assert "Auto-confirm is off" in said
    assert "Generate 2 images · 2 credits? [y/N] " in console.questions


async def test_a_bad_limit_is_one_sentence_and_changes_nothing(
    console: ScriptedConsole, service: ImagineService
) -> None:
    await console.say("/settings auto_confirm_under:5")
    said = await console.say("/settings auto_confirm_under:lots")
    assert said == (
        "“lots” is not a number of credits from 0 to 1,000,000; your settings were not changed."
    )
    assert await service.credits.auto_confirm_under(OWNER) == 5
