"""Reference images users attach: the one rule every adapter applies before a request is quoted.

An attachment is first judged by what the platform says of it (its type and
size), before it is downloaded; then by its content: it must be the PNG, JPEG
or WebP image it claims to be, with no more pixels than ``MAX_PIXELS`` (read
from its header, before anything is decoded, so a small file that would
decode to gigabytes is refused for what it is). An accepted image is
re-encoded in its own format without its metadata (EXIF, which can hold a
phone's GPS position, XMP, PNG text chunks, JPEG comments), turned upright
first when its EXIF said to show it rotated. Its ICC colour profile is kept:
without it a wide-gamut photo's colours shift, and it says nothing about
who took the picture.
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from bot import messages
from bot.errors import RequestError
from providers.base import ReferenceImage

MAX_BYTES = 10 * 1024 * 1024
"""Providers take inline images of a few megabytes; larger ones would fail at generation time."""
MAX_PIXELS = 50_000_000
"""More than any provider uses; a 50-megapixel image already decodes to 200 MB."""

_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
"""The MIME types accepted, and Pillow's name of each format."""
_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "WEBP": "image/webp"}
"""The MIME type of each format Pillow may find; MPO is a camera's JPEG with a second picture."""
_NAMES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP"}
_EXTENSIONS = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}
_WEBP_QUALITY = 90
_JPEG_QUALITY = 95
"""For a JPEG turned upright, which cannot keep its own quantisation tables."""


def type_by_name(filename: str) -> str | None:
    """The MIME type a file's extension claims, if it is one of ours."""
    return _EXTENSIONS.get(PurePosixPath(filename).suffix.lower())


def check_attachment(filename: str, content_type: str | None, size: int) -> str:
    """The MIME type an attachment claims, if worth downloading; else a ``RequestError`` saying why."""
    claimed = (content_type or "").split(";")[0].strip().lower()
    if claimed not in _FORMATS:
        raise RequestError(messages.reference_not_an_image(filename))
    if size == 0:
        raise RequestError(messages.reference_empty(filename))
    if size > MAX_BYTES:
        raise RequestError(messages.reference_too_large(filename, size, MAX_BYTES))
    return claimed


DECODES_AT_ONCE = 2
"""Images decoded at the same time, by this process: each may take 200 MB while it is."""
_DECODER = ThreadPoolExecutor(max_workers=DECODES_AT_ONCE, thread_name_prefix="reference")
"""Its own threads: a queue of large attachments must not hold memory, nor the threads
``asyncio.to_thread`` lends the rest of the bot."""


async def prepare(filename: str, claimed_type: str, data: bytes) -> ReferenceImage:
    """``clean``, off the event loop (decoding and encoding take a while for a large image)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_DECODER, clean, filename, claimed_type, data)


def clean(filename: str, claimed_type: str, data: bytes) -> ReferenceImage:
    """The downloaded image, checked and re-encoded without metadata; or a ``RequestError``."""
    if not data:
        raise RequestError(messages.reference_empty(filename))
    if len(data) > MAX_BYTES:
        raise RequestError(messages.reference_too_large(filename, len(data), MAX_BYTES))
    with _opened(filename, data) as image:
        actual = _TYPES[image.format or ""]
        claimed_by_name = _EXTENSIONS.get(PurePosixPath(filename).suffix.lower(), actual)
        for claimed in (claimed_type, claimed_by_name):
            if claimed != actual:
                raise RequestError(
                    messages.reference_type_mismatch(filename, _NAMES[actual], _NAMES[claimed])
                )
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise RequestError(messages.reference_too_many_pixels(filename, MAX_PIXELS))
        try:
            return ReferenceImage(_without_metadata(image, _FORMATS[actual]), actual)
        except (OSError, SyntaxError, ValueError, EOFError):
            # Decoding failed past the header: truncated or garbled data.
            raise RequestError(messages.reference_not_an_image(filename)) from None


def _opened(filename: str, data: bytes) -> Image.Image:
    """The image with its header read and nothing decoded; refused if it is none we accept."""
    try:
        return Image.open(io.BytesIO(data), formats=list(_FORMATS.values()))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own check, at more pixels than ours; a warning only when warnings are errors.
        raise RequestError(messages.reference_too_many_pixels(filename, MAX_PIXELS)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise RequestError(messages.reference_not_an_image(filename)) from None


def _without_metadata(image: Image.Image, image_format: str) -> bytes:
    """``image`` encoded in ``image_format`` (its own) with only its pixels and colour profile."""
    upright = image
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        upright = ImageOps.exif_transpose(image)
    options: dict[str, Any] = {}
    if icc_profile := image.info.get("icc_profile"):
        options["icc_profile"] = icc_profile
    if image_format == "JPEG":
        # An empty comment, or Pillow copies the original's COM segment.
        options["comment"] = b""
        if upright is image and image.format == "JPEG":
            # The original's quantisation: re-encoding loses next to nothing.
            options |= {"quality": "keep", "subsampling": "keep"}
        else:
            options["quality"] = _JPEG_QUALITY
    elif image_format == "WEBP":
        options["quality"] = _WEBP_QUALITY
    buffer = io.BytesIO()
    # PNG writes no text chunks or EXIF unless given them; the others no EXIF or XMP.
    upright.save(buffer, format=image_format, **options)
    return buffer.getvalue()
