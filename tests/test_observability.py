"""Logs, metrics and health: JSON lines, no secret in any log line, /livez, /readyz and /metrics over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.app import open_service
from bot.flow import ImagineService
from bot.observability import (
    JsonFormatter,
    Metrics,
    RedactSecrets,
    health_application,
    secrets_of,
)
from bot.parsing import parse_imagine
from bot.platforms.slack import EVENTS_PATH, GENERATE_ACTION
from bot.settings import Settings
from tests.conftest import FakeClock
from tests.loopback_discord import TOKEN, LoopbackDiscord
from tests.loopback_slack import BOT_TOKEN, SIGNING_SECRET, LoopbackSlack, SlackDriver
from tests.test_cli import command_and_environment
from tests.test_console_flow import MODELS, RecordingDelivery
from tests.test_slack_cli import answered, both_platforms, free_port

GEMINI_SECRET = "AIza-gemini-key-that-must-never-be-logged"
OPENAI_SECRET = "sk-openai-key-that-must-never-be-logged"


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"msg": message, "args": args, "levelname": "INFO"})
    made.__dict__.update(extra)
    return made


def test_json_lines_carry_the_message_and_extra_fields() -> None:
    line = JsonFormatter().format(record("generation %s done", "g1", model="local-sketch"))

    parsed = json.loads(line)
    assert (parsed["message"], parsed["model"], parsed["level"]) == (
        "generation g1 done",
        "local-sketch",
        "INFO",
    )


def test_secrets_are_redacted_from_messages_arguments_and_extra_fields() -> None:
    hidden = record("calling with %s", GEMINI_SECRET, header=f"Bearer {OPENAI_SECRET}")

    RedactSecrets([GEMINI_SECRET, OPENAI_SECRET]).filter(hidden)

    line = JsonFormatter().format(hidden)
    assert GEMINI_SECRET not in line
    assert OPENAI_SECRET not in line
    assert "[redacted]" in line


def test_the_database_password_counts_as_a_secret() -> None:
    settings = Settings(
        _env_file=None,
        database_url="postgresql+asyncpg://bot:correct-horse-battery@db/imagine",
        slack_bot_token="xoxb-abcdefgh",
    )

    assert set(secrets_of(settings)) == {"correct-horse-battery", "xoxb-abcdefgh"}


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
async def service(
    tmp_path: Path, clock: FakeClock, metrics_port: int
) -> AsyncIterator[ImagineService]:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}",
        models_file=models_file,
        metrics_host="127.0.0.1",
        metrics_port=metrics_port,
    )
    async with open_service(settings, extra_admins=frozenset({"console:bank"}), clock=clock) as svc:
        await svc.credits.grant("console:bank", "console:ana", 100, "metrics test")
        yield svc


async def fetch(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def database_that_hangs() -> None:
    await asyncio.Event().wait()


@pytest.fixture
async def hung_database_port() -> AsyncIterator[int]:
    """The health endpoints alone, in front of a database ping that never answers."""
    port = free_port()
    runner = web.AppRunner(
        health_application(Metrics(), database_that_hangs, {"discord": lambda: True}),
        access_log=None,
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


async def test_livez_answers_while_the_database_hangs(hung_database_port: int) -> None:
    status, body = await fetch(hung_database_port, "/livez")

    assert status == 200
    assert json.loads(body) == {"status": "ok"}


async def test_readyz_is_unready_within_seconds_when_the_database_hangs(
    hung_database_port: int,
) -> None:
    started = time.monotonic()
    status, body = await fetch(hung_database_port, "/readyz")

    assert time.monotonic() - started < 5
    assert status == 503
    assert json.loads(body) == {
        "status": "unready",
        "database": "unreachable: timed out after 1 s",
        "platforms": {"discord": True},
    }


async def test_readyz_reports_the_database_and_platforms(
    service: ImagineService, metrics_port: int
) -> None:
    status, body = await fetch(metrics_port, "/readyz")

    assert status == 200
    assert json.loads(body) == {"status": "ok", "database": "ok", "platforms": {}}


async def test_readyz_is_unready_while_a_platform_is_disconnected(
    service: ImagineService, metrics_port: int
) -> None:
    service.platform_checks["discord"] = lambda: False

    status, body = await fetch(metrics_port, "/readyz")

    assert status == 503
    assert json.loads(body) == {
        "status": "unready",
        "database": "ok",
        "platforms": {"discord": False},
    }


@pytest.mark.parametrize("discord_connected", [True, False])
async def test_healthz_answers_as_readyz(
    service: ImagineService, metrics_port: int, discord_connected: bool
) -> None:
    service.platform_checks["discord"] = lambda: discord_connected

    assert await fetch(metrics_port, "/healthz") == await fetch(metrics_port, "/readyz")


async def test_metrics_count_generations_credits_and_provider_latency(
    service: ImagineService, metrics_port: int
) -> None:
    quote = await service.quote(
        "console:ana", parse_imagine("model:local-sketch count:2 a fox", service.catalog)
    )
    await service.confirm(quote.id, "console:ana", RecordingDelivery())

    status, body = await fetch(metrics_port, "/metrics")

    assert status == 200
    assert 'imagine_generations_total{model="local-sketch",outcome="completed"} 1.0' in body
    assert 'imagine_credits_charged_total{model="local-sketch"} 2.0' in body
    assert 'imagine_provider_latency_seconds_count{provider="local"} 1.0' in body
    assert "imagine_generations_in_flight 0.0" in body
    assert 'imagine_queue_depth{provider="local"} 0.0' in body


async def test_each_generation_logs_one_outcome_line(
    service: ImagineService, caplog: pytest.LogCaptureFixture
) -> None:
    quote = await service.quote(
        "console:ana", parse_imagine("model:local-sketch a fox", service.catalog)
    )
    with caplog.at_level(logging.INFO, logger="bot.flow"):
        await service.confirm(quote.id, "console:ana", RecordingDelivery())

    [line] = [r for r in caplog.records if getattr(r, "event", None) == "generation"]
    assert (line.request_id, line.account, line.model, line.outcome) == (  # type: ignore[attr-defined]
        quote.id,
        "console:ana",
        "local-sketch",
        "completed",
    )
    assert (line.images_delivered, line.credits_charged) == (1, 1)  # type: ignore[attr-defined]
    assert line.latency_ms >= 0  # type: ignore[attr-defined]


async def test_no_configured_secret_appears_in_any_log_line_of_a_full_run(tmp_path: Path) -> None:
    port = free_port()
    slack = LoopbackSlack()
    async with slack, LoopbackDiscord() as discord_fake:
        command, env = command_and_environment(
            tmp_path,
            {
                **both_platforms(discord_fake, slack, port),
                # Keys for providers that cannot be reached: their failures get logged too.
                "GEMINI_API_KEY": GEMINI_SECRET,
                "GEMINI_BASE_URL": "http://127.0.0.1:9",
                "OPENAI_API_KEY": OPENAI_SECRET,
                "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "DEBUG",
                "STARTING_CREDITS": "10",
            },
        )
        process = await asyncio.create_subprocess_exec(
            *command, "run", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
        )
        assert process.stderr is not None
        # Read as it is written: at DEBUG the start-up alone (the migrations) logs more than a
        # pipe holds, and a bot blocked writing its log would never answer.
        reading = asyncio.create_task(process.stderr.read())
        try:
            async with aiohttp.ClientSession() as session:
                driver = SlackDriver(f"http://127.0.0.1:{port}{EVENTS_PATH}", slack, session)
                _, acknowledgement, _ = await answered(driver)
                [actions] = [b for b in acknowledgement["blocks"] if b["type"] == "actions"]  # type: ignore[union-attr]
                await driver.click(GENERATE_ACTION, actions["elements"][0]["value"])
                await slack.wait_for(lambda: slack.uploads)
            await discord_fake.wait_for(lambda: discord_fake.commands)
            interaction = await discord_fake.slash(
                "imagine", {"prompt": "a fox", "model": "local-sketch"}
            )
            await discord_fake.wait_for(lambda: interaction.original_id is not None)
        finally:
            process.send_signal(signal.SIGTERM)
            stderr = await asyncio.wait_for(reading, 60)
            await asyncio.wait_for(process.wait(), 60)

    logged = stderr.decode()
    assert process.returncode == 0, logged[-2000:]
    for secret in (TOKEN, BOT_TOKEN, SIGNING_SECRET, GEMINI_SECRET, OPENAI_SECRET):
        assert secret not in logged
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "generation" for line in lines)
