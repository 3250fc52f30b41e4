"""The one interface every provider adapter implements, and the values it trades in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from providers.calls import calls_are_for_image
from providers.errors import ProviderError, ProviderTimeout

logger = logging.getLogger(__name__)

OptionValue = bool | int | float | str

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
    options: Mapping[str, OptionValue] = field(default_factory=dict)
    """The model's ``provider_options`` from the registry, already checked against the provider's."""
    time_limit_seconds: float | None = None
    """How long the whole generation may take; images not done by then fail as timeouts."""


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

    async def missing_models(self, provider_models: Sequence[str]) -> dict[str, str]:
        """Ask the provider which of these model ids it does not offer, each with the reason.

        Raises ``ProviderError`` when the provider cannot be asked. Providers with
        nothing to ask (the offline one) report nothing missing.
        """
        return {}

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release connections; called once when the bot stops."""


class ProviderOptions(BaseModel):
    """Base of a provider's typed settings: unknown or mistyped options are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=ProviderOptions)


def read_options(options_type: type[OptionsT], config: ProviderConfig, provider: str) -> OptionsT:
    """``config.options`` as ``options_type``, or a ``ValueError`` naming every bad option."""
    try:
        return options_type.model_validate(dict(config.options))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        raise ValueError(f"bad {provider} provider settings: {problems}") from None


MakeImage = Callable[[int], Awaitable[GeneratedImage]]
"""Makes the image with the given index (0-based) of a request, or raises ``ProviderError``."""


async def generate_each(
    request: ImageRequest,
    make_image: MakeImage,
    on_image_done: ImageDone,
    limit: asyncio.Semaphore | None = None,
) -> GenerationResult:
    """Make a request's images one call each, concurrently, keeping every per-image outcome.

    At most ``limit`` calls run at once (shared by every generation of the
    provider). Waiting for the limit counts against ``request.time_limit_seconds``;
    an image still unfinished at that deadline fails as a timeout while the
    finished ones are kept. Raises the first image's error when none succeeded.
    """
    loop = asyncio.get_running_loop()
    deadline = (
        None if request.time_limit_seconds is None else loop.time() + request.time_limit_seconds
    )
    finished = 0

    async def outcome_of(index: int) -> GeneratedImage | ProviderError:
        try:
            async with asyncio.timeout_at(deadline), limit or contextlib.nullcontext():
                return await make_image(index)
        except TimeoutError:
            return ProviderTimeout("the image was not ready before the deadline")
        except ProviderError as error:
            return error
        except Exception as error:
            # One image's surprise must not cost the user the images that worked.
            logger.exception(
                "image %d of %s failed unexpectedly", index + 1, request.provider_model
            )
            return ProviderError(f"unexpected {type(error).__name__}")

    async def attempt(index: int) -> GeneratedImage | ProviderError:
        nonlocal finished
        # Each image runs in a task of its own, so this names the calls of this image only.
        calls_are_for_image(index)
        outcome = await outcome_of(index)
        finished += 1
        await on_image_done(finished, request.count)
        return outcome

    outcomes = await asyncio.gather(*(attempt(index) for index in range(request.count)))
    images = tuple(outcome for outcome in outcomes if isinstance(outcome, GeneratedImage))
    failures = tuple(outcome for outcome in outcomes if isinstance(outcome, ProviderError))
    if not images:
        raise failures[0]
    return GenerationResult(images, failures)


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
