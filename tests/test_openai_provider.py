"""The ``openai`` provider drives the real SDK against a loopback fake of OpenAI's API."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from providers import PROVIDERS
from providers.base import ImageRequest, OptionValue, ProviderConfig, ReferenceImage
from providers.calls import AttemptLog, recording_attempts
from providers.errors import (
    BadRequest,
    ContentBlocked,
    ProviderError,
    ProviderNotConfigured,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from providers.openai_images import OpenAIProvider
from tests.fake_openai import API_KEY, FakeOpenAI

MODEL = "gpt-image-2"
PROMPT = "a lighthouse at dusk"


def request(
    count: int = 1,
    aspect: str = "1:1",
    reference_images: tuple[ReferenceImage, ...] = (),
    options: dict[str, OptionValue] | None = None,
    time_limit_seconds: float | None = None,
) -> ImageRequest:
    return ImageRequest(
        MODEL,
        PROMPT,
        count,
        "1K",
        aspect,
        reference_images,
        {"quality": "medium"} if options is None else options,
        time_limit_seconds,
    )


class Progress:
    """Records every ``(finished, total)`` report."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, int]] = []

    async def __call__(self, finished: int, total: int) -> None:
        self.reports.append((finished, total))


async def ignore_progress(finished: int, total: int) -> None:
    return None


def png(size: tuple[int, int], colour: tuple[int, int, int], image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=image_format)
    return buffer.getvalue()


def outcomes(calls: AttemptLog) -> list[tuple[int, int, str, int | None]]:
    """Each recorded call as ``(image, attempt, outcome, status)``; its seconds vary."""
    return [(call.image, call.attempt, call.outcome, call.status) for call in calls.attempts]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@contextlib.asynccontextmanager
async def openai_provider(
    fake: FakeOpenAI, api_key: str = API_KEY, **options: str
) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(ProviderConfig(api_key, fake.base_url, options))
    try:
        yield provider
    finally:
        await provider.aclose()


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    async with openai_provider(fake) as built:
        yield built


@pytest.mark.parametrize(
    ("aspect", "size"),
    [
        ("3:2", "1536x1024"),
        ("16:9", "1536x1024"),
        ("2:3", "1024x1536"),
        ("9:16", "1024x1536"),
        ("1:1", "1024x1024"),
    ],
)
async def test_an_image_is_generated_at_the_size_of_the_aspect_ratios_orientation(
    fake: FakeOpenAI, provider: OpenAIProvider, aspect: str, size: str
) -> None:
    result = await provider.generate(request(aspect=aspect), ignore_progress)

    [call] = fake.calls
    assert call.path == "/v1/images/generations"
    assert call.body == {
        "model": MODEL,
        "prompt": PROMPT,
        "n": 1,
        "size": size,
        "quality": "medium",
        "output_format": "png",
    }
    [image] = result.images
    width, height = (int(side) for side in size.split("x"))
    assert (image.mime_type, image.width, image.height) == ("image/png", width, height)
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert (decoded.format, decoded.size) == ("PNG", (width, height))
    assert result.failures == ()


async def test_quality_is_left_to_openai_when_the_model_sets_none(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    await provider.generate(request(options={}), ignore_progress)

    [call] = fake.calls
    assert "quality" not in call.body


async def test_reference_images_are_uploaded_unchanged_to_the_edits_endpoint(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    references = (
        ReferenceImage(png((64, 48), (200, 40, 50)), "image/png"),
        ReferenceImage(png((32, 32), (60, 160, 80), "JPEG"), "image/jpeg"),
    )

    result = await provider.generate(
        request(aspect="2:3", reference_images=references), ignore_progress
    )

    [call] = fake.calls
    assert call.path == "/v1/images/edits"
    assert call.body == {
        "model": MODEL,
        "prompt": PROMPT,
        "n": "1",
        "size": "1024x1536",
        "quality": "medium",
        "output_format": "png",
    }
    assert [(upload.field, upload.content_type, upload.data) for upload in call.uploads] == [
        ("image[]", "image/png", references[0].data),
        ("image[]", "image/jpeg", references[1].data),
    ]
    [image] = result.images
    assert (image.width, image.height) == (1024, 1536)


async def test_a_moderation_refusal_is_content_blocked_and_returns_nothing(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.then_error(400, "Your request was rejected by the safety system.", "moderation_blocked")

    with pytest.raises(ContentBlocked) as blocked:
        await provider.generate(request(), ignore_progress)

    assert blocked.value.reason == "OpenAI's moderation refused the prompt"
    assert len(fake.calls) == 1, "a refusal is final, not retried"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "invalid_value", BadRequest),
        (404, "model_not_found", BadRequest),
        (422, None, BadRequest),
        (403, None, ProviderNotConfigured),
        (429, "rate_limit_exceeded", RateLimited),
        (500, None, ProviderUnavailable),
    ],
)
async def test_each_http_error_becomes_its_provider_error(
    fake: FakeOpenAI, status: int, code: str | None, expected: type[ProviderError]
) -> None:
    fake.then_error(status, "OpenAI's explanation", code)

    async with openai_provider(fake, max_retries="0") as provider:
        with pytest.raises(ProviderError) as raised:
            await provider.generate(request(), ignore_progress)

    assert type(raised.value) is expected


