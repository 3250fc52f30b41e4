"""A loopback stand-in for the parts of OpenAI's HTTP API the image provider uses.

Tests drive the real ``openai`` SDK against it, so request encoding, retries,
timeouts and error parsing are the SDK's own. Every request is recorded;
answers are successes with real PNGs unless a test scripts errors or delays
for the next requests, in the order they arrive.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web
from PIL import Image

API_KEY = "sk-test-fake"
KNOWN_MODELS = frozenset({"gpt-image-2", "gpt-image-1.5", "gpt-image-1-mini"})


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Call:
    """One request as the fake received it."""

    method: str
    path: str
    body: dict[str, object]
    """The JSON body, or the text fields of a multipart body (as strings, as sent)."""
    uploads: tuple[Upload, ...] = ()


@dataclass(frozen=True)
class Answer:
    """A scripted answer: wait ``delay`` seconds, then an error if ``status`` is set, else success."""

    delay: float = 0.0
    status: int | None = None
    message: str = ""
    code: str | None = None
    empty: bool = False
    """Succeed with no image data at all."""
    hang_up: bool = False
    """Close the connection without answering, as if it broke after the request arrived."""


Succeed = Callable[[], Awaitable[web.Response]]


class FakeOpenAI:
    """The fake server; ``async with FakeOpenAI() as fake`` runs it on a free loopback port."""

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""
        self._script: deque[Answer] = deque()
        self._runner: web.AppRunner | None = None

    def then_error(
        self, status: int, message: str, code: str | None = None, times: int = 1
    ) -> None:
        self._script.extend([Answer(status=status, message=message, code=code)] * times)

    def then_delay(self, seconds: float, times: int = 1) -> None:
        self._script.extend([Answer(delay=seconds)] * times)

    def then_succeed(self) -> None:
        self._script.append(Answer())

    def then_no_image(self) -> None:
        self._script.append(Answer(empty=True))

    def then_hang_up(self, times: int = 1) -> None:
        self._script.extend([Answer(hang_up=True)] * times)

    async def __aenter__(self) -> FakeOpenAI:
        # Big enough for reference images; handlers stop when the client hangs up,
        # as a real server's work would no longer matter.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/images/edits", self._images)
        app.router.add_get("/v1/models/{model}", self._model)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _images(self, request: web.Request) -> web.Response:
        if request.content_type == "multipart/form-data":
            body, uploads = await _multipart(request)
        else:
            body, uploads = await request.json(), ()
        call = Call(request.method, request.path, body, uploads)

        async def succeed() -> web.Response:
            size = str(body.get("size", "1024x1024"))
            encoded = _png_base64(size)
            count = int(str(body.get("n", 1)))
            return web.json_response(
                {"created": int(time.time()), "data": [{"b64_json": encoded}] * count, "size": size}
            )

        return await self._answer(request, call, succeed)

    async def _model(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]

        async def succeed() -> web.Response:
            if model not in KNOWN_MODELS:
                return _error(404, f"The model '{model}' does not exist", "model_not_found")
            return web.json_response(
                {"id": model, "object": "model", "created": 0, "owned_by": "system"}
            )

        return await self._answer(request, Call(request.method, request.path, {}), succeed)

    async def _answer(self, request: web.Request, call: Call, succeed: Succeed) -> web.Response:
        """Record the call, check the key, then give the next scripted answer or ``succeed()``."""
        self.calls.append(call)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        answer = self._script.popleft() if self._script else Answer()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(answer.delay)
            if answer.hang_up:
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError()
            if answer.status is not None:
                return _error(answer.status, answer.message, answer.code)
            if answer.empty:
                return web.json_response({"created": int(time.time()), "data": []})
            return await succeed()
        finally:
            self.in_flight -= 1


def _error(status: int, message: str, code: str | None) -> web.Response:
    """OpenAI's error shape; ``retry-after-ms`` keeps the SDK's retries of it fast."""
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return web.Response(
        status=status,
        text=json.dumps({"error": error}),
        content_type="application/json",
        headers={"retry-after-ms": "1"},
    )


async def _multipart(request: web.Request) -> tuple[dict[str, object], tuple[Upload, ...]]:
    fields: dict[str, object] = {}
    uploads: list[Upload] = []
    for name, value in (await request.post()).items():
        if isinstance(value, web.FileField):
            uploads.append(Upload(name, value.filename, value.content_type, value.file.read()))
        else:
            fields[name] = value
    return fields, tuple(uploads)


@functools.cache
def _png_base64(size: str) -> str:
    """A real PNG of ``size`` ("WIDTHxHEIGHT"), made once per size."""
    width, height = (int(side) for side in size.split("x"))
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
