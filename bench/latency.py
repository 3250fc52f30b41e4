"""Command latency on Discord: N users issue /imagine at once through the loopback gateway.

Measures, with the real discord.py bot, the time from INTERACTION_CREATE sent
to the quote with its buttons received (within Discord's 3 s, the bot must
answer; if the quote is slow it answers "thinking…" first, and the quote's
edit is what counts here), and from the button click to the images' upload
received (``local`` provider, 1K). Baseline: a minimal discord.py bot in the same harness whose
/imagine answers at once with a button.

The loopback Discord runs in a process of its own (``bench.discord_process``),
so the fake's work is not counted against the bot. Both bots stay connected
to it at once, and at each size their bursts alternate (N=1 1,000 times each,
N=50 20 times, N=500 4 times), so that a slow patch of the shared machine falls
on both rather than on whichever was measured then. Each bot is warmed up with
one untimed command first, and the heap is frozen as ``imagine-bot run``
freezes it.

    python -m bench.latency [--quick] [--database postgresql]

With ``--processes 2`` it measures what a second process buys instead: the
bot runs as ``imagine-bot run`` processes on PostgreSQL, Discord's two shards
in one process, then one shard in each of two, alternating, and each layout
answers bursts of N=500 /imagine from the same people, spread over a guild
of each shard (an untimed burst first, which also opens their accounts).
Reported: each layout's throughput (commands over the time from the first
sent to the last answered), the ratio of two processes' to one's, and the CPU
per command of the bot processes, the loopback Discord and PostgreSQL.

    python -m bench.latency --processes 2 [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import discord
from discord import app_commands

from bench.common import (
    add_database_option,
    database_name,
    ledger_database,
    machine,
    percentile,
    summary_ms,
)
from bot.app import freeze_startup_heap, open_service
from bot.platforms.discord import ImagineBot, point_at
from bot.settings import Settings
from tests.cli_helpers import command_and_environment
from tests.loopback_discord import GUILD_ID, OTHER_GUILD_ID, TOKEN

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

QUOTES_AT_LEAST = 1000
"""Quote bursts repeat until each bot has this many commands: one burst of 50 swings its p50
by 2x, and with 500 the N=50 ratio of one code moved between 1.74 and 2.10 from run to run."""
QUICK_SIZE = 20
QUICK_QUOTES_AT_LEAST = 40
"""For ``--quick``, which only shows that the benchmark runs: bursts of ``QUICK_SIZE``."""
ROUNDS_AT_LEAST = 4
"""Each size alternates between the two bots at least this often."""
DELIVERIES_AT_LEAST = 20
"""Click bursts (each draws an image per user) repeat until they have this many."""

SETTLE_SECONDS_PER_USER = 0.001
"""The pause after each burst, so the work a bot has left once its last answer is out
(parsing the replies, closing requests) is not counted against the next burst."""

P99_RATIO_TARGET = 2.0
"""A burst's quote p99 may be at most this many times the bare bot's, measured in the same run."""
ANSWER_DEADLINE_SECONDS = 3.0
"""Discord's deadline for a command's first answer: no quote may take longer."""

PROCESS_BURST = 500
"""Commands in each burst of the ``--processes`` comparison, spread over both shards' guilds."""
PROCESS_ROUNDS = 3
"""Bursts each layout answers, alternating, with a fresh start of its processes each time."""
THROUGHPUT_RATIO_TARGET = 1.4
"""Two processes (a shard each) must answer at least this many times the commands per second
of one process running both shards, on this 2-core machine."""
PROCESS_USERS = 900_000_000_003_000_000
"""The first of the people whose commands the ``--processes`` bursts send."""
SHARD_GUILDS = (OTHER_GUILD_ID, GUILD_ID)
"""A guild on shard 0 of two, and one on shard 1."""

BARE, IMAGINE = 0, 1
"""The two bots, in the order they connect to the loopback gateway."""


class MinimalBot(discord.AutoShardedClient):
    """The floor: a bot whose /imagine answers at once, with one button."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents(guilds=True), guild_ready_timeout=0.1)
        self.tree = app_commands.CommandTree(self)

        @self.tree.command(name="imagine", description="answer at once")
        async def imagine(interaction: discord.Interaction, prompt: str) -> None:
            view = discord.ui.View(timeout=None)
            view.add_item(discord.ui.Button(label="Generate", custom_id="generate"))
            # As the bot's quote does: a listening view would be kept, with its timeout
            # task, long after the burst, in the process both bots share.
            view.stop()
            await interaction.response.send_message(prompt, view=view, ephemeral=True)

    async def setup_hook(self) -> None:
        guild = discord.Object(GUILD_ID)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)


@dataclass(frozen=True)
class Burst:
    """One burst's times in seconds, and the CPU this process spent on it (every thread)."""

    answered: list[float]
    delivered: list[float]
    without_images: int
    cpu_seconds: float
    makespan: float
    """From the first command sent to the last quote received."""
    fake_cpu_seconds: float
    """What the loopback Discord's process spent on the burst."""


