"""What operators see: structured logs without secrets, Prometheus metrics, and health endpoints.

Logs are JSON lines when not on a terminal (``LOG_FORMAT``), and every record
passes a filter that replaces each configured secret (tokens, API keys, the
signing secret, the database password) wherever it appears. ``/livez``,
``/readyz`` (also ``/healthz``) and ``/metrics`` are served on ``METRICS_PORT``
when it is set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy.engine import make_url

from bot.settings import Settings

# Attributes every LogRecord has; anything else was passed with ``extra=`` and belongs in the line.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_HIDDEN = "[redacted]"


class Metrics:
    """The bot's Prometheus metrics, in a registry of its own (tests build many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.generations = Counter(
            "imagine_generations",
            "Generations settled, by model and outcome",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.credits_charged = Counter(
            "imagine_credits_charged",
            "Credits captured for delivered images, by model",
            ["model"],
            registry=self.registry,
        )
        self.provider_latency = Histogram(
            "imagine_provider_latency_seconds",
            "Time a provider took to answer a whole generation",
            ["provider"],
            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 180),
            registry=self.registry,
        )
        self.provider_attempts = Counter(
            "imagine_provider_attempts",
            "HTTP calls made to a provider for generations, retries included, by how each ended",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.settlements = Counter(
            "imagine_settlements",
            "Holds this process settled: captured (by outcome), released (by reason) or swept",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.settlement_retries = Counter(
            "imagine_settlement_retries",
            "Settlement writes tried again after the database failed in a way that may pass",
            registry=self.registry,
        )
        self.settlements_pending = Gauge(
            "imagine_settlements_pending",
            "Settlements the database did not take in time, being retried in the background",
            registry=self.registry,
        )
        self.settled_before_capture = Counter(
            "imagine_settled_before_capture",
            "Generations whose images were posted after another settlement had ended them",
            ["model"],
            registry=self.registry,
        )
        self.ledger_discrepancies = Gauge(
            "imagine_ledger_discrepancies",
            "Accounts whose balance disagreed with their ledger entries at the last check",
            registry=self.registry,
        )
        self.ledger_checked = Gauge(
            "imagine_ledger_checked_timestamp_seconds",
            "When the ledger was last checked (Unix time)",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "imagine_generations_in_flight",
            "Generations held and not yet settled (queued or running)",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "imagine_queue_depth",
            "Generations waiting for a provider slot",
            ["provider"],
            registry=self.registry,
        )

        self.purchases = Counter(
            "imagine_purchases",
            "Payment events handled, by source and what they did (granted, taken_back, "
            "given_back, closed, repeated, ignored)",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.purchase_alerts = Counter(
            "imagine_purchase_alerts",
            "Payment events refused for admins to look at (a forged signature, a session the "
            "bot did not create, an amount that does not match), by reason",
            ["source", "reason"],
            registry=self.registry,
        )

        self.budget_share = Gauge(
            "imagine_provider_budget_share",
            "Share of a provider's monthly budget committed this month, at the last quote",
            ["provider"],
            registry=self.registry,
        )
        self.circuit_open = Gauge(
            "imagine_provider_circuit_open",
            "1 while a provider's circuit is open (it failed its last CIRCUIT_FAILURES "
            "generations) or on trial, else 0",
            ["provider"],
            registry=self.registry,
        )
        self.budget_alerts = Counter(
            "imagine_provider_budget_alerts",
            "Times admins were told a provider passed 80% of its monthly budget",
            ["provider"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((key, value) for key, value in record.__dict__.items() if key not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class RedactSecrets(logging.Filter):
    """Replace every configured secret in a record's text, arguments and extra fields."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret containing another is hidden whole.
        self.secrets = sorted({secret for secret in secrets if len(secret) >= 6}, key=len)[::-1]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self._hide(text), None
        if record.exc_text:
            record.exc_text = self._hide(record.exc_text)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self._hide(value))
        return True

    def _hide(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, _HIDDEN)
        return text


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value set, every provider's API key among them, and the database password."""
    values = [
        value
        for name in settings.secret_variables()
        if (value := settings.environment_value(name)) is not None
    ]
    password = make_url(settings.database_url).password
    if password:
        values.append(str(password))
    return values


def configure_logging(settings: Settings, level: str) -> None:
    """Root logging to standard error: JSON or text, with secrets redacted from every record."""
    handler = logging.StreamHandler(sys.stderr)
    as_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stderr.isatty()
    )
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RedactSecrets(secrets_of(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


HealthCheck = Callable[[], bool]

DATABASE_ANSWER_SECONDS = 1.0
"""How long ``/readyz`` waits for the database: longer, and the bot is not fit to take traffic."""


def health_application(
    metrics: Metrics, database_ok: Callable[[], Awaitable[Any]], platforms: dict[str, HealthCheck]
) -> web.Application:
    """``/livez`` (the event loop answers), ``/readyz`` and its alias ``/healthz``, and ``/metrics``.

    Liveness is for restarts, readiness for sending traffic: a slow database
    makes the bot unready, but restarting it would only cut short the
    generations it is running.
    """

    async def livez(_request: web.Request) -> web.Response:
        # Nothing but the loop itself: a blocked loop leaves this unanswered, and that is the signal.
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        deadline = asyncio.timeout(DATABASE_ANSWER_SECONDS)
        try:
            async with deadline:
                await database_ok()
            database = "ok"
        except Exception as error:
            # A driver's own TimeoutError is its failure, not our deadline passing.
            database = (
                f"unreachable: timed out after {DATABASE_ANSWER_SECONDS:g} s"
                if deadline.expired()
                else f"unreachable: {type(error).__name__}"
            )
        connected = {name: check() for name, check in platforms.items()}
        ready = database == "ok" and all(connected.values())
        return web.json_response(
            {
                "status": "ok" if ready else "unready",
                "database": database,
                "platforms": connected,
            },
            status=200 if ready else 503,
        )

    async def metrics_page(_request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    application = web.Application()
    application.router.add_get("/livez", livez)
    application.router.add_get("/readyz", readyz)
    # Probes configured with the name ``/healthz`` get the readiness answer.
    application.router.add_get("/healthz", readyz)
    application.router.add_get("/metrics", metrics_page)
    return application
