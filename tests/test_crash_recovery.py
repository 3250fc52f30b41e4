"""Bot processes sharing one database, for real: a killed one's hold is settled by the next run,
and a live one's generation is never settled by another, whatever its sweep interval."""

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


async def start_console(
    tmp_path: Path,
    *,
    local_delay: str = "60",
    sweep_interval: str = "0.2",
    stdout: int = asyncio.subprocess.DEVNULL,
) -> asyncio.subprocess.Process:
    # A slow "provider" keeps the generation running; a fast sweep notices a dead one soon.
    command, env = command_and_environment(
        tmp_path, {"LOCAL_DELAY_SECONDS": local_delay, "SWEEP_INTERVAL_SECONDS": sweep_interval}
    )
    return await asyncio.create_subprocess_exec(
        *command,
        "console",
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=stdout,
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


async def until_generating(ledger: Ledger) -> None:
    """Until the one generation another process started is running."""

    async def running() -> bool:
        generation = await only_generation(ledger)
        return generation is not None and generation.status == GenerationStatus.RUNNING

    await until(running)


async def test_a_hold_left_by_a_killed_bot_is_released_by_the_next_run(
    tmp_path: Path, ledger: Ledger
) -> None:
    first = await start_console(tmp_path)
    assert first.stdin is not None
    first.stdin.write(b"/imagine model:local-sketch count:2 a fox in snow\ny\n")
    await first.stdin.drain()

    await until_generating(ledger)
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


async def test_a_process_sweeping_often_never_settles_a_generation_another_live_one_runs(
    tmp_path: Path, ledger: Ledger
) -> None:
    # The generation takes about 3 s; its process renews its lease every 2 s.
    generating = await start_console(
        tmp_path, local_delay="1.5", sweep_interval="2", stdout=asyncio.subprocess.PIPE
    )
    assert generating.stdin is not None
    generating.stdin.write(b"/imagine model:local-sketch count:2 a fox in snow\ny\n")
    await generating.stdin.drain()

    await until_generating(ledger)
    # Another bot on the same database sweeps twenty times a second meanwhile.
    sweeping = await start_console(tmp_path, sweep_interval="0.05")
    try:
        generating.stdin.close()
        stdout, stderr = await asyncio.wait_for(generating.communicate(), 60)
    finally:
        sweeping.send_signal(signal.SIGTERM)
        await sweeping.communicate()

    assert generating.returncode == 0, stderr.decode()
    assert "Done: 2 images for 2 credits." in stdout.decode()
    generation = await only_generation(ledger)
    assert generation is not None
    assert (generation.status, generation.credits_charged) == (GenerationStatus.COMPLETED, 2)
    balance = await ledger.balance(OWNER)
    assert (balance.available, balance.held) == (98, 0)
    assert await ledger.verify() == []
