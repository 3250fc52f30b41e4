"""Two real bot processes on one PostgreSQL database, each running one of Discord's two shards.

Each is ``imagine-bot run`` with ``DISCORD_SHARD_COUNT=2`` and its own
``DISCORD_SHARD_IDS``, connected to the loopback Discord, which sends a
guild's events to the session of shard ``(guild_id >> 22) % 2`` only and
refuses a shard identified twice. ``GUILD_ID`` is on shard 1, ``OTHER_GUILD_ID``
on shard 0, so a command's guild decides which process answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from ledger import GenerationStatus, Ledger, create_engine
from tests.cli_helpers import command_and_environment
from tests.conftest import postgres_database, require_postgres
from tests.loopback_discord import (
    ALICE,
    BOB,
    GUILD_ID,
    OTHER_GUILD_ID,
    TOKEN,
    Interaction,
    LoopbackDiscord,
    Message,
    User,
)

# One event loop for the module: the first two tests share one pair of processes.
pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

MODELS = """
[models.local-sketch]
provider = "local"
provider_model = "procedural-v1"
name = "Local Sketch"
credits_per_image = 1
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 1
"""
STARTING_CREDITS = 10
SWEEP_SECONDS = 1.0
"""Each process renews its leases this often, so a killed one's run out after three seconds."""
PATIENCE_SECONDS = 40
SHARD_OF = {OTHER_GUILD_ID: 0, GUILD_ID: 1}


@dataclass
class Processes:
    """The two bot processes, by the shard each runs, and the database they share."""

    by_shard: dict[int, asyncio.subprocess.Process]
    database_url: str

    async def balance(self, user: User) -> int:
        ledger = Ledger(create_engine(self.database_url))
        try:
            return (await ledger.balance(f"discord:{user.id}")).available
        finally:
            await ledger.close()

    async def statuses(self, user: User) -> list[GenerationStatus]:
        """The user's confirmed generations' statuses, oldest first, once none is running
        (a sweep settles in its own time), or as they are after ``PATIENCE_SECONDS``."""
        ledger = Ledger(create_engine(self.database_url))
        try:
            for _ in range(int(PATIENCE_SECONDS / SWEEP_SECONDS)):
                history = await ledger.history(f"discord:{user.id}", limit=50)
                if all(generation.status.is_final for generation in history):
                    break
                await asyncio.sleep(SWEEP_SECONDS)
        finally:
            await ledger.close()
        return [generation.status for generation in reversed(history)]


@contextlib.asynccontextmanager
async def loopback_discord() -> AsyncIterator[LoopbackDiscord]:
    async with LoopbackDiscord() as fake:
        fake.add_guild(OTHER_GUILD_ID)
        fake.recommended_shards = 2
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_fake() -> AsyncIterator[LoopbackDiscord]:
    async with loopback_discord() as fake:
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_processes(
    tmp_path_factory: pytest.TempPathFactory, shared_fake: LoopbackDiscord
) -> AsyncIterator[Processes]:
    """Two processes that pause two seconds before each image, for the tests that leave them
    running; each test has people of its own."""
    async with two_processes(
        tmp_path_factory.mktemp("processes"), shared_fake, delays=(2, 2)
    ) as processes:
        yield processes


