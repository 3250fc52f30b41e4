"""A provider whose every outcome a test decides: success, failure, a partial result, a hang."""

from __future__ import annotations

import asyncio
import io
import random
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from providers.base import (
    GeneratedImage,
    GenerationResult,
    ImageDone,
    ImageProvider,
    ImageRequest,
    ProviderConfig,
    generate_each,
)
from providers.errors import ContentBlocked, ProviderError, ProviderUnavailable, RateLimited


def tiny_png(shade: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade % 256, 64, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def one_colour_png(width: int, height: int) -> bytes:
    """A black 1-bit PNG, written row by row: 20,000² pixels take under 50 KB (a decompression bomb)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


@dataclass
class Script:
    """What the next generation does: deliver ``images`` (all when None), then fail the rest with ``error``."""

    images: int | None = None
    error: ProviderError | None = None
    hang: bool = False


@dataclass
class ScriptedProvider(ImageProvider):
    config: ProviderConfig
    script: Script = field(default_factory=Script)
    requests: list[ImageRequest] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    release: asyncio.Event | None = None
    """When set, each generation waits for it before answering."""
    name: str = "scripted"

    async def generate(self, request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        self.requests.append(request)
        self.started.set()
        async with self.arrived:
            self.arrived.notify_all()
        if self.script.hang:
            await asyncio.Event().wait()
        if self.release is not None:
            await self.release.wait()
        made = request.count if self.script.images is None else self.script.images
        if made == 0 and self.script.error is not None:
            raise self.script.error
        images = []
        for number in range(made):
            images.append(GeneratedImage(tiny_png(number), "image/png", 8, 8))
            await on_image_done(number + 1, request.count)
        failures = tuple(
            self.script.error or ProviderError("missing") for _ in range(request.count - made)
        )
        return GenerationResult(tuple(images), failures)

    async def wait_for_requests(self, count: int) -> None:
        async with asyncio.timeout(10), self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= count)


@dataclass
class ChaosProvider(ImageProvider):
    """A provider whose every image independently succeeds, fails, is blocked or hangs.

    Seeded, so a failing run can be replayed. Hanging images outlast the
    request's time limit, as a provider that never answers would.
    """

    config: ProviderConfig
    seed: int = 20261125
    name: str = "chaos"
    _random: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._random = random.Random(int(self.config.options.get("seed", self.seed)))

    async def generate(self, request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        async def make_image(index: int) -> GeneratedImage:
            roll = self._random.random()
            await asyncio.sleep(self._random.random() / 100)
            if roll < 0.15:
                raise ProviderUnavailable("chaos: unavailable")
            if roll < 0.25:
                raise ContentBlocked("chaos: blocked")
            if roll < 0.30:
                raise RateLimited("chaos: slow down")
            if roll < 0.34:
                await asyncio.Event().wait()
            return GeneratedImage(tiny_png(index), "image/png", 8, 8)

        return await generate_each(request, make_image, on_image_done)


def slow_down(service: Any, method: str, monkeypatch: Any, seconds: float = 2) -> None:
    """Make every call of the service's ``method`` wait ``seconds`` first, as in a queue for the database."""
    run_now = getattr(service, method)

    async def slowly(*args: object, **kwargs: object) -> object:
        await asyncio.sleep(seconds)
        return await run_now(*args, **kwargs)

    monkeypatch.setattr(service, method, slowly)


def fail_first(target: Any, method: str, monkeypatch: Any, times: int | None = None) -> None:
    """Make the first ``times`` calls of ``target.method`` (every call if None) fail as a lost database would."""
    run_now = getattr(target, method)
    failures = 0

    async def failing(*args: object, **kwargs: object) -> object:
        nonlocal failures
        if times is None or failures < times:
            failures += 1
            raise ConnectionResetError("the connection to the database was lost")
        return await run_now(*args, **kwargs)

    monkeypatch.setattr(target, method, failing)
