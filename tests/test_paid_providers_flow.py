"""Credits stay exact when a real provider adapter fails wholly or in part, on both databases.

The console drives the whole flow; the Google and OpenAI adapters talk to
loopback fakes of their APIs through their real SDKs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import open_service
from bot.flow import ImagineService
from bot.settings import Settings
from ledger import Generation, GenerationStatus
from tests import fake_gemini, fake_openai
from tests.conftest import FakeClock
from tests.fake_gemini import FakeGemini, Reply, blocked_output, blocked_prompt, error_body
from tests.fake_openai import FakeOpenAI
from tests.test_console_flow import OWNER, ScriptedConsole, available, last_generation

MODELS = """
[models.gemini-3-pro]
provider = "google"
provider_model = "gemini-3-pro-image"
name = "Gemini 3 Pro Image"
credits_per_image = 10
resolutions = ["1K", "2K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4

[models.gpt-image]
provider = "openai"
provider_model = "gpt-image-1.5"
name = "GPT Image 1.5"
credits_per_image = 8
resolutions = ["1K"]
aspect_ratios = ["1:1", "3:2"]
max_images = 4
provider_options = { quality = "high" }
"""


@pytest.fixture
async def gemini() -> AsyncIterator[FakeGemini]:
    async with FakeGemini() as server:
        yield server


@pytest.fixture
async def openai_api() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def service(
    database_url: str,
    tmp_path: Path,
    clock: FakeClock,
    gemini: FakeGemini,
    openai_api: FakeOpenAI,
) -> AsyncIterator[ImagineService]:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        output_dir=tmp_path / "out",
        gemini_api_key=fake_gemini.API_KEY,
        gemini_base_url=gemini.base_url,
        gemini_max_attempts=1,
        openai_api_key=fake_openai.API_KEY,
        openai_base_url=openai_api.base_url,
    )
    async with open_service(settings, extra_admins=frozenset({OWNER}), clock=clock) as service:
        await service.credits.open_account(OWNER, welcome_credits=100)
        yield service


@pytest.fixture
def console(service: ImagineService, tmp_path: Path) -> ScriptedConsole:
    return ScriptedConsole(service, OWNER, tmp_path / "out")


async def test_gemini_images_are_saved_and_charged(
    console: ScriptedConsole, service: ImagineService, tmp_path: Path
) -> None:
    said = await console.say("/imagine model:gemini-3-pro count:2 res:2K ar:16:9 a harbour", "y")

    assert "Done: 2 images for 20 credits." in said
    assert len(list((tmp_path / "out").iterdir())) == 2
    assert await available(service) == 80
    assert await service.ledger.verify() == []


async def test_one_blocked_image_of_four_charges_for_the_three_delivered(
    console: ScriptedConsole, service: ImagineService, gemini: FakeGemini
) -> None:
    gemini.script(Reply(body=blocked_output("IMAGE_SAFETY")))

    said = await console.say("/imagine model:gemini-3-pro count:4 a harbour", "y")

    assert (
        "Only 3 of 4 images could be made (the provider's safety filter blocked the others); "
        "you were charged 30 credits for those and the rest was returned."
    ) in said
    generation = await last_generation(service)
    assert (generation.status, generation.images_delivered, generation.credits_charged) == (
        GenerationStatus.PARTIAL,
        3,
        30,
    )
    assert await available(service) == 70
    assert (await service.credits.balance(OWNER)).held == 0
    assert await service.ledger.verify() == []


async def test_gemini_unavailable_charges_nothing_and_says_try_later(
    console: ScriptedConsole, service: ImagineService, gemini: FakeGemini
) -> None:
    gemini.script(*[Reply(503, error_body(503, "UNAVAILABLE", "The model is overloaded."))] * 2)

    said = await console.say("/imagine model:gemini-3-pro count:2 a harbour", "y")

    assert (
        "The provider is unavailable right now (Google answered 503); "
        "try again in a few minutes; no credits were charged."
    ) in said
    generation = await last_generation(service)
    assert (generation.status, generation.error_code) == (GenerationStatus.FAILED, "unavailable")
    assert await available(service) == 100
    assert (await service.credits.balance(OWNER)).held == 0


async def test_a_blocked_prompt_charges_nothing_and_says_why(
    console: ScriptedConsole, service: ImagineService, gemini: FakeGemini
) -> None:
    gemini.script(Reply(body=blocked_prompt("PROHIBITED_CONTENT")))

    said = await console.say("/imagine model:gemini-3-pro a harbour", "y")

    assert (
        "The provider's safety filter blocked this request "
        "(the prompt asks for prohibited content); no credits were charged."
    ) in said
    assert await available(service) == 100


async def test_openai_moderation_charges_nothing(
    console: ScriptedConsole, service: ImagineService, openai_api: FakeOpenAI
) -> None:
    openai_api.then_error(
        400, "Your request was rejected by the safety system.", "moderation_blocked"
    )

    said = await console.say("/imagine model:gpt-image a harbour", "y")

    assert (
        "The provider's safety filter blocked this request "
        "(OpenAI's moderation refused the prompt); no credits were charged."
    ) in said
    assert await available(service) == 100


async def test_openai_images_are_saved_and_charged_at_the_model_quality(
    console: ScriptedConsole, service: ImagineService, openai_api: FakeOpenAI
) -> None:
    said = await console.say("/imagine model:gpt-image count:2 ar:3:2 a harbour", "y")

    assert "Done: 2 images for 16 credits." in said
    assert {call.body["quality"] for call in openai_api.calls} == {"high"}
    assert {call.body["size"] for call in openai_api.calls} == {"1536x1024"}
    assert await available(service) == 84


def calls_of(generation: Generation) -> list[tuple[int, int, str, int | None]]:
    """The generation's recorded provider calls as ``(image, attempt, outcome, status)``, by image."""
    assert generation.provider_attempts is not None
    for call in generation.provider_attempts:
        assert isinstance(call["seconds"], float | int) and call["seconds"] >= 0
    return sorted(
        (call["image"], call["attempt"], call["outcome"], call["status"])
        for call in generation.provider_attempts
    )


def attempts_counted(service: ImagineService, provider: str, outcome: str) -> float | None:
    return service.metrics.registry.get_sample_value(
        "imagine_provider_attempts_total", {"provider": provider, "outcome": outcome}
    )


async def test_a_rate_limited_call_and_its_retry_are_both_kept_on_the_generation(
    console: ScriptedConsole, service: ImagineService, openai_api: FakeOpenAI
) -> None:
    openai_api.then_error(429, "Rate limit reached for images per minute.", "rate_limit_exceeded")

    said = await console.say("/imagine model:gpt-image a harbour", "y")

    assert "Done: 1 image for 8 credits." in said
    assert calls_of(await last_generation(service)) == [
        (0, 1, "rate_limited", 429),
        (0, 2, "ok", 200),
    ]
    assert attempts_counted(service, "openai", "rate_limited") == 1
    assert attempts_counted(service, "openai", "ok") == 1


async def test_a_failed_generation_keeps_its_calls_too(
    console: ScriptedConsole, service: ImagineService, gemini: FakeGemini
) -> None:
    gemini.script(*[Reply(503, error_body(503, "UNAVAILABLE", "The model is overloaded."))] * 2)

    await console.say("/imagine model:gemini-3-pro count:2 a harbour", "y")

    generation = await last_generation(service)
    assert generation.status == GenerationStatus.FAILED
    assert calls_of(generation) == [(0, 1, "server_error", 503), (1, 1, "server_error", 503)]
    assert attempts_counted(service, "google", "server_error") == 2


@pytest.fixture
def short_openai_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_REQUEST_TIMEOUT_SECONDS", "0.3")


async def test_a_call_slower_than_its_timeout_is_made_once_and_the_credits_returned(
    short_openai_timeout: None,
    console: ScriptedConsole,
    service: ImagineService,
    openai_api: FakeOpenAI,
) -> None:
    openai_api.then_delay(5, times=3)

    said = await console.say("/imagine model:gpt-image a harbour", "y")

    assert (
        "The provider took too long to answer; try again, perhaps with fewer images; "
        "no credits were charged."
    ) in said
    assert len(openai_api.calls) == 1, "OpenAI may have made and billed the image"
    generation = await last_generation(service)
    assert (generation.status, generation.error_code) == (GenerationStatus.FAILED, "timeout")
    assert calls_of(generation) == [(0, 1, "timeout", None)]
    assert await available(service) == 100
