"""The ``openai`` provider: GPT Image models through the official ``openai`` SDK.

Each image is its own call with ``n=1`` (``images.generate``, or ``images.edit``
when the user sent reference images), so users see progress image by image and
keep the images that worked when another call fails. The SDK's own retries are
off: they would also resend a call that timed out, which OpenAI may have made
and billed. Its ``ProviderHttpClient`` retries only answers that prove no image
was made (``providers/calls.py``), and records every call; those retries happen
inside a call and so count against the request's time limit.

Settings (``ProviderConfig.options``): ``concurrency`` (``OPENAI_CONCURRENCY``),
``request_timeout_seconds`` (``OPENAI_REQUEST_TIMEOUT_SECONDS``) and
``max_retries`` (``OPENAI_MAX_RETRIES``); see ``OpenAIOptions``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import mimetypes
from collections.abc import Sequence

import httpx2
import openai
from openai.types import ImagesResponse
from PIL import Image
from pydantic import Field

from providers.base import (
    GeneratedImage,
    GenerationResult,
    ImageDone,
    ImageProvider,
    ImageRequest,
    ProviderConfig,
    ProviderOptions,
    generate_each,
    pixel_size,
    read_options,
)
from providers.calls import ProviderHttpClient, RetryPolicy
from providers.errors import (
    BadRequest,
    ContentBlocked,
    ProviderError,
    ProviderNotConfigured,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)

# The only sizes the GPT Image models make, one per orientation; their
# registry entries offer just the "1K" resolution to match.
LANDSCAPE = "1536x1024"
PORTRAIT = "1024x1536"
SQUARE = "1024x1024"

# OpenAI's error messages can run to a paragraph; users are shown this much.
_MESSAGE_LIMIT = 200
# The backoff the SDK itself uses between retries.
_RETRY_INITIAL_DELAY_SECONDS = 0.5
_RETRY_MAX_DELAY_SECONDS = 8.0


class OpenAIOptions(ProviderOptions):
    """The provider's settings, from ``OPENAI_*`` variables (strings, converted here)."""

    concurrency: int = Field(4, ge=1)
    """Calls in flight at once across every generation, to stay inside the account's rate limit."""
    request_timeout_seconds: float = Field(120.0, gt=0, allow_inf_nan=False)
    """How long one HTTP call may wait for OpenAI; a call that runs out is not retried."""
    max_retries: int = Field(2, ge=0)
    """How many times a call is sent again after an answer that made nothing (429, 408, 500, 503)."""