@contextlib.asynccontextmanager
async def two_processes(
    tmp_path: Path, discord_fake: LoopbackDiscord, *, delays: tuple[float, float]
) -> AsyncIterator[Processes]:
    """Shard 0's process and shard 1's, each pausing ``delays[shard]`` before each image."""
    await require_postgres()
    (tmp_path / "models.toml").write_text(MODELS)
    async with postgres_database() as database_url:
        started: dict[int, asyncio.subprocess.Process] = {}
        try:
            for shard in (0, 1):
                command, environment = command_and_environment(
                    tmp_path,
                    {
                        "DATABASE_URL": database_url,
                        "MODELS_FILE": str(tmp_path / "models.toml"),
                        "STARTING_CREDITS": str(STARTING_CREDITS),
                        "USER_CONCURRENCY": "1",
                        "SWEEP_INTERVAL_SECONDS": str(SWEEP_SECONDS),
                        "LOCAL_DELAY_SECONDS": str(delays[shard]),
                        "DISCORD_TOKEN": TOKEN,
                        "DISCORD_API_BASE": discord_fake.api_base,
                        "DISCORD_GUILD_IDS": f"{GUILD_ID},{OTHER_GUILD_ID}",
                        "DISCORD_SHARD_COUNT": "2",
                        "DISCORD_SHARD_IDS": str(shard),
                    },
                )
                started[shard] = await asyncio.create_subprocess_exec(
                    *command,
                    "run",
                    cwd=tmp_path,
                    env=environment,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            await discord_fake.wait_for(
                lambda: both_shards_ready(discord_fake), patience=PATIENCE_SECONDS
            )
            yield Processes(started, database_url)
        finally:
            for process in started.values():
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            for process in started.values():
                await process.wait()


def both_shards_ready(fake: LoopbackDiscord) -> bool:
    """Each shard has a session that is ready, and the commands are synced to both guilds."""
    ready = {session.shard for session in fake.sessions if session.ready and session.connected}
    return ready >= {(0, 2), (1, 2)} and set(fake.commands) >= {str(GUILD_ID), str(OTHER_GUILD_ID)}


async def quote(fake: LoopbackDiscord, user: User, guild: int) -> Interaction:
    command = await fake.slash("imagine", {"prompt": "a lighthouse"}, user=user, guild=guild)
    await fake.wait_for(lambda: has_buttons(fake, command), patience=PATIENCE_SECONDS)
    return command


def has_buttons(fake: LoopbackDiscord, command: Interaction) -> bool:
    return command.original_id is not None and bool(fake.original(command).buttons)


async def generate(fake: LoopbackDiscord, command: Interaction, user: User, guild: int) -> Message:
    """Click the quote's Generate; the clicked message, which shows the progress."""
    quoted = fake.original(command)
    await fake.click(quoted, quoted.button("Generate"), user=user, guild=guild)
    return quoted


async def shows(fake: LoopbackDiscord, message: Message, text: str) -> None:
    await fake.wait_for(lambda: text in message.content, patience=PATIENCE_SECONDS)


async def test_every_command_in_either_shard_s_guilds_is_answered_once_by_one_process(
    shared_processes: Processes, shared_fake: LoopbackDiscord
) -> None:
    sent_before = interactions_sent_by_shard(shared_fake)
    people = [User(ALICE.id + 1000 + number, f"user{number}") for number in range(6)]

    commands = await asyncio.gather(
        *(
            quote(shared_fake, person, guild)
            for person in people
            for guild in (GUILD_ID, OTHER_GUILD_ID)
        )
    )
    credits = await asyncio.gather(
        *(
            shared_fake.slash("credits", user=BOB, guild=guild)
            for guild in (GUILD_ID, OTHER_GUILD_ID)
        )
    )
    await shared_fake.wait_for(
        lambda: all(command.callbacks for command in credits), patience=PATIENCE_SECONDS
    )
    # Long enough for a second answer to any of them to have arrived, had there been one.
    await asyncio.sleep(SWEEP_SECONDS)

    assert [len(command.callbacks) for command in [*commands, *credits]] == [1] * 14
    sent = interactions_sent_by_shard(shared_fake)
    assert {shard: sent[shard] - sent_before.get(shard, 0) for shard in sent} == {
        (0, 2): 7,
        (1, 2): 7,
    }


def interactions_sent_by_shard(fake: LoopbackDiscord) -> dict[tuple[int, int] | None, int]:
    return {
        session.shard: session.events.count("INTERACTION_CREATE")
        for session in fake.sessions
        if session.ready
    }


async def test_a_second_click_on_the_other_process_waits_for_the_user_s_first_generation(
    shared_processes: Processes, shared_fake: LoopbackDiscord
) -> None:
    carol = User(ALICE.id + 2000, "carol")
    first = await quote(shared_fake, carol, GUILD_ID)
    second = await quote(shared_fake, carol, OTHER_GUILD_ID)
    first_progress = await generate(shared_fake, first, carol, GUILD_ID)
    await shows(shared_fake, first_progress, "Generating")

    second_progress = await generate(shared_fake, second, carol, OTHER_GUILD_ID)

    # Only the other process runs Carol's one generation: this one knows of it through the
    # database alone.
    await shows(shared_fake, second_progress, "Queued: 1 ahead of you")
    await shows(shared_fake, second_progress, "Done:")
    assert await shared_processes.statuses(carol) == [GenerationStatus.COMPLETED] * 2
    assert await shared_processes.balance(carol) == STARTING_CREDITS - 2


async def test_a_killed_process_s_generation_is_settled_by_the_other_and_its_slot_freed(
    tmp_path: Path,
) -> None:
    async with (
        loopback_discord() as discord_fake,
        two_processes(tmp_path, discord_fake, delays=(0, 60)) as processes,
    ):
        stuck = await quote(discord_fake, ALICE, GUILD_ID)
        stuck_progress = await generate(discord_fake, stuck, ALICE, GUILD_ID)
        await shows(discord_fake, stuck_progress, "Generating")
        waiting = await quote(discord_fake, ALICE, OTHER_GUILD_ID)
        waiting_progress = await generate(discord_fake, waiting, ALICE, OTHER_GUILD_ID)
        await shows(discord_fake, waiting_progress, "Queued")

        processes.by_shard[SHARD_OF[GUILD_ID]].kill()
        await shows(discord_fake, waiting_progress, "Done:")

        assert processes.by_shard[SHARD_OF[GUILD_ID]].returncode == -signal.SIGKILL
        assert await processes.statuses(ALICE) == [
            GenerationStatus.FAILED,
            GenerationStatus.COMPLETED,
        ]
        assert await processes.balance(ALICE) == STARTING_CREDITS - 1
