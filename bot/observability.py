"""What operators see: structured logs without secrets, Prometheus metrics, and a health endpoint.

Logs are JSON lines when not on a terminal (``LOG_FORMAT``), and every record
passes a filter that replaces each configured secret (tokens, API keys, the
signing secret, the database password) wherever it appears. ``/metrics`` and
``/healthz`` are served on ``METRICS_PORT`` when it is set.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable
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

from bot.settings import SECRET_FIELD, Settings

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
    """Every secret value the settings hold, including the database password."""
    values = [
        str(getattr(settings, name))
        for name in type(settings).model_fields
        if SECRET_FIELD.search(name) and getattr(settings, name)
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


def health_application(
    metrics: Metrics, database_ok: Callable[[], Any], platforms: dict[str, HealthCheck]
) -> web.Application:
    """``/healthz`` (database reachable, platforms connected) and ``/metrics``."""

    async def healthz(_request: web.Request) -> web.Response:
        try:
            await database_ok()
            database = "ok"
        except Exception as error:
            database = f"unreachable: {type(error).__name__}"
        connected = {name: check() for name, check in platforms.items()}
        healthy = database == "ok" and all(connected.values())
        return web.json_response(
            {
                "status": "ok" if healthy else "unhealthy",
                "database": database,
                "platforms": connected,
            },
            status=200 if healthy else 503,
        )

    async def metrics_page(_request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    application = web.Application()
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/metrics", metrics_page)
    return application
