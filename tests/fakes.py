"""A provider whose every outcome a test decides: success, failure, a partial result, a hang."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field

from PIL import Image

from providers.base import (
    GeneratedImage,
    GenerationResult,
    ImageDone,
    ImageProvider,
    ImageRequest,
    ProviderConfig,
)
from providers.errors import ProviderError


def tiny_png(shade: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade % 256, 64, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


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
    release: asyncio.Event | None = None
    """When set, each generation waits for it before answering."""
    name: str = "scripted"

    async def generate(self, request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        self.requests.append(request)
        self.started.set()
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
