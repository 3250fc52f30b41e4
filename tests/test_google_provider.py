"""The google provider: the real google-genai SDK against a loopback fake of the Gemini API."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.registry import load_registry
from providers import PROVIDERS
from providers.base import ImageRequest, ProviderConfig, ReferenceImage, pixel_size
from providers.calls import AttemptLog, recording_attempts
from providers.errors import (
    BadRequest,
    ContentBlocked,
    NoImageReturned,
    ProviderError,
    ProviderNotConfigured,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from providers.google import GoogleProvider
from tests.fake_gemini import (
    API_KEY,
    FakeGemini,
    Reply,
    blocked_output,
    blocked_prompt,
    error_body,
    image_answer,
    jpeg,
    png,
    text_answer,
)

SHIPPED = load_registry(
    Path(__file__).resolve().parent.parent / "config" / "models.toml", PROVIDERS
)
GOOGLE_MODELS = [model for model in SHIPPED if model.provider == "google"]
EVERY_SHIPPED_SHAPE = [
    pytest.param(model, resolution, aspect, id=f"{model.id}-{resolution}-{aspect}")
    for model in GOOGLE_MODELS
    for resolution in model.resolutions
    for aspect in model.aspect_ratios
]

UNAVAILABLE = Reply(503, error_body(503, "UNAVAILABLE", "The model is overloaded."))
RATE_LIMITED = Reply(429, error_body(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted."))

MakeProvider = Callable[..., Awaitable[GoogleProvider]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with FakeGemini() as server:
        yield server


@pytest.fixture
async def make_provider(fake: FakeGemini) -> AsyncIterator[MakeProvider]:
    """Providers pointed at the fake, with retries fast enough for tests; closed afterwards."""
    built: list[GoogleProvider] = []

    async def make(**options: str) -> GoogleProvider:
        settings = {"retry_initial_delay_seconds": "0.01", "retry_max_delay_seconds": "0.02"}
        settings.update(options)
        provider = GoogleProvider(
            ProviderConfig(api_key=API_KEY, base_url=fake.base_url, options=settings)
        )
        built.append(provider)
        return provider

    yield make
    for provider in built:
        await provider.aclose()


@pytest.fixture
async def provider(make_provider: MakeProvider) -> GoogleProvider:
    return await make_provider()


def request(
    count: int = 1,
    *,
    resolution: str = "1K",
    aspect_ratio: str = "1:1",
    model: str = "gemini-3-pro-image",
    **fields: Any,
) -> ImageRequest:
    return ImageRequest(model, "a lighthouse at dusk", count, resolution, aspect_ratio, **fields)


def outcomes(calls: AttemptLog) -> list[tuple[int, int, str, int | None]]:
    """Each recorded call as ``(image, attempt, outcome, status)``; its seconds vary."""
    return [(call.image, call.attempt, call.outcome, call.status) for call in calls.attempts]


class Progress:
    def __init__(self) -> None:
        self.reports: list[tuple[int, int]] = []

    async def __call__(self, finished: int, total: int) -> None:
        self.reports.append((finished, total))


@pytest.mark.parametrize(("model", "resolution", "aspect_ratio"), EVERY_SHIPPED_SHAPE)
async def test_every_shipped_shape_is_asked_for_and_served(
    fake: FakeGemini, provider: GoogleProvider, model: Any, resolution: str, aspect_ratio: str
) -> None:
    result = await provider.generate(
        request(
            resolution=resolution,
            aspect_ratio=aspect_ratio,
            model=model.provider_model,
            options=model.provider_options,
        ),
        Progress(),
    )

    [call] = fake.calls
    assert call.model == model.provider_model
    assert call.prompt == "a lighthouse at dusk"
    assert call.generation_config["responseModalities"] == ["IMAGE"]
    sends_size = model.provider_options.get("image_size", True)
    expected_config = {"aspectRatio": aspect_ratio} | (
        {"imageSize": resolution} if sends_size else {}
    )
    assert call.image_config == expected_config
    [image] = result.images
    assert (image.width, image.height) == pixel_size(
        resolution if sends_size else "1K", aspect_ratio
    )
    assert image.mime_type == "image/png"
    assert image.data.startswith(b"\x89PNG")


async def test_a_model_that_takes_no_image_config_gets_none(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    await provider.generate(
        request(options={"image_size": False, "aspect_ratio": False}), Progress()
    )

    assert fake.calls[0].image_config is None


async def test_each_image_is_its_own_call_with_one_candidate(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    result = await provider.generate(request(3), Progress())

    assert len(result.images) == 3
    assert len(fake.calls) == 3
    assert all("candidateCount" not in call.generation_config for call in fake.calls)


async def test_progress_is_reported_after_every_image(provider: GoogleProvider) -> None:
    progress = Progress()

    await provider.generate(request(3), progress)

    assert progress.reports == [(1, 3), (2, 3), (3, 3)]


async def test_reference_images_arrive_decoded_after_the_prompt(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    references = (
        ReferenceImage(png(40, 30), "image/png"),
        ReferenceImage(jpeg(20, 20) + b"\xfb\xff", "image/jpeg"),
    )

    await provider.generate(request(reference_images=references), Progress())

    call = fake.calls[0]
    assert "text" in call.parts[0]
    assert call.reference_images == [(ref.mime_type, ref.data) for ref in references]


async def test_thought_parts_are_skipped_for_the_final_image(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(Reply(body=image_answer(1024, 576, thought_first=True)))

    result = await provider.generate(request(aspect_ratio="16:9"), Progress())

    assert [(image.width, image.height) for image in result.images] == [(1024, 576)]


async def test_a_jpeg_answer_is_kept_as_jpeg(fake: FakeGemini, provider: GoogleProvider) -> None:
    fake.script(Reply(body=image_answer(1024, 1024, data=jpeg(1024, 1024), mime_type="image/jpeg")))

    [image] = (await provider.generate(request(), Progress())).images

    assert image.mime_type == "image/jpeg"
    assert image.data.startswith(b"\xff\xd8")


@pytest.mark.parametrize(
    ("block_reason", "words"),
    [
        ("SAFETY", "the prompt was flagged as unsafe"),
        ("PROHIBITED_CONTENT", "the prompt asks for prohibited content"),
        ("BLOCKLIST", "the prompt contains a blocked term"),
        ("IMAGE_SAFETY", "a reference image was flagged as unsafe"),
        ("JAILBREAK", "the prompt looked like an attempt to get around the safety rules"),
        ("OTHER", "the prompt was refused"),
    ],
)
async def test_a_blocked_prompt_is_content_blocked_in_words(
    fake: FakeGemini, provider: GoogleProvider, block_reason: str, words: str
) -> None:
    fake.script(Reply(body=blocked_prompt(block_reason)))

    with pytest.raises(ContentBlocked) as blocked:
        await provider.generate(request(), Progress())

    assert blocked.value.reason == words


@pytest.mark.parametrize(
    ("finish_reason", "words"),
    [
        ("IMAGE_SAFETY", "the picture it made was flagged as unsafe"),
        ("IMAGE_PROHIBITED_CONTENT", "the picture would show prohibited content"),
        ("SAFETY", "the answer was flagged as unsafe"),
        ("PROHIBITED_CONTENT", "the answer would show prohibited content"),
        ("IMAGE_RECITATION", "the picture was too close to an existing work"),
        ("RECITATION", "the picture was too close to an existing work"),
        ("SPII", "the answer would reveal personal information"),
        ("IMAGE_OTHER", "the model could not draw this prompt"),
    ],
)
async def test_a_blocked_output_is_content_blocked_in_words(
    fake: FakeGemini, provider: GoogleProvider, finish_reason: str, words: str
) -> None:
    fake.script(Reply(body=blocked_output(finish_reason)))

    with pytest.raises(ContentBlocked) as blocked:
        await provider.generate(request(), Progress())

    assert blocked.value.reason == words


async def test_no_image_is_an_answer_without_a_picture_not_a_safety_block(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(Reply(body=blocked_output("NO_IMAGE")))

    with pytest.raises(NoImageReturned) as no_image:
        await provider.generate(request(), Progress())

    assert no_image.value.detail == "the model returned no image"


async def test_a_text_only_answer_says_what_the_model_replied(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(Reply(body=text_answer("I can only describe lighthouses, not draw them.")))

    with pytest.raises(NoImageReturned) as no_image:
        await provider.generate(request(), Progress())

    assert "I can only describe lighthouses, not draw them." in no_image.value.detail


async def test_a_stop_with_nothing_in_it_is_no_image(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(Reply(body=blocked_output("STOP")))

    with pytest.raises(NoImageReturned, match="STOP"):
        await provider.generate(request(), Progress())


async def test_unreadable_image_bytes_are_no_image(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(Reply(body=image_answer(1, 1, data=b"not a picture at all")))

    with pytest.raises(NoImageReturned, match="cannot be read"):
        await provider.generate(request(), Progress())


async def test_a_429_is_retried_and_then_succeeds(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(RATE_LIMITED)

    result = await provider.generate(request(), Progress())

    assert len(result.images) == 1
    assert len(fake.calls) == 2


async def test_429_every_time_is_rate_limited_after_the_last_attempt(
    fake: FakeGemini, make_provider: MakeProvider
) -> None:
    provider = await make_provider(max_attempts="3")
    fake.script(RATE_LIMITED, RATE_LIMITED, RATE_LIMITED)

    with pytest.raises(RateLimited):
        await provider.generate(request(), Progress())

    assert len(fake.calls) == 3


async def test_503_every_time_is_unavailable_after_the_last_attempt(
    fake: FakeGemini, make_provider: MakeProvider
) -> None:
    provider = await make_provider(max_attempts="4")
    fake.script(*[UNAVAILABLE] * 4)

    with pytest.raises(ProviderUnavailable, match="503"):
        await provider.generate(request(), Progress())

    assert len(fake.calls) == 4


async def test_a_400_is_a_bad_request_and_is_not_retried(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(Reply(400, error_body(400, "INVALID_ARGUMENT", "Unsupported aspect ratio: 7:3.")))

    with pytest.raises(BadRequest, match=r"Unsupported aspect ratio: 7:3\."):
        await provider.generate(request(), Progress())

    assert len(fake.calls) == 1


async def test_an_unknown_model_is_a_bad_request_naming_it(provider: GoogleProvider) -> None:
    with pytest.raises(BadRequest, match="gemini-9"):
        await provider.generate(request(model="gemini-9"), Progress())


async def test_a_wrong_api_key_says_which_variable_to_check(fake: FakeGemini) -> None:
    provider = GoogleProvider(ProviderConfig(api_key="wrong", base_url=fake.base_url))
    try:
        with pytest.raises(ProviderNotConfigured, match="GEMINI_API_KEY"):
            await provider.generate(request(), Progress())
    finally:
        await provider.aclose()


async def test_a_slow_answer_times_out_at_the_time_limit(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(Reply(delay_seconds=30))

    with pytest.raises(ProviderTimeout):
        await provider.generate(request(time_limit_seconds=0.2), Progress())


async def test_a_slow_answer_times_out_at_the_request_timeout_and_is_never_sent_again(
    fake: FakeGemini, make_provider: MakeProvider
) -> None:
    provider = await make_provider(request_timeout_seconds="0.2", max_attempts="3")
    fake.script(*[Reply(delay_seconds=30)] * 3)

    with recording_attempts() as calls, pytest.raises(ProviderTimeout):
        await provider.generate(request(), Progress())

    assert len(fake.calls) == 1, "Google may have made and billed the image"
    assert outcomes(calls) == [(0, 1, "timeout", None)]


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateway_that_lost_google_mid_call_is_not_sent_again(
    fake: FakeGemini, make_provider: MakeProvider, status: int
) -> None:
    provider = await make_provider(max_attempts="3")
    fake.script(*[Reply(status, error_body(status, "UNAVAILABLE", "upstream went away"))] * 3)

    with pytest.raises(ProviderUnavailable):
        await provider.generate(request(), Progress())

    assert len(fake.calls) == 1


async def test_a_429_then_an_image_is_recorded_as_two_calls(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(RATE_LIMITED)

    with recording_attempts() as calls:
        await provider.generate(request(), Progress())

    assert outcomes(calls) == [(0, 1, "rate_limited", 429), (0, 2, "ok", 200)]


async def test_an_unreachable_host_is_unavailable() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    provider = GoogleProvider(
        ProviderConfig(
            api_key=API_KEY, base_url=f"http://127.0.0.1:{port}", options={"max_attempts": "1"}
        )
    )
    try:
        with pytest.raises(ProviderUnavailable, match="could not be reached"):
            await provider.generate(request(), Progress())
    finally:
        await provider.aclose()


async def test_a_partial_success_keeps_the_images_that_worked(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(Reply(body=blocked_output("IMAGE_SAFETY")))

    result = await provider.generate(request(4), Progress())

    assert len(result.images) == 3
    [failure] = result.failures
    assert isinstance(failure, ContentBlocked)


async def test_images_still_running_at_the_time_limit_fail_and_the_rest_are_kept(
    fake: FakeGemini, provider: GoogleProvider
) -> None:
    fake.script(Reply(delay_seconds=30))

    result = await provider.generate(request(3, time_limit_seconds=1.0), Progress())

    assert len(result.images) == 2
    [failure] = result.failures
    assert isinstance(failure, ProviderTimeout)


async def test_calls_in_flight_never_exceed_the_concurrency_limit(
    fake: FakeGemini, make_provider: MakeProvider
) -> None:
    provider = await make_provider(concurrency="2")
    fake.script(*[Reply(delay_seconds=0.05)] * 8)

    results = await asyncio.gather(
        provider.generate(request(4), Progress()), provider.generate(request(4), Progress())
    )

    assert [len(result.images) for result in results] == [4, 4]
    assert fake.most_in_flight == 2


async def test_calls_run_concurrently_up_to_the_limit(
    fake: FakeGemini, make_provider: MakeProvider
) -> None:
    provider = await make_provider(concurrency="4")
    fake.script(*[Reply(delay_seconds=0.1)] * 4)

    await provider.generate(request(4), Progress())

    assert fake.most_in_flight == 4


@pytest.mark.parametrize(("api_version", "path_version"), [(None, "v1"), ("v1beta", "v1beta")])
async def test_the_api_version_setting_picks_the_path(
    fake: FakeGemini, make_provider: MakeProvider, api_version: str | None, path_version: str
) -> None:
    provider = await make_provider(**({"api_version": api_version} if api_version else {}))

    await provider.generate(request(), Progress())

    assert fake.calls[0].version == path_version


async def test_missing_models_names_only_the_ids_google_does_not_offer(
    provider: GoogleProvider,
) -> None:
    missing = await provider.missing_models(["gemini-3-pro-image", "gemini-2.0-imaginary"])

    assert missing == {
        "gemini-2.0-imaginary": "Google does not offer the model 'gemini-2.0-imaginary'"
    }


async def test_missing_models_raises_when_google_cannot_be_asked(fake: FakeGemini) -> None:
    provider = GoogleProvider(ProviderConfig(api_key="wrong", base_url=fake.base_url))
    try:
        with pytest.raises(ProviderError, match="GEMINI_API_KEY"):
            await provider.missing_models(["gemini-3-pro-image"])
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"concurrency": "none"}, "concurrency"),
        ({"concurrency": "0"}, "concurrency"),
        ({"max_attempts": "11"}, "max_attempts"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_settings_are_refused_naming_the_option(options: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        GoogleProvider(ProviderConfig(api_key=API_KEY, options=options))


def test_no_api_key_says_which_variable_to_set() -> None:
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        GoogleProvider(ProviderConfig())
