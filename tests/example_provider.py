"""The ``acme`` provider: "Acme Images", a made-up HTTP API that ADDING_MODELS.md adds step by step.

``POST {base}/v1/images`` with ``{"model", "prompt", "width", "height"}`` and a
bearer key answers ``{"image": "<base64 PNG>"}``, or an error status with
``{"error": {"code": ..., "message": ...}}``; code ``unsafe`` means its filter
refused the prompt.
"""

from __future__ import annotations

import asyncio
import base64

import httpx2
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
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)


class AcmeOptions(ProviderOptions):
    concurrency: int = Field(default=2, ge=1)
    """Calls in flight at once (``ACME_CONCURRENCY``)."""


class AcmeProvider(ImageProvider):
    name = "acme"

    def __init__(self, config: ProviderConfig) -> None:
        if not config.api_key:
            raise ValueError("no API key is configured (set ACME_API_KEY)")
        options = read_options(AcmeOptions, config, self.name)
        # Retries only what is safe to send again, and records every call on its generation.
        self._http = ProviderHttpClient(
            RetryPolicy(attempts=3),
            base_url=config.base_url or "https://api.acme.example",
            headers={"Authorization": f"Bearer {config.api_key}"},
            timeout=60,
        )
        self._calls = asyncio.Semaphore(options.concurrency)

    async def generate(self, request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        width, height = pixel_size(request.resolution, request.aspect_ratio)
        body = {
            "model": request.provider_model,
            "prompt": request.prompt,
            "width": width,
            "height": height,
        }

        async def make_image(_index: int) -> GeneratedImage:
            try:
                response = await self._http.post("/v1/images", json=body)
            except httpx2.TimeoutException as error:
                raise ProviderTimeout("Acme did not answer in time") from error
            except httpx2.TransportError as error:
                raise ProviderUnavailable("Acme could not be reached") from error
            if response.status_code == 200:
                data = base64.b64decode(response.json()["image"])
                return GeneratedImage(data, "image/png", width, height)
            error = response.json().get("error", {})
            if error.get("code") == "unsafe":
                raise ContentBlocked("Acme's filter refused the prompt")
            if response.status_code == 429:
                raise RateLimited(error.get("message", ""))
            if response.status_code >= 500:
                raise ProviderUnavailable(f"Acme answered {response.status_code}")
            raise BadRequest(error.get("message", f"Acme answered {response.status_code}"))

        return await generate_each(request, make_image, on_image_done, self._calls)

    async def aclose(self) -> None:
        await self._http.aclose()
