"""A loopback fake of the Gemini API's wire protocol, for driving the real google-genai SDK.

It serves ``POST /{version}/models/{model}:generateContent`` and
``GET /{version}/models/{model}`` on 127.0.0.1, answers with real PNG bytes of
the size asked for, records every request, counts calls in flight, and plays
scripted replies (errors, blocks, text, delays) in order before falling back
to success.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from providers.base import pixel_size

API_KEY = "test-gemini-key"


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a JSON body with a status, after a delay. No body means an image."""

    status: int = 200
    body: Mapping[str, Any] | None = None
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class GeminiCall:
    """One generateContent request as the fake received it."""

    version: str
    model: str
    body: Mapping[str, Any]

    @property
    def parts(self) -> list[Mapping[str, Any]]:
        return list(self.body["contents"][0]["parts"])

    @property
    def prompt(self) -> str:
        return " ".join(part["text"] for part in self.parts if "text" in part)

    @property
    def reference_images(self) -> list[tuple[str, bytes]]:
        """``(mime type, decoded bytes)`` of each inline image sent with the prompt."""
        # The SDK writes ``mime_type`` in snake case here; the API accepts both spellings.
        return [
            (
                part["inlineData"].get("mimeType") or part["inlineData"]["mime_type"],
                _b64decode(part["inlineData"]["data"]),
            )
            for part in self.parts
            if "inlineData" in part
        ]

    @property
    def generation_config(self) -> Mapping[str, Any]:
        return dict(self.body.get("generationConfig", {}))

    @property
    def image_config(self) -> Mapping[str, Any] | None:
        return self.generation_config.get("imageConfig")


@dataclass
class FakeGemini:
    """Start with ``async with FakeGemini() as fake``; point the SDK at ``fake.base_url``."""

    known_models: set[str] = field(
        default_factory=lambda: {
            "gemini-3-pro-image",
            "gemini-3.1-flash-image",
            "gemini-2.5-flash-image",
        }
    )
    calls: list[GeminiCall] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    base_url: str = ""
    _replies: deque[Reply] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    def script(self, *replies: Reply) -> None:
        """Answer the next calls with ``replies``, in order; later calls succeed."""
        self._replies.extend(replies)

    async def __aenter__(self) -> FakeGemini:
        app = web.Application()
        app.router.add_post("/{version}/models/{call}", self._generate)
        app.router.add_get("/{version}/models/{model}", self._model)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        # Wake delayed replies so shutdown does not wait out their delays.
        self._closing.set()
        await self._runner.cleanup()

    async def _generate(self, request: web.Request) -> web.Response:
        if request.headers.get("x-goog-api-key") != API_KEY:
            return _error(401, "UNAUTHENTICATED", "API key not valid. Please pass a valid API key.")
        model, _, method = request.match_info["call"].partition(":")
        if method != "generateContent":
            return _error(404, "NOT_FOUND", f"unknown method {method}")
        if model not in self.known_models:
            return _error(404, "NOT_FOUND", f"models/{model} is not found for API version")
        call = GeminiCall(request.match_info["version"], model, await request.json())
        self.calls.append(call)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            reply = self._replies.popleft() if self._replies else Reply()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), reply.delay_seconds)
            if reply.body is not None:
                return web.json_response(dict(reply.body), status=reply.status)
            config = call.image_config or {}
            size = pixel_size(config.get("imageSize", "1K"), config.get("aspectRatio", "1:1"))
            return web.json_response(image_answer(*size))
        finally:
            self.in_flight -= 1

    async def _model(self, request: web.Request) -> web.Response:
        if request.headers.get("x-goog-api-key") != API_KEY:
            return _error(401, "UNAUTHENTICATED", "API key not valid. Please pass a valid API key.")
        model = request.match_info["model"]
        if model not in self.known_models:
            return _error(404, "NOT_FOUND", f"models/{model} is not found for API version")
        return web.json_response(
            {"name": f"models/{model}", "displayName": model, "version": "001"}
        )


def png(width: int, height: int, colour: tuple[int, int, int] = (40, 90, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 90, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def image_answer(
    width: int,
    height: int,
    *,
    data: bytes | None = None,
    mime_type: str = "image/png",
    thought_first: bool = False,
) -> dict[str, Any]:
    """A successful answer, optionally preceded by a thought note and a draft image as Gemini 3 sends."""
    image = data if data is not None else png(width, height)
    parts: list[dict[str, Any]] = []
    if thought_first:
        parts.append({"text": "Sketching the composition first.", "thought": True})
        parts.append({"inlineData": _inline("image/png", png(64, 64)), "thought": True})
    parts.append({"text": "Here is your picture."})
    parts.append({"inlineData": _inline(mime_type, image)})
    return _answer(parts, "STOP")


def text_answer(text: str) -> dict[str, Any]:
    return _answer([{"text": text}], "STOP")


def blocked_output(finish_reason: str) -> dict[str, Any]:
    return _answer([], finish_reason)


def blocked_prompt(block_reason: str) -> dict[str, Any]:
    return {"promptFeedback": {"blockReason": block_reason}, "modelVersion": "fake"}


def error_body(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def _answer(parts: list[dict[str, Any]], finish_reason: str) -> dict[str, Any]:
    content: dict[str, Any] = {"role": "model"}
    if parts:
        content["parts"] = parts
    return {
        "candidates": [{"content": content, "finishReason": finish_reason, "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 1290},
        "modelVersion": "fake",
    }


def _inline(mime_type: str, data: bytes) -> dict[str, str]:
    # The real API sends standard base64.
    return {"mimeType": mime_type, "data": base64.b64encode(data).decode("ascii")}


def _error(code: int, status: str, message: str) -> web.Response:
    return web.Response(
        status=code,
        text=json.dumps(error_body(code, status, message)),
        content_type="application/json",
    )


def _b64decode(text: str) -> bytes:
    # The SDK sends URL-safe base64; accept either alphabet, with or without padding.
    return base64.urlsafe_b64decode(
        text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
    )
