"""`imagine-bot run` serving Slack in HTTP mode as a real process, and both platforms in one process."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.platforms.slack import EVENTS_PATH, GENERATE_ACTION
from bot.purchases import WEBHOOK_PATH
from tests.cli_helpers import command_and_environment
from tests.loopback_discord import GUILD_ID, TOKEN, LoopbackDiscord
from tests.loopback_slack import BOT_TOKEN, SIGNING_SECRET, LoopbackSlack, SlackDriver


@pytest.fixture
async def slack() -> AsyncIterator[LoopbackSlack]:
    async with LoopbackSlack() as fake:
        yield fake


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def both_platforms(
    discord_fake: LoopbackDiscord, slack: LoopbackSlack, port: int
) -> dict[str, str]:
    """Settings that serve Discord and Slack (HTTP mode on ``port``) against the loopback fakes."""
    return {
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_API_BASE": discord_fake.api_base,
        "DISCORD_GUILD_IDS": str(GUILD_ID),
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_BASE_URL": slack.base_url,
        "SLACK_HTTP_HOST": "127.0.0.1",
        "SLACK_HTTP_PORT": str(port),
    }


async def answered(driver: SlackDriver) -> tuple[int, dict[str, object], str]:
    """The first slash command once the process listens (it needs a moment to start)."""
    async with asyncio.timeout(30):
        while True:
            try:
                return await driver.command("/imagine", "model:local-sketch a lighthouse")
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)


async def test_run_serves_slack_over_http_and_stops_cleanly_on_sigterm(
    tmp_path: Path, slack: LoopbackSlack
) -> None:
    port = free_port()
    command, env = command_and_environment(
        tmp_path,
        {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_BASE_URL": slack.base_url,
            "SLACK_HTTP_HOST": "127.0.0.1",
            "SLACK_HTTP_PORT": str(port),
            "STARTING_CREDITS": "10",
        },
    )
    process = await asyncio.create_subprocess_exec(
        *command, "run", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aiohttp.ClientSession() as session:
            driver = SlackDriver(f"http://127.0.0.1:{port}{EVENTS_PATH}", slack, session)
            status, acknowledgement, _ = await answered(driver)
            [actions] = [b for b in acknowledgement["blocks"] if b["type"] == "actions"]
            generation = actions["elements"][0]["value"]
            await driver.click(GENERATE_ACTION, generation)
            await slack.wait_for(lambda: slack.uploads)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert status == 200
    assert process.returncode == 0, stderr.decode()
    [upload] = slack.uploads
    assert len(upload.files) == 1


async def test_run_serves_discord_and_slack_in_one_process(
    tmp_path: Path, slack: LoopbackSlack
) -> None:
    port = free_port()
    async with LoopbackDiscord() as discord_fake:
        command, env = command_and_environment(tmp_path, both_platforms(discord_fake, slack, port))
        process = await asyncio.create_subprocess_exec(
            *command, "run", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with aiohttp.ClientSession() as session:
                driver = SlackDriver(f"http://127.0.0.1:{port}{EVENTS_PATH}", slack, session)
                status, _, _ = await answered(driver)
            await discord_fake.wait_for(lambda: discord_fake.commands)
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert status == 200
    assert process.returncode == 0, stderr.decode()


async def test_run_serves_slack_and_stripe_s_webhook_on_the_one_web_port(
    tmp_path: Path, slack: LoopbackSlack
) -> None:
    port = free_port()
    (tmp_path / "pricing.toml").write_text('[packs.starter]\ncredits = 500\nprice = "4.99"\n')
    command, env = command_and_environment(
        tmp_path,
        {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_BASE_URL": slack.base_url,
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(port),
            "PRICING_FILE": str(tmp_path / "pricing.toml"),
            "STRIPE_API_KEY": "sk_test_loopback",
            "STRIPE_WEBHOOK_SECRET": "whsec_loopback",
            "STRIPE_API_BASE": "http://127.0.0.1:9",
            "PUBLIC_URL": "https://bot.example.com",
        },
    )
    process = await asyncio.create_subprocess_exec(
        *command, "run", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aiohttp.ClientSession() as session:
            driver = SlackDriver(f"http://127.0.0.1:{port}{EVENTS_PATH}", slack, session)
            status, _, _ = await answered(driver)
            async with session.post(
                f"http://127.0.0.1:{port}{WEBHOOK_PATH}", data=b"{}"
            ) as unsigned:
                webhook_status = unsigned.status
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert (status, webhook_status) == (200, 400)
    assert process.returncode == 0, stderr.decode()