@dataclass
class Samples:
    """One bot's figures at one size, gathered over its bursts."""

    answered: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)
    without_images: int = 0
    quote_cpu_seconds: float = 0.0

    def add_quotes(self, burst: Burst) -> None:
        self.answered += burst.answered
        self.quote_cpu_seconds += burst.cpu_seconds

    @property
    def cpu_per_command(self) -> float:
        """CPU seconds per quote: what a burst's latency is made of."""
        return self.quote_cpu_seconds / max(len(self.answered), 1)


class LoopbackProcess:
    """``bench.discord_process``, started and driven from here."""

    def __init__(self, session: aiohttp.ClientSession, api_base: str, control: str) -> None:
        self.session = session
        self.api_base = api_base
        self.control = control
        self._next_user = 900_000_000_002_000_000

    async def burst(
        self,
        users: int,
        *,
        bot: int | None,
        click: bool,
        guilds: tuple[int, ...] = (GUILD_ID,),
        first_user: int | None = None,
    ) -> Burst:
        """``users`` people run /imagine at once, sent to ``bot`` (None: where Discord would
        send them), each in the next of ``guilds`` in turn: new people, or those numbered
        from ``first_user`` on."""
        asked = {
            "users": users,
            "first_user": self._next_user if first_user is None else first_user,
            "click": click,
            "bot": bot,
            "guilds": list(guilds),
        }
        if first_user is None:
            self._next_user += users
        cpu_before = time.process_time()
        async with self.session.post(f"{self.control}/burst", json=asked) as response:
            response.raise_for_status()
            measured = await response.json()
        cpu_seconds = time.process_time() - cpu_before
        return Burst(
            measured["answered"],
            measured["delivered"],
            measured["without_images"],
            cpu_seconds,
            measured["makespan"],
            measured["fake_cpu"],
        )

    async def ready_shards(self) -> set[tuple[int, int]]:
        """The shards whose sessions are connected and sent their guilds."""
        async with self.session.get(f"{self.control}/shards") as response:
            response.raise_for_status()
            return {(shard, count) for shard, count in await response.json()}


@contextlib.asynccontextmanager
async def loopback_process() -> AsyncIterator[LoopbackProcess]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.discord_process",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        addresses = json.loads(await process.stdout.readline())
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            yield LoopbackProcess(session, addresses["api_base"], addresses["control"])
    finally:
        process.stdin.close()
        await process.wait()


@contextlib.asynccontextmanager
async def running(client: discord.Client) -> AsyncIterator[None]:
    task = asyncio.create_task(client.start(TOKEN))
    try:
        async with asyncio.timeout(30):
            while not client.is_ready():
                if task.done():
                    await task
                await asyncio.sleep(0.01)
        yield
    finally:
        await client.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def measure(
    fake: LoopbackProcess,
    sizes: list[int],
    folder: Path,
    database_url: str,
    quotes_at_least: int = QUOTES_AT_LEAST,
) -> dict[int, tuple[Samples, Samples]]:
    """The bare bot's and the bot's samples at each size."""
    models = folder / "models.toml"
    models.write_text(MODELS)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models,
        starting_credits=100,
        provider_concurrency=64,
        discord_token=TOKEN,
        discord_guild_ids=str(GUILD_ID),
    )
    results = {}
    async with (
        open_service(settings) as service,
        running(MinimalBot()),
        running(ImagineBot(service, settings, guild_ready_timeout=0.1)),
    ):
        await fake.burst(1, bot=BARE, click=False)
        await fake.burst(1, bot=IMAGINE, click=True)
        for size in sizes:
            bare, bot = Samples(), Samples()
            for round_number in range(max(ROUNDS_AT_LEAST, math.ceil(quotes_at_least / size))):
                first_bare = round_number % 2 == 0
                for which in (BARE, IMAGINE) if first_bare else (IMAGINE, BARE):
                    samples = bare if which == BARE else bot
                    samples.add_quotes(await fake.burst(size, bot=which, click=False))
                    await asyncio.sleep(size * SETTLE_SECONDS_PER_USER)
            # Quotes and images are timed in separate bursts: a click's delivery still
            # finishing would otherwise slow the next burst's quotes.
            for _ in range(math.ceil(DELIVERIES_AT_LEAST / size)):
                clicks = await fake.burst(size, bot=IMAGINE, click=True)
                bot.delivered += clicks.delivered
                bot.without_images += clicks.without_images
            results[size] = (bare, bot)
    return results


