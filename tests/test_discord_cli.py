"""`imagine-bot discord sync` and `imagine-bot run` (a real process) against the loopback Discord."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli_helpers import Finished, command_and_environment, imagine_bot
from tests.loopback_discord import GUILD_ID, TOKEN, LoopbackDiscord


@pytest.fixture
async def discord_fake() -> AsyncIterator[LoopbackDiscord]:
    async with LoopbackDiscord() as fake:
        yield fake


def discord_settings(discord_fake: LoopbackDiscord, environment: dict[str, str]) -> dict[str, str]:
    return {
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_API_BASE": discord_fake.api_base,
        "DISCORD_GUILD_IDS": str(GUILD_ID),
        "STARTING_CREDITS": "10",
        **environment,
    }


async def sync(cwd: Path, discord_fake: LoopbackDiscord, **environment: str) -> Finished:
    """``imagine-bot discord sync``, in a thread so that this test's loop goes on serving the fake."""
    return await asyncio.to_thread(
        imagine_bot, cwd, "discord", "sync", **discord_settings(discord_fake, environment)
    )


async def start(
    cwd: Path, discord_fake: LoopbackDiscord, *arguments: str, **environment: str
) -> asyncio.subprocess.Process:
    command, env = command_and_environment(cwd, discord_settings(discord_fake, environment))
    return await asyncio.create_subprocess_exec(
        *command,
        *arguments,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_discord_sync_registers_the_commands_and_says_where(
    tmp_path: Path, discord_fake: LoopbackDiscord
) -> None:
    result = await sync(tmp_path, discord_fake)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Synced the slash commands (guild {GUILD_ID})."
    [(scope, commands)] = discord_fake.sync_calls
    assert scope == str(GUILD_ID)
    assert "imagine" in {command["name"] for command in commands}


async def test_discord_sync_without_a_token_says_what_to_set(
    tmp_path: Path, discord_fake: LoopbackDiscord
) -> None:
    result = await sync(tmp_path, discord_fake, DISCORD_TOKEN="")

    assert result.returncode == 2
    assert "Set DISCORD_TOKEN" in result.stderr


async def test_run_serves_discord_generates_and_stops_cleanly_on_sigterm(
    tmp_path: Path, discord_fake: LoopbackDiscord
) -> None:
    process = await start(tmp_path, discord_fake, "run")
    try:
        await discord_fake.wait_for(lambda: discord_fake.commands)
        await discord_fake.wait_until_ready()
        interaction = await discord_fake.slash(
            "imagine", {"prompt": "a lighthouse", "model": "local-sketch"}
        )
        await discord_fake.wait_for(lambda: interaction.original_id is not None)
        message = discord_fake.original(interaction)
        click = await discord_fake.click(message, message.button("Generate"))
        await discord_fake.wait_for(lambda: message.content.startswith("Done"))
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 0, stderr.decode()
    [posted] = discord_fake.followups(click)
    assert len(posted.files) == 1
    assert message.content.endswith("Balance: 9 credits available.")
