"""Command latency on Discord: N users issue /imagine at once through the loopback gateway.

Measures, with the real discord.py bot, the time from INTERACTION_CREATE sent
to the interaction's first callback received (the answer Discord wants within
3 s), and from the button click to the images' upload received (``local``
provider, 1K). Baseline: a minimal discord.py bot in the same harness whose
/imagine answers at once with a button.

    python -m bench.latency [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import discord
from discord import app_commands

from bench.common import machine, percentile, summary_ms
from bot.app import open_service
from bot.discord_adapter import ImagineBot, point_at
from bot.settings import Settings
from tests.loopback_discord import GUILD_ID, TOKEN, Interaction, LoopbackDiscord, User

T = TypeVar("T")

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


class MinimalBot(discord.AutoShardedClient):
    """The floor: a bot whose /imagine answers at once, with one button."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents(guilds=True), guild_ready_timeout=0.1)
        self.tree = app_commands.CommandTree(self)

        @self.tree.command(name="imagine", description="answer at once")
        async def imagine(interaction: discord.Interaction, prompt: str) -> None:
            view = discord.ui.View()
            view.add_item(discord.ui.Button(label="Generate", custom_id="generate"))
            await interaction.response.send_message(prompt, view=view, ephemeral=True)

    async def setup_hook(self) -> None:
        guild = discord.Object(GUILD_ID)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)


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


def every(items: list[T], done: Callable[[T], bool]) -> Callable[[], bool]:
    """A wait condition for ``done`` of every item that does not rescan finished ones.

    The fake re-checks a condition after every change it sees; a plain
    ``all(...)`` would make a burst of N commands cost the harness N² checks,
    on the loop the bot is measured on.
    """
    waiting = list(items)

    def check() -> bool:
        while waiting and done(waiting[-1]):
            waiting.pop()
        return not waiting

    return check


async def burst(fake: LoopbackDiscord, users: int, offset: int) -> list[float]:
    """``users`` distinct people run /imagine at once; seconds until each first callback."""
    people = [
        User(900_000_000_001_000_000 + offset + number, f"u{number}") for number in range(users)
    ]
    interactions = await asyncio.gather(
        *(fake.slash("imagine", {"prompt": "a lighthouse"}, user=person) for person in people)
    )
    await fake.wait_for(every(interactions, lambda i: i.answered_at is not None))
    return [i.answered_at - i.sent_at for i in interactions]  # type: ignore[operator]


def quoted(fake: LoopbackDiscord, command: Interaction) -> bool:
    return command.original_id is not None and bool(fake.original(command).buttons)


async def measure_bot(
    fake: LoopbackDiscord, sizes: list[int], folder: Path
) -> dict[int, tuple[list[float], list[float]]]:
    models = folder / "models.toml"
    models.write_text(MODELS)
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{folder / 'latency.db'}",
        models_file=models,
        starting_credits=100,
        provider_concurrency=64,
        discord_token=TOKEN,
        discord_guild_ids=str(GUILD_ID),
    )
    results: dict[int, tuple[list[float], list[float]]] = {}
    async with open_service(settings) as service:
        bot = ImagineBot(service, settings, guild_ready_timeout=0.1)
        async with running(bot):
            for size in sizes:
                people = [
                    User(900_000_000_002_000_000 + size * 1000 + n, f"p{n}") for n in range(size)
                ]
                commands = await asyncio.gather(
                    *(fake.slash("imagine", {"prompt": "a lighthouse"}, user=p) for p in people)
                )
                await fake.wait_for(every(commands, lambda c: quoted(fake, c)))
                confirm = [c.answered_at - c.sent_at for c in commands]  # type: ignore[operator]
                clicks = await asyncio.gather(
                    *(
                        fake.click(fake.original(c), fake.original(c).button("Generate"), user=p)
                        for c, p in zip(commands, people, strict=True)
                    )
                )
                # Drawing 500 pictures takes the local provider a while on two cores.
                await fake.wait_for(
                    every(clicks, lambda c: c.followed_up_at is not None), patience=600
                )
                delivered = [c.followed_up_at - c.sent_at for c in clicks]  # type: ignore[operator]
                results[size] = (confirm, delivered)
    return results


async def main(quick: bool) -> None:
    sizes = [1, 50] if quick else [1, 50, 500]
    original_base = discord.http.Route.BASE
    print(f"bench.latency on {machine()}: /imagine from N users at once, loopback Discord")
    try:
        async with LoopbackDiscord() as fake:
            point_at(fake.api_base)
            baseline: dict[int, list[float]] = {}
            async with running(MinimalBot()):
                for size in sizes:
                    baseline[size] = await burst(fake, size, size * 10_000)
            with tempfile.TemporaryDirectory() as folder:
                bot = await measure_bot(fake, sizes, Path(folder))
    finally:
        discord.http.Route.BASE = original_base
    worst_p99, worst_ratio = 0.0, 0.0
    for size in sizes:
        confirm, delivered = bot[size]
        ratio = percentile(confirm, 0.5) / max(percentile(baseline[size], 0.5), 1e-9)
        worst_p99 = max(worst_p99, percentile(confirm, 0.99))
        worst_ratio = max(worst_ratio, ratio)
        print(f"N={size:<4} confirm   {summary_ms(confirm)}")
        print(f"       baseline  {summary_ms(baseline[size])}   p50 ratio {ratio:.2f}")
        print(f"       images    {summary_ms(delivered)}  (click to upload, local 1K)")
    print(
        f"latency: confirm p99 {worst_p99 * 1000:.0f} ms at N={sizes[-1]} (target < 300), "
        f"worst p50 ratio to a bare bot {worst_ratio:.2f} (target < 2)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 50 users only")
    asyncio.run(main(parser.parse_args().quick))