def cpu_seconds_of(pids: list[int]) -> float:
    """The CPU time the processes ``pids`` have used so far (Linux's /proc); 0 for one gone."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def database_server_pids() -> list[int]:
    """The PostgreSQL server's processes, when it runs on this machine (as here): its CPU is
    part of what one bot process or two must share the cores with."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
    return pids


@contextlib.asynccontextmanager
async def bot_processes(
    fake: LoopbackProcess, folder: Path, database_url: str, shard_ids: list[str]
) -> AsyncIterator[list[int]]:
    """``imagine-bot run`` once for each of ``shard_ids`` (of two shards), until all are ready."""
    started = []
    try:
        for ids in shard_ids:
            command, environment = command_and_environment(
                folder,
                {
                    "DATABASE_URL": database_url,
                    "MODELS_FILE": str(folder / "models.toml"),
                    "STARTING_CREDITS": "100",
                    "PROVIDER_CONCURRENCY": "64",
                    "QUOTES_PER_MINUTE": "1000",
                    "DISCORD_TOKEN": TOKEN,
                    "DISCORD_API_BASE": fake.api_base,
                    "DISCORD_GUILD_IDS": ",".join(str(guild) for guild in SHARD_GUILDS),
                    "DISCORD_SHARD_COUNT": "2",
                    "DISCORD_SHARD_IDS": ids,
                },
            )
            started.append(
                await asyncio.create_subprocess_exec(
                    *command,
                    "run",
                    cwd=folder,
                    env=environment,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            )
        async with asyncio.timeout(60):
            while await fake.ready_shards() != {(0, 2), (1, 2)}:
                if any(process.returncode is not None for process in started):
                    raise SystemExit("a bot process exited while starting")
                await asyncio.sleep(0.1)
        yield [process.pid for process in started]
    finally:
        for process in started:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            await process.wait()


async def compare_processes(quick: bool) -> None:
    """One process running both shards against two processes running one each."""
    users = 40 if quick else PROCESS_BURST
    rounds = 1 if quick else PROCESS_ROUNDS
    layouts = {"one process": ["0-1"], "two processes": ["0", "1"]}
    throughput: dict[str, list[float]] = {layout: [] for layout in layouts}
    answered: dict[str, list[float]] = {layout: [] for layout in layouts}
    bot_cpu: dict[str, list[float]] = {layout: [] for layout in layouts}
    fake_cpu: dict[str, list[float]] = {layout: [] for layout in layouts}
    server_cpu: dict[str, list[float]] = {layout: [] for layout in layouts}
    print(
        f"bench.latency --processes 2 on {machine()}: /imagine from N={users} users at once over"
        f" two shards' guilds, loopback Discord, ledger on {await database_name('postgresql')}"
    )
    async with loopback_process() as fake:
        with tempfile.TemporaryDirectory() as folder_name:
            folder = Path(folder_name)
            (folder / "models.toml").write_text(MODELS)
            async with ledger_database("postgresql", folder, "latency") as database_url:
                # Migrated once here, so that no layout's start-up includes it.
                async with open_service(
                    Settings(
                        _env_file=None,
                        database_url=database_url,
                        models_file=folder / "models.toml",
                    )
                ):
                    pass
                for round_number in range(rounds):
                    order = list(layouts) if round_number % 2 == 0 else list(reversed(layouts))
                    for layout in order:
                        async with bot_processes(
                            fake, folder, database_url, layouts[layout]
                        ) as pids:
                            # The same people every time: the first burst opens their
                            # accounts, and each layout's untimed one warms it up.
                            await fake.burst(
                                users,
                                bot=None,
                                click=False,
                                guilds=SHARD_GUILDS,
                                first_user=PROCESS_USERS,
                            )
                            cpu_before = cpu_seconds_of(pids)
                            server_before = {
                                pid: cpu_seconds_of([pid]) for pid in database_server_pids()
                            }
                            measured = await fake.burst(
                                users,
                                bot=None,
                                click=False,
                                guilds=SHARD_GUILDS,
                                first_user=PROCESS_USERS,
                            )
                            bot_cpu[layout].append((cpu_seconds_of(pids) - cpu_before) / users)
                            server_cpu[layout].append(
                                sum(
                                    cpu_seconds_of([pid]) - server_before.get(pid, 0.0)
                                    for pid in database_server_pids()
                                )
                                / users
                            )
                        throughput[layout].append(users / measured.makespan)
                        answered[layout] += measured.answered
                        fake_cpu[layout].append(measured.fake_cpu_seconds / users)
    for layout in layouts:
        rates = ", ".join(f"{rate:.0f}" for rate in throughput[layout])
        print(
            f"{layout:<14} {statistics.median(throughput[layout]):6.0f} commands/s"
            f" (each burst: {rates})   answers {summary_ms(answered[layout])}"
        )
        per_command = [
            statistics.median(figures[layout]) for figures in (bot_cpu, fake_cpu, server_cpu)
        ]
        busy = sum(per_command) * statistics.median(throughput[layout])
        print(
            f"{'':14} CPU per command: bot processes {per_command[0] * 1000:.2f} ms, loopback"
            f" Discord {per_command[1] * 1000:.2f} ms, PostgreSQL {per_command[2] * 1000:.2f} ms;"
            f" {busy:.1f} of {os.cpu_count()} cores busy"
        )
    ratio = statistics.median(throughput["two processes"]) / statistics.median(
        throughput["one process"]
    )
    # A process runs on one core at most (its event loop); with a core of its own for each and
    # the database and Discord elsewhere, its CPU per command is what would limit it.
    ceilings = {
        layout: len(layouts[layout]) / statistics.median(bot_cpu[layout]) for layout in layouts
    }
    print(
        f"with a core for each bot process and nothing else on them, at most"
        f" {ceilings['one process']:.0f} commands/s for one process and"
        f" {ceilings['two processes']:.0f} for two"
        f" ({ceilings['two processes'] / ceilings['one process']:.2f}x)"
    )
    print(
        f"latency: two processes answer {ratio:.2f}x the commands per second of one"
        f" (target >= {THROUGHPUT_RATIO_TARGET:g}), slowest answer"
        f" {max(max(times) for times in answered.values()) * 1000:.0f} ms"
        f" (target < {ANSWER_DEADLINE_SECONDS * 1000:.0f})"
    )


async def main(quick: bool, database: str) -> None:
    sizes = [QUICK_SIZE] if quick else [1, 50, 500]
    # As `imagine-bot run` does once started; here before both bots, which share this process.
    freeze_startup_heap()
    original_base = discord.http.Route.BASE
    print(
        f"bench.latency on {machine()}: /imagine from N users at once, loopback Discord, "
        f"ledger on {await database_name(database)}"
    )
    try:
        async with loopback_process() as fake:
            point_at(fake.api_base)
            with tempfile.TemporaryDirectory() as folder:
                async with ledger_database(database, Path(folder), "latency") as database_url:
                    results = await measure(
                        fake,
                        sizes,
                        Path(folder),
                        database_url,
                        QUICK_QUOTES_AT_LEAST if quick else QUOTES_AT_LEAST,
                    )
    finally:
        discord.http.Route.BASE = original_base
    p99_ratios: dict[int, float] = {}
    for size in sizes:
        bare, bot = results[size]
        ratio = percentile(bot.answered, 0.5) / max(percentile(bare.answered, 0.5), 1e-9)
        p99_ratio = percentile(bot.answered, 0.99) / max(percentile(bare.answered, 0.99), 1e-9)
        p99_ratios[size] = p99_ratio
        print(
            f"N={size:<4} confirm   {summary_ms(bot.answered)}  max {max(bot.answered) * 1000:7.1f} ms"
        )
        print(
            f"       baseline  {summary_ms(bare.answered)}  max {max(bare.answered) * 1000:7.1f} ms"
            f"   p50 ratio {ratio:.2f}, p99 ratio {p99_ratio:.2f}"
        )
        if size > 1:
            # At N=1 this harness's own request for each burst would dominate the figure.
            cpu, bare_cpu = bot.cpu_per_command, bare.cpu_per_command
            print(
                f"       CPU per command: bot {cpu * 1000:.2f} ms, baseline {bare_cpu * 1000:.2f} ms,"
                f" ratio {cpu / max(bare_cpu, 1e-9):.2f}"
            )
        print(
            f"       images    {summary_ms(bot.delivered)}  (click to upload, local 1K;"
            f" {bot.without_images} of {len(bot.delivered)} clicks answered without images)"
        )
    # The targets: a burst's p99 within 2x the bare bot's (at N=1 a single round trip
    # dominates both, so only bursts count), and every answer within Discord's 3 s.
    slowest = max(max(results[size][1].answered) for size in sizes)
    failed = sum(results[size][1].without_images for size in sizes)
    ratios = ", ".join(f"{p99_ratios[size]:.2f} at N={size}" for size in sizes if size > 1)
    print(
        f"latency: confirm p99 ratio to the bare bot {ratios} (target <= {P99_RATIO_TARGET:g}),"
        f" slowest answer {slowest * 1000:.0f} ms (target < {ANSWER_DEADLINE_SECONDS * 1000:.0f}),"
        f" clicks without images {failed}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SIZE} users only, {QUICK_QUOTES_AT_LEAST} commands",
    )
    add_database_option(parser)
    parser.add_argument(
        "--processes",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: compare one bot process running both shards with two running one each"
        " (PostgreSQL)",
    )
    arguments = parser.parse_args()
    if arguments.processes == 2:
        asyncio.run(compare_processes(arguments.quick))
    else:
        asyncio.run(main(arguments.quick, arguments.database))
