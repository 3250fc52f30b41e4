"""A circuit breaker per provider, so a provider that is down is not offered to the next user too.

A circuit counts a provider's generations in a row that found it down (unavailable,
timed out, rate-limited, refusing our key). After ``CIRCUIT_FAILURES`` of them it
opens: quotes for its models are answered with the cause and an alternative model
(``ImagineService.quote``). After ``CIRCUIT_COOLDOWN_SECONDS`` one quote is let
through as a trial; the next generation the provider answers closes the circuit,
and the next that finds it down opens it for another cool-down. A trial that is
never confirmed (cancelled, expired) lapses after one cool-down, and the next
quote becomes the trial.

Generations the provider answered without an image it was asked for (a safety
block, a request it rejected, text instead of a picture) prove it is up; ones that
never reached it (a queue that ran out of time, a bug of ours, a shutdown) say
nothing either way.

The state lives in this process's memory: each process learns on its own, and a
restart closes every circuit. That is enough for its purpose, sparing users a
provider that is failing now, and needs no database write per generation.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger import utc_now
from providers.base import GenerationResult
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

logger = logging.getLogger(__name__)


class Health(enum.Enum):
    """What one generation's call to its provider says about the provider."""

    ANSWERED = "answered"
    DOWN = "down"
    UNKNOWN = "unknown"


_DOWN = (ProviderUnavailable, ProviderTimeout, RateLimited, TimeoutError, ProviderNotConfigured)
"""A rejected key (401/403, ``ProviderNotConfigured``) fails every request alike, as an outage does."""
_ANSWERED = (ContentBlocked, BadRequest, NoImageReturned)


def judge_error(error: BaseException) -> tuple[Health, str]:
    """What a provider call that raised ``error`` says about the provider, and the error's code."""
    code = error.code if isinstance(error, ProviderError) else type(error).__name__
    if isinstance(error, TimeoutError):
        code = ProviderTimeout.code
    if isinstance(error, _DOWN):
        return Health.DOWN, code
    if isinstance(error, _ANSWERED):
        return Health.ANSWERED, code
    return Health.UNKNOWN, code


def judge_result(result: GenerationResult) -> tuple[Health, str | None]:
    """What a provider call that returned ``result`` says: any image made means it is up."""
    if result.images:
        return Health.ANSWERED, None
    if result.failures:
        return judge_error(result.failures[0])
    # An empty answer with no reason is what the flow reports as unavailable.
    return Health.DOWN, ProviderUnavailable.code


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    """Quotes get the alternative until ``retry_at``."""
    HALF_OPEN = "half_open"
    """The cool-down is over: the next quote is the trial (or one is out, until ``retry_at``)."""


@dataclass(frozen=True)
class CircuitView:
    """One provider's circuit as it is now, for the admin dashboard and the logs."""

    provider: str
    state: CircuitState
    failures: int
    """Generations in a row that found the provider down."""
    last_error: str | None
    """The error code of the last of them."""
    opened_at: datetime | None
    retry_at: datetime | None
    """Open: when the cool-down ends. Half-open with a trial out: when that trial lapses."""


@dataclass
class _Circuit:
    failures: int = 0
    last_error: str | None = None
    opened_at: datetime | None = None
    trial_at: datetime | None = None


class Circuits:
    """Every provider's circuit; ``record`` feeds it, ``admit`` and ``closed`` ask it."""

    def __init__(
        self,
        providers: Iterable[str] = (),
        *,
        failures: int = 5,
        cooldown: timedelta = timedelta(seconds=60),
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if failures < 1:
            raise ValueError("a circuit opens after at least one failure")
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._circuits = {name: _Circuit() for name in providers}

    def admit(self, provider: str) -> bool:
        """Whether a new quote for ``provider``'s models may go ahead.

        Past the cool-down the first quote asking is let through as the trial,
        and others are not until it has an outcome, or lapses.
        """
        circuit = self._circuits.get(provider)
        if circuit is None or circuit.opened_at is None:
            return True
        now = self._clock()
        if now < circuit.opened_at + self.cooldown:
            return False
        if circuit.trial_at is not None and now < circuit.trial_at + self.cooldown:
            return False
        circuit.trial_at = now
        logger.info("provider %s: letting one request through as a trial", provider)
        return True

    def closed(self, provider: str) -> bool:
        """Whether ``provider`` is serving normally (an alternative must be, not on trial)."""
        circuit = self._circuits.get(provider)
        return circuit is None or circuit.opened_at is None

    def failures_of(self, provider: str) -> int:
        circuit = self._circuits.get(provider)
        return 0 if circuit is None else circuit.failures

    def record(self, provider: str, health: Health, code: str | None = None) -> None:
        """Count one generation's outcome at ``provider`` (``code``: its error's, when down)."""
        if health is Health.UNKNOWN:
            return
        circuit = self._circuits.setdefault(provider, _Circuit())
        if health is Health.ANSWERED:
            if circuit.opened_at is not None:
                logger.warning("provider %s answered again: circuit closed", provider)
            self._circuits[provider] = _Circuit()
            return
        circuit.failures += 1
        circuit.last_error = code
        # Open, or a trial that failed: still down, so another whole cool-down.
        if circuit.opened_at is not None or circuit.failures >= self.failures:
            if circuit.opened_at is None:
                logger.warning(
                    "provider %s failed %d generations in a row (last: %s): circuit open for %s s",
                    provider,
                    circuit.failures,
                    code,
                    f"{self.cooldown.total_seconds():g}",
                    extra={"event": "circuit_open", "provider": provider},
                )
            circuit.opened_at = self._clock()
            circuit.trial_at = None

    def state(self, provider: str) -> CircuitView:
        circuit = self._circuits.get(provider, _Circuit())
        if circuit.opened_at is None:
            return CircuitView(
                provider, CircuitState.CLOSED, circuit.failures, circuit.last_error, None, None
            )
        cool_until = circuit.opened_at + self.cooldown
        if self._clock() < cool_until:
            state, retry_at = CircuitState.OPEN, cool_until
        else:
            state = CircuitState.HALF_OPEN
            retry_at = None if circuit.trial_at is None else circuit.trial_at + self.cooldown
        return CircuitView(
            provider, state, circuit.failures, circuit.last_error, circuit.opened_at, retry_at
        )

    def states(self) -> list[CircuitView]:
        """Every provider's circuit, by provider name (read-only copies)."""
        return [self.state(provider) for provider in sorted(self._circuits)]
