"""Making a generated image fit a platform's per-file upload limit.

A 4K PNG can be 20 MB, and Discord takes 10 MiB per file unless the server is
boosted. The image is re-encoded as JPEG at falling quality, then scaled down,
until it fits; it is never sent larger than the limit.
"""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from providers.base import GeneratedImage

_QUALITIES = (92, 85, 75)
_SHRINK = 0.75
_SMALLEST_SIDE = 64


class TooLargeToSend(Exception):
    """Even a small JPEG of the image is over the limit (the limit is absurdly small)."""


async def fit_within(image: GeneratedImage, max_bytes: int) -> GeneratedImage:
    """``image`` itself if it fits in ``max_bytes``, else a JPEG of it that does; off the event loop."""
    if len(image.data) <= max_bytes:
        return image
    return await asyncio.to_thread(_shrink, image, max_bytes)


def _shrink(image: GeneratedImage, max_bytes: int) -> GeneratedImage:
    with Image.open(io.BytesIO(image.data)) as opened:
        picture = opened.convert("RGB")
    while True:
        for quality in _QUALITIES:
            buffer = io.BytesIO()
            # No optimize=True: Pillow then encodes in one call that holds the GIL
            # for the whole image (bench.delivery), stalling the event loop.
            picture.save(buffer, format="JPEG", quality=quality)
            if buffer.tell() <= max_bytes:
                return GeneratedImage(buffer.getvalue(), "image/jpeg", *picture.size)
        width, height = (round(side * _SHRINK) for side in picture.size)
        if min(width, height) < _SMALLEST_SIDE:
            raise TooLargeToSend(f"the image does not fit in {max_bytes} bytes")
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
