"""HTTP calls to a provider: each one recorded for its generation, retried only when nothing was made.

A call that timed out on our side, or whose connection broke after the request
went out, may still have been made and billed by the provider, so it is never
sent again. Only an answer that proves nothing was made is retried: 429 (slow
down), 408 (the server gave up waiting for our request), 500 and 503 (the
provider's own failure), and a connection that could not be opened (nothing
was sent). 502 and 504 are not: they are a gateway saying the provider behind
it went silent or away mid-call, our timeout seen one hop further on.

Neither SDK can be told this. The openai SDK's ``max_retries`` also retries
timeouts and lost connections (``AsyncAPIClient.request`` in
``openai/_base_client.py``), and google-genai's ``HttpRetryOptions`` retries
every httpx timeout whatever status codes it is given (``retry_args`` in
``google/genai/_api_client.py``). So both run with their retries off on a
``ProviderHttpClient``, which retries under them and records every call.

Each call is written to the attempt log of the generation being run
(``recording_attempts``) under the image it is for (``generate_each`` sets
it); calls made outside one (``missing_models``) are not recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import ssl
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx2

RETRIED_STATUSES = frozenset({408, 429, 500, 503})


class CallOutcome(StrEnum):
    """How one HTTP call to a provider ended."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    REFUSED = "refused"
    """Any other answer: a 4xx but 429 (408 among them, which is retried), or an unexpected 1xx/3xx."""
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    """No connection could be opened: the request never left."""
    CONNECTION_LOST = "connection_lost"
    ABANDONED = "abandoned"
    """We stopped waiting: the generation's time limit, or the bot shutting down."""
    ERROR = "error"


@dataclass(frozen=True)
class Attempt:
    """One HTTP call made for a generation."""

    image: int
    """The image (0-based) of the request it was made for."""
    attempt: int
    """1 for the first call for that image, 2 for its first retry, and so on."""
    outcome: CallOutcome
    status: int | None
    """The HTTP status of the answer; None when no answer came."""
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "attempt": self.attempt,
            "outcome": str(self.outcome),
            "status": self.status,
            "seconds": round(self.seconds, 3),
        }


class AttemptLog:
    """The calls made for one generation, in the order they ended."""

    def __init__(self) -> None:
        self._attempts: list[Attempt] = []

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return tuple(self._attempts)

    def add(self, image: int, outcome: CallOutcome, status: int | None, seconds: float) -> None:
        number = 1 + sum(1 for attempt in self._attempts if attempt.image == image)
        self._attempts.append(Attempt(image, number, outcome, status, seconds))


_log: ContextVar[AttemptLog | None] = ContextVar("provider_attempt_log", default=None)
_image: ContextVar[int] = ContextVar("provider_image", default=0)


@contextlib.contextmanager
def recording_attempts() -> Iterator[AttemptLog]:
    """Record the provider calls made inside this block (and the tasks it starts) in a new log.

    A context variable carries it, because the calls are made deep inside an
    SDK that knows nothing of generations.
    """
    log = AttemptLog()
    token = _log.set(log)
    try:
        yield log
    finally:
        _log.reset(token)


def calls_are_for_image(index: int) -> None:
    """Mark the calls the current task makes from now on as made for image ``index``."""
    _image.set(index)


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how far apart, a call is sent again after an answer that made nothing."""

    attempts: int = 3
    """Calls at most, the first included."""
    initial_delay_seconds: float = 0.5
    max_delay_seconds: float = 8.0

    def delay(self, attempt: int, headers: Mapping[str, str] | None) -> float:
        """The wait after call number ``attempt``: what the provider asked for, else backoff with jitter."""
        asked = _retry_after(headers) if headers is not None else None
        if asked is None:
            # Up to a quarter off spreads the retries of calls that were refused together.
            asked = self.initial_delay_seconds * 2 ** (attempt - 1) * random.uniform(0.75, 1.0)
        return min(asked, self.max_delay_seconds)


@functools.cache
def shared_tls() -> ssl.SSLContext:
    """The TLS settings every provider client verifies servers with, as httpx2 makes them.

    Made once: loading the trust store takes about 20 ms, and each SDK client
    would otherwise load it again for every HTTP client it builds.
    """
    return httpx2.create_ssl_context()


class ProviderHttpClient(httpx2.AsyncClient):
    """An httpx client that retries only what is safe to retry, recording every call it makes."""

    def __init__(self, retries: RetryPolicy, **settings: Any) -> None:
        super().__init__(**({"verify": shared_tls()} | settings))
        self._retries = retries

    async def send(self, request: httpx2.Request, **options: Any) -> httpx2.Response:  # type: ignore[override]
        # Read once into memory, so that a retry sends the same body again.
        await request.aread()
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                response = await super().send(request, **options)
            except BaseException as error:
                outcome = _failure(error)
                _record(outcome, None, started)
                if outcome != CallOutcome.UNREACHABLE or attempt >= self._retries.attempts:
                    raise
                await asyncio.sleep(self._retries.delay(attempt, None))
                continue
            _record(_answer(response.status_code), response.status_code, started)
            if response.status_code not in RETRIED_STATUSES or attempt >= self._retries.attempts:
                return response
            await response.aclose()
            await asyncio.sleep(self._retries.delay(attempt, response.headers))


def _record(outcome: CallOutcome, status: int | None, started: float) -> None:
    log = _log.get()
    if log is not None:
        log.add(_image.get(), outcome, status, time.monotonic() - started)


def _answer(status: int) -> CallOutcome:
    if 200 <= status < 300:
        return CallOutcome.OK
    if status == 429:
        return CallOutcome.RATE_LIMITED
    if status >= 500:
        return CallOutcome.SERVER_ERROR
    return CallOutcome.REFUSED


def _failure(error: BaseException) -> CallOutcome:
    if isinstance(error, httpx2.ConnectError | httpx2.ConnectTimeout):
        return CallOutcome.UNREACHABLE
    if isinstance(error, httpx2.TimeoutException):
        return CallOutcome.TIMEOUT
    if isinstance(error, httpx2.TransportError):
        return CallOutcome.CONNECTION_LOST
    if isinstance(error, asyncio.CancelledError):
        return CallOutcome.ABANDONED
    return CallOutcome.ERROR


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait the answer asks for: OpenAI's ``retry-after-ms``, or ``Retry-After`` in seconds."""
    for name, per_second in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / per_second
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None
