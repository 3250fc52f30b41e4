"""The one interface every provider adapter implements, and the values it trades in."""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from providers.errors import ProviderError

_RESOLUTION = re.compile(r"^(\d+)K$")
_ASPECT = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class ReferenceImage:
    """An image the user supplied for the model to work from."""

    data: bytes
    mime_type: str


@dataclass(frozen=True)
class ImageRequest:
    """What to generate: already validated against the registry by the caller."""

    provider_model: str
    prompt: str
    count: int
    resolution: str
    aspect_ratio: str
    reference_images: tuple[ReferenceImage, ...] = ()


@dataclass(frozen=True)
class GeneratedImage:
    """One finished image: encoded bytes plus what they are."""

    data: bytes
    mime_type: str
    width: int
    height: int


@dataclass(frozen=True)
class GenerationResult:
    """Per-image outcomes: the images made, and one error per image that was not."""

    images: tuple[GeneratedImage, ...]
    failures: tuple[ProviderError, ...] = ()


ImageDone = Callable[[int, int], Awaitable[None]]
"""Called as ``(finished, total)`` each time an image attempt ends, for progress."""


@dataclass(frozen=True)
class ProviderConfig:
    """The settings a provider reads: an API key, another host, and extras by name."""

    api_key: str | None = None
    base_url: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)


class ImageProvider(ABC):
    """A provider API behind one async call.

    ``generate`` returns every image it could make and one error per image it
    could not (partial results are charged only for what was delivered). It
    raises a ``ProviderError`` only when nothing at all was produced.
    """

    name: str

    @abstractmethod
    async def generate(self, request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        """Make ``request.count`` images."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release connections; called once when the bot stops."""


def pixel_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """Width and height for a resolution class ("1K", "2K", "4K") at an aspect ratio.

    The long side of an "NK" image is N × 1024 pixels, both sides rounded to
    multiples of 16 as image models produce them.
    """
    resolution_match = _RESOLUTION.match(resolution)
    aspect_match = _ASPECT.match(aspect_ratio)
    if resolution_match is None or aspect_match is None:
        raise ValueError(f"not a resolution and aspect ratio: {resolution!r}, {aspect_ratio!r}")
    long_side = int(resolution_match.group(1)) * 1024
    ratio_w, ratio_h = int(aspect_match.group(1)), int(aspect_match.group(2))
    if ratio_w == 0 or ratio_h == 0:
        raise ValueError(f"aspect ratio sides must be positive: {aspect_ratio!r}")
    if ratio_w >= ratio_h:
        width, height = long_side, long_side * ratio_h / ratio_w
    else:
        width, height = long_side * ratio_w / ratio_h, long_side
    return _multiple_of_16(width), _multiple_of_16(height)


def _multiple_of_16(length: float) -> int:
    return max(16, math.floor(length / 16 + 0.5) * 16)
