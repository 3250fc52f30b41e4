"""A bot killed outright (SIGKILL) mid-generation: the next run settles the hold it left behind."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bot import messages
from ledger import Generation, GenerationStatus, Ledger, create_engine
from tests.test_cli import command_and_environment

OWNER = "console:local"


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    """The same SQLite file the bot processes use, read from the test."""
    opened = Ledger(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"))
    try:
        yield opened
    finally:
        await opened.close()


async def start_console(tmp_path: Path) -> asyncio.subprocess.Process:
    command, env = command_and_environment(
        tmp_path,
        # A slow "provider" keeps the generation running; a fast sweep notices the dead one soon.
        {"LOCAL_DELAY_SECONDS": "60", "SWEEP_INTERVAL_SECONDS": "0.2"},
    )
    return await asyncio.create_subprocess_exec(
        *command,
        "console",
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll the database another process writes (no event can cross the process boundary)."""
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the bot never got there")


async def only_generation(ledger: Ledger) -> Generation | None:
    try:
        found = await ledger.history(OWNER, include_unconfirmed=True)
    except Exception:
        return None
    return found[0] if found else None


async def test_a_hold_left_by_a_killed_bot_is_released_by_the_next_run(
    tmp_path: Path, ledger: Ledger
) -> None:
    first = await start_console(tmp_path)
    assert first.stdin is not None
    first.stdin.write(b"/imagine model:local-sketch count:2 a fox in snow\ny\n")
    await first.stdin.drain()

    async def running() -> bool:
        generation = await only_generation(ledger)
        return generation is not None and generation.status == GenerationStatus.RUNNING

    await until(running)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    assert (await ledger.balance(OWNER)).held == 2

    second = await start_console(tmp_path)

    async def settled() -> bool:
        generation = await only_generation(ledger)
        return generation is not None and generation.status != GenerationStatus.RUNNING

    try:
        await until(settled)
    finally:
        second.send_signal(signal.SIGTERM)
        _, stderr = await second.communicate()

    assert second.returncode == 0, stderr.decode()
    generation = await only_generation(ledger)
    assert generation is not None
    assert (generation.status, generation.error_code, generation.error_message) == (
        GenerationStatus.FAILED,
        "interrupted",
        messages.INTERRUPTED_RELEASED,
    )
    balance = await ledger.balance(OWNER)
    assert (balance.available, balance.held) == (100, 0)
    assert await ledger.verify() == []