class OpenAIProvider(ImageProvider):
    """GPT Image models: one SDK call per image, at most ``concurrency`` at a time."""

    name = "openai"

    def __init__(self, config: ProviderConfig) -> None:
        options = read_options(OpenAIOptions, config, self.name)
        if not config.api_key:
            # Without one the SDK would quietly read OPENAI_API_KEY itself, or
            # fail with its own error type, which start-up does not expect.
            raise ValueError("the openai provider needs an API key (set OPENAI_API_KEY)")
        # The connection limits and redirects of the SDK's default client; the retries
        # move from the SDK into this client.
        http = ProviderHttpClient(
            RetryPolicy(
                attempts=options.max_retries + 1,
                initial_delay_seconds=_RETRY_INITIAL_DELAY_SECONDS,
                max_delay_seconds=_RETRY_MAX_DELAY_SECONDS,
            ),
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100),
            follow_redirects=True,
        )
        self._client = openai.AsyncOpenAI(
            api_key=config.api_key,
            base_url=config.base_url or None,
            max_retries=0,
            timeout=options.request_timeout_seconds,
            http_client=http,
        )
        self._limit = asyncio.Semaphore(options.concurrency)

    async def generate(self, request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        size = gpt_image_size(request.aspect_ratio)
        quality = request.options.get("quality", openai.omit)
        references = [
            (
                f"reference-{number}{mimetypes.guess_extension(image.mime_type) or ''}",
                image.data,
                image.mime_type,
            )
            for number, image in enumerate(request.reference_images, start=1)
        ]

        async def make_image(index: int) -> GeneratedImage:
            try:
                if references:
                    response = await self._client.images.edit(
                        model=request.provider_model,
                        image=references,
                        prompt=request.prompt,
                        n=1,
                        size=size,
                        quality=quality,
                        output_format="png",
                    )
                else:
                    response = await self._client.images.generate(
                        model=request.provider_model,
                        prompt=request.prompt,
                        n=1,
                        size=size,
                        quality=quality,
                        output_format="png",
                    )
            except openai.APIError as error:
                raise provider_error(error) from error
            return only_image(response)

        return await generate_each(request, make_image, on_image_done, self._limit)

    async def missing_models(self, provider_models: Sequence[str]) -> dict[str, str]:
        # Every lookup runs to the end, so none is left running after an error is raised.
        outcomes = await asyncio.gather(
            *(self._lookup(model) for model in dict.fromkeys(provider_models))
        )
        errors = [outcome for outcome in outcomes if isinstance(outcome, ProviderError)]
        if errors:
            raise errors[0]
        return dict(outcome for outcome in outcomes if isinstance(outcome, tuple))

    async def _lookup(self, model: str) -> tuple[str, str] | ProviderError | None:
        """``(model, reason)`` if OpenAI does not offer ``model``, None if it does, or why it could not say."""
        try:
            await self._client.models.retrieve(model)
        except openai.NotFoundError:
            return model, f"OpenAI does not offer the model '{model}'"
        except openai.APIError as error:
            return provider_error(error)
        return None

    async def aclose(self) -> None:
        await self._client.close()  # closes self._http too


def gpt_image_size(aspect_ratio: str) -> str:
    """The GPT Image size of the same orientation as ``aspect_ratio``."""
    width, height = pixel_size("1K", aspect_ratio)
    if width > height:
        return LANDSCAPE
    if width < height:
        return PORTRAIT
    return SQUARE


def only_image(response: ImagesResponse) -> GeneratedImage:
    """The one image of an ``n=1`` answer, measured from its bytes rather than trusted from the request."""
    encoded = response.data[0].b64_json if response.data else None
    if not encoded:
        raise ProviderUnavailable("OpenAI answered without image data")
    try:
        data = base64.b64decode(encoded, validate=True)
        with Image.open(io.BytesIO(data)) as picture:
            size, mime_type = picture.size, picture.get_format_mimetype()
    except (binascii.Error, OSError) as error:
        raise ProviderUnavailable("OpenAI answered with data that is not an image") from error
    if mime_type is None:
        raise ProviderUnavailable("OpenAI answered with an image of an unknown type")
    return GeneratedImage(data, mime_type, *size)


def provider_error(error: openai.APIError) -> ProviderError:
    """The ``ProviderError`` for a failed SDK call, worded for the user who asked for the image."""
    if isinstance(error, openai.APITimeoutError):
        return ProviderTimeout("OpenAI did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return ProviderUnavailable("could not reach OpenAI")
    if not isinstance(error, openai.APIStatusError):
        return ProviderUnavailable("OpenAI's answer could not be read")
    status = error.status_code
    if status == 400 and error.code == "moderation_blocked":
        return ContentBlocked("OpenAI's moderation refused the prompt")
    if status in (401, 403):
        return ProviderNotConfigured("OpenAI refused the API key; check OPENAI_API_KEY")
    if status == 429:
        return RateLimited(openai_message(error))
    if status >= 500:
        return ProviderUnavailable(f"OpenAI answered HTTP {status}")
    return BadRequest(openai_message(error))


def openai_message(error: openai.APIStatusError) -> str:
    """OpenAI's own explanation, cut to a length a chat message can carry."""
    # The SDK keeps the inner "error" object as the body; its ``message``
    # attribute has "Error code: 400 - " stuck in front.
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        return f"OpenAI answered HTTP {error.status_code}"
    if len(message) <= _MESSAGE_LIMIT:
        return message
    return message[: _MESSAGE_LIMIT - 1].rstrip() + "…"
