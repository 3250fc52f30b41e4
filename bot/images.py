"""Making a generated image fit a platform's per-file upload limit, and the /compare grid.

A 4K PNG can be 20 MB, and Discord takes 10 MiB per file unless the server is
boosted. The image is re-encoded as JPEG at falling quality, then scaled down,
until it fits; it is never sent larger than the limit.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

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


GRID_CELL = 512
"""The side of one model's square cell in a /compare grid, in pixels."""
_LABEL_HEIGHT = 28
_BACKGROUND = (32, 32, 32)
_LABEL_COLOUR = (240, 240, 240)


async def compare_grid(cells: Sequence[tuple[GeneratedImage | None, str]]) -> GeneratedImage:
    """One PNG with a cell per model, side by side: its image (or nothing, when it failed)
    scaled to fit, its label under it. Off the event loop."""
    return await asyncio.to_thread(_grid, cells)


def _grid(cells: Sequence[tuple[GeneratedImage | None, str]]) -> GeneratedImage:
    columns = 2 if len(cells) == 4 else len(cells)
    rows = -(-len(cells) // columns)
    height = GRID_CELL + _LABEL_HEIGHT
    grid = Image.new("RGB", (columns * GRID_CELL, rows * height), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=16)
    for index, (image, label) in enumerate(cells):
        left, top = (index % columns) * GRID_CELL, (index // columns) * height
        if image is not None:
            with Image.open(io.BytesIO(image.data)) as opened:
                picture = opened.convert("RGB")
            picture.thumbnail((GRID_CELL, GRID_CELL), Image.Resampling.LANCZOS)
            grid.paste(
                picture,
                (left + (GRID_CELL - picture.width) // 2, top + (GRID_CELL - picture.height) // 2),
            )
        draw.text((left + 8, top + GRID_CELL + 5), label, fill=_LABEL_COLOUR, font=font)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return GeneratedImage(buffer.getvalue(), "image/png", *grid.size)
