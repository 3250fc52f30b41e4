"""1,000 generations in flight at once against a provider that takes 2 s: memory and loop lag.

Each generation is a real quote, hold, provider call, delivery and capture
through ``ImagineService``, on a SQLite file or, with ``--database
postgresql``, on a PostgreSQL database of its own. Memory is the peak traced by
``tracemalloc`` while they run, per generation, with image bytes excluded
(the provider returns a tiny PNG). Baseline: the same number of bare asyncio
tasks that only wait 2 s, the least any in-flight generation can cost.

    python -m bench.inflight [--quick] [--database postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

import providers
from bench.common import LoopLag, add_database_option, database_name, ledger_database, machine
from bot.app import open_service
from bot.flow import PostedImages
from bot.parsing import parse_imagine
from bot.progress import ProgressEvent
from bot.settings import Settings
from ledger import Generation
from providers import ProviderSpec
from providers.base import (
    GeneratedImage,
    GenerationResult,
    ImageDone,
    ImageProvider,
    ImageRequest,
    ProviderConfig,
)

WAIT_SECONDS = 2.0
MODELS = """
[models.slow]
provider = "slow"
provider_model = "slow-v1"
name = "Slow"
credits_per_image = 1
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 1
"""


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


TINY = _tiny_png()


class SlowProvider(ImageProvider):
    """Answers every request with a tiny image after ``WAIT_SECONDS``."""

    name = "slow"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    async def generate(self, request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        await asyncio.sleep(WAIT_SECONDS)
        await on_image_done(1, 1)
        return GenerationResult((GeneratedImage(TINY, "image/png", 8, 8),))


class Discard:
    async def progress(self, event: ProgressEvent) -> None:
        return None

    async def deliver(
        self, images: Sequence[GeneratedImage], generation: Generation, posted: PostedImages
    ) -> None:
        posted.landed(len(images))

    async def conclude(self, report: str) -> None:
        return None


async def baseline(count: int) -> int:
    tracemalloc.start()
    tasks = [asyncio.create_task(asyncio.sleep(WAIT_SECONDS)) for _ in range(count)]
    await asyncio.gather(*tasks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


async def bot_generations(count: int, folder: Path, database_url: str) -> tuple[int, float, float]:
    models = folder / "models.toml"
    models.write_text(MODELS)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models,
        provider_concurrency=count,
        user_concurrency=1,
        generation_timeout_seconds=60,
    )
    async with open_service(settings, extra_admins=frozenset({"console:bank"})) as service:
        accounts = [f"console:user{number}" for number in range(count)]
        quotes = []
        for account in accounts:
            await service.credits.grant("console:bank", account, 10, "bench")
            request = parse_imagine("model:slow a benchmark", service.catalog)
            quotes.append((account, (await service.quote(account, request)).id))
        tracemalloc.start()
        started = time.perf_counter()
        async with LoopLag() as lag:
            outcomes = await asyncio.gather(
                *(service.confirm(quote, account, Discard()) for account, quote in quotes)
            )
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        failed = [o for o in outcomes if o.generation.credits_charged != 1]
        if failed:
            raise SystemExit(f"{len(failed)} generations did not complete: {failed[0].message}")
        return peak, lag.p99, elapsed


async def main(quick: bool, database: str) -> None:
    count = 30 if quick else 1000
    providers.register(ProviderSpec("slow", "bench.inflight:SlowProvider"))
    print(
        f"bench.inflight on {machine()}: {count} generations in flight, "
        f"provider waits {WAIT_SECONDS:g} s, ledger on {await database_name(database)}"
    )
    with tempfile.TemporaryDirectory() as folder:
        async with ledger_database(database, Path(folder), "inflight") as database_url:
            peak, lag_p99, elapsed = await bot_generations(count, Path(folder), database_url)
    floor = await baseline(count)
    per_generation = peak / count
    print(
        f"  bot:      peak {peak / 1_048_576:7.1f} MiB  = {per_generation / 1024:6.1f} KiB per generation"
    )
    print(
        f"  baseline: peak {floor / 1_048_576:7.1f} MiB  = {floor / count / 1024:6.1f} KiB per bare task"
    )
    print(f"  all {count} done in {elapsed:.2f} s (the provider alone takes {WAIT_SECONDS:g} s)")
    print(f"  event-loop lag p99 while they ran: {lag_p99 * 1000:.1f} ms")
    print(
        f"inflight: {per_generation / 1024:.1f} KiB per generation (target < 100), "
        f"loop lag p99 {lag_p99 * 1000:.1f} ms (target < 50), ratio to bare task {peak / floor:.1f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 generations instead of 1,000")
    add_database_option(parser)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.quick, arguments.database))
