"""The offline `local` provider makes real, deterministic PNGs of the requested size."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from providers import PROVIDERS
from providers.base import ImageRequest, ProviderConfig, pixel_size
from providers.local import LocalProvider


def request(
    prompt: str = "a lighthouse at dusk",
    count: int = 1,
    resolution: str = "1K",
    aspect: str = "1:1",
) -> ImageRequest:
    return ImageRequest("procedural-v1", prompt, count, resolution, aspect)


async def ignore_progress(finished: int, total: int) -> None:
    return None


async def generate(provider: LocalProvider, image_request: ImageRequest) -> list[bytes]:
    result = await provider.generate(image_request, ignore_progress)
    return [image.data for image in result.images]


@pytest.fixture
def provider() -> LocalProvider:
    return LocalProvider(ProviderConfig())


@pytest.mark.parametrize(
    ("resolution", "aspect", "size"),
    [
        ("1K", "1:1", (1024, 1024)),
        ("1K", "9:16", (576, 1024)),
        ("1K", "16:9", (1024, 576)),
        ("2K", "16:9", (2048, 1152)),
        ("2K", "3:2", (2048, 1360)),
        ("2K", "2:3", (1360, 2048)),
        ("4K", "1:1", (4096, 4096)),
    ],
)
async def test_images_are_pngs_of_exactly_the_requested_size(
    provider: LocalProvider, resolution: str, aspect: str, size: tuple[int, int]
) -> None:
    result = await provider.generate(request(resolution=resolution, aspect=aspect), ignore_progress)
    [image] = result.images
    assert (image.mime_type, image.width, image.height) == ("image/png", *size)
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert (decoded.format, decoded.size) == ("PNG", size)


async def test_a_request_makes_as_many_images_as_asked(provider: LocalProvider) -> None:
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
    await provider.generate(request(resolution="2K"), ignore_progress)
    ticking.cancel()
    assert ticks > 1


async def test_a_delay_option_waits_before_each_image_without_blocking() -> None:
    slow = LocalProvider(ProviderConfig(options={"delay_seconds": "60"}))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow.generate(request(), ignore_progress), timeout=0.05)


@pytest.mark.parametrize("delay", ["soon", "-1", "nan"])
def test_a_bad_delay_option_is_refused_by_name(delay: str) -> None:
    with pytest.raises(ValueError, match="delay_seconds"):
        LocalProvider(ProviderConfig(options={"delay_seconds": delay}))


def test_the_provider_is_built_through_its_registration() -> None:
    assert isinstance(PROVIDERS["local"].build(ProviderConfig()), LocalProvider)


@pytest.mark.parametrize(
    ("resolution", "aspect", "size"),
    [
        ("1K", "1:1", (1024, 1024)),
        ("2K", "16:9", (2048, 1152)),
        ("1K", "9:16", (576, 1024)),
        ("4K", "21:9", (4096, 1760)),
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
