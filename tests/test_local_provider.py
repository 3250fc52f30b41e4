"""The offline `local` provider makes real, deterministic PNGs of the requested size."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace

import pytest
from PIL import Image, ImageStat

from providers import PROVIDERS
from providers.base import ImageRequest, ProviderConfig, ReferenceImage, pixel_size
from providers.errors import ProviderTimeout
from providers.local import LocalProvider

ASPECT_RATIOS = ["1:1", "9:16", "16:9", "3:2", "2:3"]


def request(
    prompt: str = "a lighthouse at dusk",
    count: int = 1,
    resolution: str = "1K",
    aspect: str = "16:9",
    provider_model: str = "procedural-v1",
    reference_images: tuple[ReferenceImage, ...] = (),
) -> ImageRequest:
    return ImageRequest(provider_model, prompt, count, resolution, aspect, reference_images)


async def ignore_progress(finished: int, total: int) -> None:
    return None


async def generate(provider: LocalProvider, image_request: ImageRequest) -> list[bytes]:
    result = await provider.generate(image_request, ignore_progress)
    return [image.data for image in result.images]


def mean_brightness(png: bytes) -> float:
    with Image.open(io.BytesIO(png)) as decoded:
        return ImageStat.Stat(decoded.convert("L")).mean[0]


@pytest.fixture
def provider() -> LocalProvider:
    return LocalProvider(ProviderConfig())


@pytest.mark.parametrize(
    ("resolution", "aspect"),
    [
        *[("1K", aspect) for aspect in ASPECT_RATIOS],
        *[("2K", aspect) for aspect in ASPECT_RATIOS],
        # One 4K case: it is the slow one, and the size rule is the same.
        ("4K", "16:9"),
    ],
)
async def test_images_are_pngs_of_exactly_the_requested_size(
    provider: LocalProvider, resolution: str, aspect: str
) -> None:
    size = pixel_size(resolution, aspect)
    result = await provider.generate(request(resolution=resolution, aspect=aspect), ignore_progress)
    [image] = result.images
    assert (image.mime_type, image.width, image.height) == ("image/png", *size)
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert (decoded.format, decoded.size) == ("PNG", size)


async def test_a_request_makes_as_many_images_as_asked_and_no_failures(
    provider: LocalProvider,
) -> None:
    result = await provider.generate(request(count=3), ignore_progress)
    assert len(result.images) == 3
    assert result.failures == ()


async def test_the_same_prompt_gives_the_same_picture(provider: LocalProvider) -> None:
    assert await generate(provider, request()) == await generate(provider, request())


async def test_different_prompts_give_different_pictures(provider: LocalProvider) -> None:
    assert await generate(provider, request("a fox")) != await generate(provider, request("a cat"))


async def test_images_of_one_request_differ_from_each_other(provider: LocalProvider) -> None:
    first, second = await generate(provider, request(count=2))
    assert first != second


async def test_each_image_is_the_same_as_the_same_image_of_a_smaller_request(
    provider: LocalProvider,
) -> None:
    [alone] = await generate(provider, request(count=1))
    first, _ = await generate(provider, request(count=2))
    assert alone == first


async def test_another_provider_model_gives_another_picture(provider: LocalProvider) -> None:
    assert await generate(provider, request(provider_model="procedural-v1")) != await generate(
        provider, request(provider_model="procedural-v2")
    )


async def test_reference_images_are_ignored(provider: LocalProvider) -> None:
    reference = ReferenceImage(b"not even an image", "image/png")
    assert await generate(provider, request(reference_images=(reference,))) == await generate(
        provider, request()
    )


async def test_colour_words_in_the_prompt_tint_the_picture(provider: LocalProvider) -> None:
    [snow] = await generate(provider, request("snow"))
    [night] = await generate(provider, request("night"))
    assert mean_brightness(snow) > mean_brightness(night) + 60


async def test_progress_is_reported_after_each_image(provider: LocalProvider) -> None:
    reported: list[tuple[int, int]] = []

    async def record(finished: int, total: int) -> None:
        reported.append((finished, total))

    await provider.generate(request(count=3), record)
    assert reported == [(1, 3), (2, 3), (3, 3)]


async def test_drawing_does_not_block_the_event_loop(provider: LocalProvider) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await provider.generate(request(), ignore_progress)
    ticking.cancel()
    # Had the drawing run on the loop, the ticker would not have started before it ended.
    assert ticks > 1


async def test_a_delay_option_is_awaited_before_each_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(seconds: float) -> None:
        events.append(f"slept {seconds}")
        await real_sleep(0)

    async def record(finished: int, total: int) -> None:
        events.append(f"image {finished}/{total}")

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    slow = LocalProvider(ProviderConfig(options={"delay_seconds": "2.5"}))
    await slow.generate(request(count=2), record)
    assert events == ["slept 2.5", "image 1/2", "slept 2.5", "image 2/2"]


async def test_without_a_delay_option_nothing_waits(
    provider: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    await provider.generate(request(count=2), ignore_progress)
    assert slept == []


@pytest.mark.parametrize("delay", ["soon", "", "-1", "nan", "inf"])
def test_a_bad_delay_option_is_refused_by_name(delay: str) -> None:
    with pytest.raises(ValueError, match="delay_seconds"):
        LocalProvider(ProviderConfig(options={"delay_seconds": delay}))


def test_the_provider_is_built_through_its_registration() -> None:
    built = PROVIDERS["local"].build(ProviderConfig())
    assert isinstance(built, LocalProvider)
    assert built.name == "local"


@pytest.mark.parametrize(
    ("resolution", "aspect", "size"),
    [
        ("1K", "1:1", (1024, 1024)),
        ("2K", "16:9", (2048, 1152)),
        ("1K", "9:16", (576, 1024)),
        ("1K", "3:2", (1024, 688)),
        ("2K", "2:3", (1360, 2048)),
        ("4K", "16:9", (4096, 2304)),
    ],
)
def test_pixel_size_scales_the_long_side_and_keeps_the_ratio(
    resolution: str, aspect: str, size: tuple[int, int]
) -> None:
    assert pixel_size(resolution, aspect) == size


@pytest.mark.parametrize(
    ("resolution", "aspect"), [("1080p", "1:1"), ("1K", "wide"), ("1K", "0:1")]
)
def test_pixel_size_refuses_what_is_not_a_size(resolution: str, aspect: str) -> None:
    with pytest.raises(ValueError):
        pixel_size(resolution, aspect)


async def test_at_the_time_limit_the_finished_images_are_kept_and_the_rest_time_out() -> None:
    slow = LocalProvider(ProviderConfig(options={"delay_seconds": "0.2"}))
    # 20 images take at least 4 s; in 2 s even a busy machine draws one.
    limited = replace(request(count=20), time_limit_seconds=2)

    result = await slow.generate(limited, ignore_progress)

    assert 0 < len(result.images) < 20
    [late] = result.failures
    assert isinstance(late, ProviderTimeout)


async def test_a_request_with_no_image_ready_at_the_time_limit_times_out() -> None:
    slow = LocalProvider(ProviderConfig(options={"delay_seconds": "5"}))

    with pytest.raises(ProviderTimeout):
        await slow.generate(replace(request(), time_limit_seconds=0.1), ignore_progress)
