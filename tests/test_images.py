"""Fitting images to a platform's upload limit."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from bot.images import TooLargeToSend, fit_within
from providers.base import GeneratedImage


def noisy_png(width: int, height: int) -> GeneratedImage:
    """Random pixels: a PNG that compresses badly, as large as photos get."""
    picture = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return GeneratedImage(buffer.getvalue(), "image/png", width, height)


async def test_an_image_within_the_limit_is_sent_as_it_is() -> None:
    image = noisy_png(64, 64)

    assert await fit_within(image, len(image.data)) is image


async def test_an_image_over_the_limit_becomes_a_jpeg_that_fits() -> None:
    image = noisy_png(512, 512)
    limit = len(image.data) // 2

    fitted = await fit_within(image, limit)

    assert len(fitted.data) <= limit
    assert fitted.mime_type == "image/jpeg"
    with Image.open(io.BytesIO(fitted.data)) as decoded:
        assert (decoded.format, decoded.size) == ("JPEG", (fitted.width, fitted.height))


async def test_an_image_is_scaled_down_when_quality_alone_is_not_enough() -> None:
    image = noisy_png(512, 512)

    fitted = await fit_within(image, 20_000)

    assert len(fitted.data) <= 20_000
    assert fitted.width < 512
    assert fitted.width == fitted.height


async def test_a_limit_nothing_can_fit_is_refused() -> None:
    with pytest.raises(TooLargeToSend):
        await fit_within(noisy_png(256, 256), 100)