async def test_a_bad_request_carries_openais_message_cut_to_a_readable_length(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.then_error(400, "Invalid size. " + "Supported sizes are listed in the docs. " * 20)

    with pytest.raises(BadRequest) as raised:
        await provider.generate(request(), ignore_progress)

    assert raised.value.detail.startswith("Invalid size. Supported sizes")
    assert len(raised.value.detail) <= 200
    assert raised.value.detail.endswith("…")


async def test_a_rate_limit_is_retried_by_the_sdk_and_then_succeeds(
    fake: FakeOpenAI,
) -> None:
    fake.then_error(429, "Rate limit reached for images per minute.", "rate_limit_exceeded")

    async with openai_provider(fake, max_retries="1") as provider:
        result = await provider.generate(request(), ignore_progress)

    assert len(result.images) == 1
    assert len(fake.calls) == 2


async def test_an_overloaded_openai_is_unavailable_after_every_retry(fake: FakeOpenAI) -> None:
    fake.then_error(503, "The engine is currently overloaded.", times=10)

    async with openai_provider(fake, max_retries="2") as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.generate(request(), ignore_progress)

    assert len(fake.calls) == 3


async def test_an_unreachable_openai_is_unavailable() -> None:
    async with FakeOpenAI() as stopped:
        pass  # its port is now closed: connections are refused

    async with openai_provider(stopped, max_retries="0") as provider:
        with pytest.raises(ProviderUnavailable, match="could not reach OpenAI"):
            await provider.generate(request(), ignore_progress)


async def test_an_answer_slower_than_the_time_limit_is_a_timeout(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.then_delay(5)
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(ProviderTimeout):
        await provider.generate(request(time_limit_seconds=0.2), ignore_progress)

    assert loop.time() - started < 1


async def test_a_call_slower_than_the_request_timeout_is_a_timeout_never_sent_again(
    fake: FakeOpenAI,
) -> None:
    fake.then_delay(5, times=3)

    async with openai_provider(fake, request_timeout_seconds="0.2", max_retries="2") as provider:
        with recording_attempts() as calls, pytest.raises(ProviderTimeout):
            await provider.generate(request(), ignore_progress)

    assert len(fake.calls) == 1, "OpenAI may have made and billed the image"
    assert outcomes(calls) == [(0, 1, "timeout", None)]


async def test_a_connection_broken_after_the_request_was_sent_is_not_sent_again(
    fake: FakeOpenAI,
) -> None:
    fake.then_hang_up(times=3)

    async with openai_provider(fake, max_retries="2") as provider:
        with recording_attempts() as calls, pytest.raises(ProviderUnavailable):
            await provider.generate(request(), ignore_progress)

    assert len(fake.calls) == 1
    assert outcomes(calls) == [(0, 1, "connection_lost", None)]


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateway_that_lost_openai_mid_call_is_not_sent_again(
    fake: FakeOpenAI, status: int
) -> None:
    fake.then_error(status, "upstream went away", times=3)

    async with openai_provider(fake, max_retries="2") as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.generate(request(), ignore_progress)

    assert len(fake.calls) == 1


@pytest.mark.parametrize(
    ("status", "outcome"), [(429, "rate_limited"), (408, "refused"), (500, "server_error")]
)
async def test_an_answer_that_made_nothing_is_retried_and_each_call_recorded(
    fake: FakeOpenAI, status: int, outcome: str
) -> None:
    fake.then_error(status, "not now")

    async with openai_provider(fake, max_retries="2") as provider:
        with recording_attempts() as calls:
            result = await provider.generate(request(), ignore_progress)

    assert len(result.images) == 1
    assert outcomes(calls) == [(0, 1, outcome, status), (0, 2, "ok", 200)]
    assert all(call.seconds >= 0 for call in calls.attempts)


async def test_the_calls_of_each_image_are_numbered_apart(fake: FakeOpenAI) -> None:
    fake.then_delay(0.05)
    fake.then_error(503, "The engine is currently overloaded.")

    async with openai_provider(fake, max_retries="1") as provider:
        with recording_attempts() as calls:
            await provider.generate(request(count=2), ignore_progress)

    # Either image's call may reach the fake first and meet the 503.
    by_image = {
        image: [
            (attempt, outcome) for index, attempt, outcome, _ in outcomes(calls) if index == image
        ]
        for image in (0, 1)
    }
    assert sorted(by_image.values()) == [[(1, "ok")], [(1, "server_error"), (2, "ok")]]


async def test_a_refused_connection_is_tried_again_as_nothing_was_sent() -> None:
    async with FakeOpenAI() as stopped:
        pass  # its port is now closed: connections are refused

    async with openai_provider(stopped, max_retries="1") as provider:
        with recording_attempts() as calls, pytest.raises(ProviderUnavailable):
            await provider.generate(request(), ignore_progress)

    assert outcomes(calls) == [(0, 1, "unreachable", None), (0, 2, "unreachable", None)]


async def test_an_answer_without_image_data_is_unavailable_not_a_crash(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.then_no_image()

    with pytest.raises(ProviderUnavailable, match="without image data"):
        await provider.generate(request(), ignore_progress)


async def test_one_failed_call_of_four_keeps_the_other_three_images(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.then_succeed()
    fake.then_error(400, "Invalid prompt.")
    progress = Progress()

    result = await provider.generate(request(count=4), progress)

    assert len(fake.calls) == 4
    assert len(result.images) == 3
    assert [type(failure) for failure in result.failures] == [BadRequest]
    assert progress.reports == [(1, 4), (2, 4), (3, 4), (4, 4)]


async def test_no_more_calls_than_the_concurrency_run_at_once(fake: FakeOpenAI) -> None:
    fake.then_delay(0.05, times=6)

    async with openai_provider(fake, concurrency="2") as provider:
        result = await provider.generate(request(count=6), ignore_progress)

    assert len(result.images) == 6
    assert fake.max_in_flight == 2


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"concurrency": "0"}, "concurrency"),
        ({"request_timeout_seconds": "soon"}, "request_timeout_seconds"),
        ({"max_retries": "-1"}, "max_retries"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        OpenAIProvider(ProviderConfig(API_KEY, options=options))


def test_a_missing_api_key_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIProvider(ProviderConfig())


async def test_the_registration_builds_this_provider_with_its_concurrency(
    fake: FakeOpenAI,
) -> None:
    built = PROVIDERS["openai"].build(ProviderConfig(API_KEY, fake.base_url, {"concurrency": "2"}))
    try:
        assert isinstance(built, OpenAIProvider)
        fake.then_delay(0.05, times=3)
        await built.generate(request(count=3), ignore_progress)
    finally:
        await built.aclose()

    assert fake.max_in_flight == 2


async def test_missing_models_names_only_the_models_openai_does_not_offer(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    missing = await provider.missing_models(["gpt-image-2", "gpt-image-9", "gpt-image-1-mini"])

    assert missing == {"gpt-image-9": "OpenAI does not offer the model 'gpt-image-9'"}
    assert sorted(call.path for call in fake.calls) == [
        "/v1/models/gpt-image-1-mini",
        "/v1/models/gpt-image-2",
        "/v1/models/gpt-image-9",
    ]


async def test_missing_models_raises_when_openai_cannot_be_asked(fake: FakeOpenAI) -> None:
    fake.then_error(503, "The server is overloaded.", times=2)

    async with openai_provider(fake, max_retries="0") as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.missing_models(["gpt-image-2", "gpt-image-1.5"])


async def test_a_refused_api_key_is_not_configured(fake: FakeOpenAI) -> None:
    async with openai_provider(fake, api_key="sk-wrong") as provider:
        with pytest.raises(ProviderNotConfigured, match="OPENAI_API_KEY"):
            await provider.generate(request(), ignore_progress)

    assert len(fake.calls) == 1, "a refused key is not retried"
