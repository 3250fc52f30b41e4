"""The ``google`` provider: Gemini image models through the google-genai SDK.

The API makes one image per call (it rejects ``candidate_count`` above 1), so a
request for N images is N calls, run concurrently under the provider's call
limit (``GEMINI_CONCURRENCY``). Every answer is read for the reason it holds no
image: a blocked prompt, a blocked output, or text instead of a picture.

The SDK's own retries (``HttpRetryOptions``) are off: they would also resend
a call that timed out, which Google may have made and billed. Its
``ProviderHttpClient`` retries only answers that prove no image was made, with
exponential backoff and jitter (``providers/calls.py``), and records every
call. The request's time limit bounds the calls and the waits between them
together.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from typing import Any

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from PIL import Image, UnidentifiedImageError
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
    read_options,
)
from providers.calls import ProviderHttpClient, RetryPolicy, shared_tls
from providers.errors import (
    BadRequest,
    ContentBlocked,
    NoImageReturned,
    ProviderError,
    ProviderNotConfigured,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)

_TRANSPORT_ERRORS = (httpx2.TransportError, OSError)
_LONGEST_DETAIL = 200

# Why a prompt was refused before any image was made (``prompt_feedback.block_reason``).
_PROMPT_BLOCKED = {
    "SAFETY": "the prompt was flagged as unsafe",
    "PROHIBITED_CONTENT": "the prompt asks for prohibited content",
    "BLOCKLIST": "the prompt contains a blocked term",
    "IMAGE_SAFETY": "a reference image was flagged as unsafe",
    "JAILBREAK": "the prompt looked like an attempt to get around the safety rules",
}
# Why an answer holds no image although the prompt was accepted (``finish_reason``).
_OUTPUT_BLOCKED = {
    "IMAGE_SAFETY": "the picture it made was flagged as unsafe",
    "IMAGE_PROHIBITED_CONTENT": "the picture would show prohibited content",
    "SAFETY": "the answer was flagged as unsafe",
    "PROHIBITED_CONTENT": "the answer would show prohibited content",
    "BLOCKLIST": "the answer contained a blocked term",
    "SPII": "the answer would reveal personal information",
    "RECITATION": "the picture was too close to an existing work",
    "IMAGE_RECITATION": "the picture was too close to an existing work",
    "IMAGE_OTHER": "the model could not draw this prompt",
}


class GoogleOptions(ProviderOptions):
    """Provider-wide settings; ``api_version`` and ``concurrency`` come from the environment."""

    api_version: str | None = None
    """``v1`` (the SDK's default) or ``v1beta``; gateways and proxies may need either."""
    concurrency: int = Field(default=4, ge=1, le=64)
    """Calls in flight at once across every generation."""
    request_timeout_seconds: float = Field(default=120, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)
    retry_initial_delay_seconds: float = Field(default=1.0, ge=0)
    retry_max_delay_seconds: float = Field(default=20.0, ge=0)


class GoogleProvider(ImageProvider):
    """Gemini image models (``gemini-3-pro-image``, ``gemini-3.1-flash-image``, ...)."""

    name = "google"

    def __init__(self, config: ProviderConfig) -> None:
        if not config.api_key:
            raise ValueError("no API key is configured (set GEMINI_API_KEY)")
        options = read_options(GoogleOptions, config, self.name)
        # Our own httpx2 client also keeps the SDK off its aiohttp path, which subclasses
        # aiohttp.ClientSession and so warns (DeprecationWarning) on every new session
        # once aiohttp is installed, as it is beside Slack's async adapter.
        self._http = ProviderHttpClient(
            RetryPolicy(
                attempts=options.max_attempts,
                initial_delay_seconds=options.retry_initial_delay_seconds,
                max_delay_seconds=options.retry_max_delay_seconds,
            )
        )
        http_options = types.HttpOptions(
            httpx_async_client=self._http,
            # The SDK also builds a client of its own for synchronous calls, and TLS
            # settings for its websockets; neither is used, and both are cheaper shared.
            client_args={"verify": shared_tls()},
            async_client_args={"ssl": shared_tls()},
            base_url=config.base_url,
            api_version=options.api_version,
            timeout=round(options.request_timeout_seconds * 1000),
        )
        self._client = genai.Client(
            vertexai=False, api_key=config.api_key, http_options=http_options
        )
        self._calls = asyncio.Semaphore(options.concurrency)

    async def generate(self, request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        contents: list[Any] = [
            request.prompt,
            *(
                types.Part.from_bytes(data=reference.data, mime_type=reference.mime_type)
                for reference in request.reference_images
            ),
        ]
        config = types.GenerateContentConfig(
            response_modalities=["IMAGE"], image_config=_image_config(request)
        )

        async def make_image(_index: int) -> GeneratedImage:
            try:
                response = await self._client.aio.models.generate_content(
                    model=request.provider_model, contents=contents, config=config
                )
            except Exception as error:
                raise _translate(error, request.provider_model) from error
            return _image_from(response)

        return await generate_each(request, make_image, on_image_done, self._calls)

    async def missing_models(self, provider_models: Sequence[str]) -> dict[str, str]:
        async def missing(model: str) -> str | None:
            try:
                await self._client.aio.models.get(model=model)
            except genai_errors.ClientError as error:
                if error.code == 404:
                    return f"Google does not offer the model '{model}'"
                raise _translate(error, model) from error
            except Exception as error:
                raise _translate(error, model) from error
            return None

        reasons = await asyncio.gather(*(missing(model) for model in provider_models))
        return {
            model: reason
            for model, reason in zip(provider_models, reasons, strict=True)
            if reason is not None
        }

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()


def _image_config(request: ImageRequest) -> types.ImageConfig | None:
    """Only the fields the model accepts: a 1K-only model rejects ``image_size``."""
    fields: dict[str, str] = {}
    if request.options.get("aspect_ratio", True):
        fields["aspect_ratio"] = request.aspect_ratio
    if request.options.get("image_size", True):
        fields["image_size"] = request.resolution
    return types.ImageConfig(**fields) if fields else None


def _image_from(response: types.GenerateContentResponse) -> GeneratedImage:
    """The answer's image, or the error that says in words why there is none."""
    if not response.candidates:
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            reason = _enum_name(feedback.block_reason)
            raise ContentBlocked(_PROMPT_BLOCKED.get(reason, "the prompt was refused"))
        raise NoImageReturned("Google sent an empty answer")
    candidate = response.candidates[0]
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    # Thinking models send draft images and notes marked ``thought`` before the answer.
    answer = [part for part in parts if not part.thought]
    for part in answer:
        blob = part.inline_data
        if blob is not None and blob.data and (blob.mime_type or "").startswith("image/"):
            return _decoded(blob.data)
    finish = _enum_name(candidate.finish_reason) if candidate.finish_reason else ""
    if finish in _OUTPUT_BLOCKED:
        raise ContentBlocked(_OUTPUT_BLOCKED[finish])
    if finish == "NO_IMAGE":
        # Not a safety filter: the model simply answered without drawing.
        raise NoImageReturned("the model returned no image")
    text = " ".join(part.text.strip() for part in answer if part.text and part.text.strip())
    if text:
        raise NoImageReturned(f"it replied: “{_shorten(text)}”")
    raise NoImageReturned(f"Google finished ({finish or 'no reason given'}) without a picture")


def _decoded(data: bytes) -> GeneratedImage:
    try:
        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size
            mime_type = picture.get_format_mimetype() or "image/png"
    except (UnidentifiedImageError, OSError):
        raise NoImageReturned("Google sent image data that cannot be read") from None
    return GeneratedImage(data, mime_type, width, height)


def _translate(error: Exception, model: str) -> ProviderError:
    """The typed error for whatever the SDK or the network raised."""
    if isinstance(error, ProviderError):
        return error
    if isinstance(error, genai_errors.APIError):
        detail = _shorten(error.message or str(error.status or ""))
        if error.code == 429:
            return RateLimited(detail)
        if error.code is not None and error.code >= 500:
            return ProviderUnavailable(f"Google answered {error.code}")
        if error.code in (401, 403):
            return ProviderNotConfigured("Google refused the API key; check GEMINI_API_KEY")
        if error.code == 404:
            return BadRequest(f"Google does not offer the model '{model}'")
        return BadRequest(detail)
    if isinstance(error, TimeoutError | httpx2.TimeoutException):
        return ProviderTimeout("Google did not answer in time")
    if isinstance(error, _TRANSPORT_ERRORS):
        return ProviderUnavailable(f"Google could not be reached ({type(error).__name__})")
    return ProviderError(f"unexpected {type(error).__name__}: {_shorten(str(error))}")


def _enum_name(value: object) -> str:
    """``FinishReason.IMAGE_SAFETY`` and a plain string the SDK does not know yet alike."""
    return str(getattr(value, "value", value))


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _LONGEST_DETAIL else text[: _LONGEST_DETAIL - 1] + "…"
