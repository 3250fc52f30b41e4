"""The rule for attached reference images (bot/references.py): what is refused, and what is sent."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageCms
from PIL.PngImagePlugin import PngInfo

from bot import messages, references
from bot.errors import RequestError
from bot.references import MAX_BYTES, MAX_PIXELS, check_attachment, clean, prepare
from providers.base import ReferenceImage
from tests.fakes import one_colour_png


def encoded(image_format: str, size: tuple[int, int] = (40, 20), **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def exif_with(**tags: object) -> Image.Exif:
    exif = Image.Exif()
    for name, value in tags.items():
        exif[ExifTags.Base[name]] = value
    return exif


def refusal(filename: str, claimed_type: str, data: bytes) -> str:
    with pytest.raises(RequestError) as refused:
        clean(filename, claimed_type, data)
    return refused.value.message


def reopened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- before the download ----------------------------------------------------------


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "image/webp", "IMAGE/PNG"])
def test_png_jpeg_and_webp_attachments_are_downloaded(content_type: str) -> None:
    assert check_attachment("a.png", content_type, 1000) == content_type.lower()


@pytest.mark.parametrize("content_type", ["application/pdf", "image/gif", "", None])
def test_an_attachment_that_is_not_an_image_says_what_to_attach(content_type: str | None) -> None:
    with pytest.raises(RequestError) as refused:
        check_attachment("notes.pdf", content_type, 1000)

    assert refused.value.message == messages.reference_not_an_image("notes.pdf")


def test_an_attachment_over_the_size_limit_says_how_large_it_may_be() -> None:
    with pytest.raises(RequestError, match="up to 10 MB"):
        check_attachment("huge.png", "image/png", MAX_BYTES + 1)


def test_an_empty_attachment_is_refused_before_it_is_downloaded() -> None:
    with pytest.raises(RequestError) as refused:
        check_attachment("empty.png", "image/png", 0)

    assert refused.value.message == messages.reference_empty("empty.png")


# -- what was downloaded ----------------------------------------------------------


def test_an_empty_download_is_refused() -> None:
    assert refusal("empty.png", "image/png", b"") == messages.reference_empty("empty.png")


def test_a_download_over_the_size_limit_is_refused_whatever_the_platform_said() -> None:
    assert refusal("huge.png", "image/png", b"\x00" * (MAX_BYTES + 1)) == (
        messages.reference_too_large("huge.png", MAX_BYTES + 1, MAX_BYTES)
    )


def test_a_text_file_behind_a_png_header_is_not_an_image() -> None:
    data = b"\x89PNG\r\n\x1a\nDear diary, today I pretended to be a picture."

    assert refusal("red.png", "image/png", data) == messages.reference_not_an_image("red.png")


def test_a_png_cut_short_is_not_an_image() -> None:
    data = encoded("PNG", (256, 256))

    assert refusal("red.png", "image/png", data[: len(data) // 2]) == (
        messages.reference_not_an_image("red.png")
    )


def test_a_jpeg_named_png_is_refused_for_what_it_is() -> None:
    assert refusal("photo.png", "image/png", encoded("JPEG")) == (
        messages.reference_type_mismatch("photo.png", "JPEG", "PNG")
    )


def test_a_png_named_png_but_sent_as_webp_is_refused() -> None:
    assert refusal("photo.png", "image/webp", encoded("PNG")) == (
        messages.reference_type_mismatch("photo.png", "PNG", "WebP")
    )


def test_a_decompression_bomb_is_refused_without_decoding_it() -> None:
    bomb = one_colour_png(20_000, 20_000)
    assert len(bomb) < 100_000

    assert refusal("bomb.png", "image/png", bomb) == (
        messages.reference_too_many_pixels("bomb.png", MAX_PIXELS)
    )


def test_an_image_over_the_pixel_limit_is_refused_by_its_header() -> None:
    # Above our limit, below Pillow's own (89 megapixels): only the header check stops it.
    large = one_colour_png(8_000, 7_000)

    assert refusal("large.png", "image/png", large) == (
        messages.reference_too_many_pixels("large.png", MAX_PIXELS)
    )


def test_exif_and_text_chunks_are_gone_from_a_png() -> None:
    text = PngInfo()
    text.add_text("Author", "Alice Example")
    original = encoded("PNG", pnginfo=text, exif=exif_with(Make="Phone", Model="X1"))
    assert b"Alice Example" in original and b"eXIf" in original

    cleaned = clean("me.png", "image/png", original)

    assert b"Alice Example" not in cleaned.data
    assert b"eXIf" not in cleaned.data
    assert not reopened(cleaned.data).getexif()


def test_exif_and_the_comment_are_gone_from_a_jpeg() -> None:
    original = encoded("JPEG", exif=exif_with(Make="Phone", Model="X1"), comment=b"Alice's phone")

    cleaned = clean("me.jpg", "image/jpeg", original)

    assert b"Alice's phone" not in cleaned.data
    assert b"Exif" not in cleaned.data
    assert not reopened(cleaned.data).getexif()


def test_exif_and_xmp_are_gone_from_a_webp() -> None:
    original = encoded("WEBP", exif=exif_with(Make="Phone"), xmp=b"<x:xmpmeta>Alice</x:xmpmeta>")

    cleaned = clean("me.webp", "image/webp", original)

    assert b"Alice" not in cleaned.data
    assert b"Phone" not in cleaned.data
    assert cleaned.mime_type == "image/webp"


@pytest.mark.parametrize(
    ("image_format", "mime_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg")]
)
def test_the_colour_profile_is_kept(image_format: str, mime_type: str) -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()

    cleaned = clean("me", mime_type, encoded(image_format, icc_profile=profile))

    assert reopened(cleaned.data).info["icc_profile"] == profile


def test_a_photo_shown_rotated_by_its_exif_is_turned_upright() -> None:
    rotated = encoded("JPEG", (40, 20), exif=exif_with(Orientation=6))

    cleaned = clean("me.jpg", "image/jpeg", rotated)

    assert reopened(cleaned.data).size == (20, 40)


def test_a_clean_png_keeps_its_pixels_and_format() -> None:
    original = encoded("PNG")

    cleaned = clean("red.png", "image/png", original)

    assert cleaned.mime_type == "image/png"
    assert reopened(cleaned.data).tobytes() == reopened(original).tobytes()


async def test_prepare_gives_what_clean_gives() -> None:
    original = encoded("PNG", pnginfo=PngInfo())

    assert await prepare("red.png", "image/png", original) == clean(
        "red.png", "image/png", original
    )


async def test_no_more_than_two_images_are_decoded_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoding = 0
    most_at_once = 0
    counting = threading.Lock()

    def slow_clean(filename: str, claimed_type: str, data: bytes) -> ReferenceImage:
        nonlocal decoding, most_at_once
        with counting:
            decoding += 1
            most_at_once = max(most_at_once, decoding)
        time.sleep(0.05)
        with counting:
            decoding -= 1
        return ReferenceImage(data, claimed_type)

    monkeypatch.setattr(references, "clean", slow_clean)
    original = encoded("PNG")

    await asyncio.gather(*(prepare(f"{n}.png", "image/png", original) for n in range(8)))

    assert most_at_once == references.DECODES_AT_ONCE == 2
