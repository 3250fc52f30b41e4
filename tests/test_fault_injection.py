"""Hundreds of generations against a provider and a platform that fail at random: credits stay exact.

Every image may fail, be blocked, be rate-limited or never come back; every
delivery may fail or post fewer images than it was given. Whatever happens,
each request ends with an outcome, each account is charged exactly the price
of the images it received, nothing stays held, and the ledger verifies.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from bot.app import open_service
from bot.flow import DeliveryFailed, ImagineService, Outcome, PostedImages
from bot.parsing import parse_imagine
from bot.progress import ProgressEvent
from bot.settings import Settings
from ledger import Generation, GenerationStatus
from providers.base import GeneratedImage
from tests.conftest import FakeClock

MODELS = """
[models.chaos]
provider = "chaos"
provider_model = "chaos-v1"
name = "Chaos"
credits_per_image = 3
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 4
"""
REQUESTS = 300
ACCOUNTS = [f"console:user{number}" for number in range(20)]
GRANT = 1_000
SETTLED = {GenerationStatus.COMPLETED, GenerationStatus.PARTIAL, GenerationStatus.FAILED}


class FlakyDelivery:
    """A platform that posts one image at a time, and sometimes refuses or fails part-way."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.posted = 0

    async def progress(self, event: ProgressEvent) -> None:
        if self.rng.random() < 0.05:
            raise ConnectionError("progress update lost")

    async def deliver(
        self, images: Sequence[GeneratedImage], generation: Generation, posted: PostedImages
    ) -> None:
        roll = self.rng.random()
        stop_after = self.rng.randrange(len(images)) if roll < 0.15 else len(images)
        for _ in range(stop_after):
            await asyncio.sleep(0)
            self.posted += 1
            posted.landed(1)
        if roll < 0.10:
            raise DeliveryFailed("upload refused")
        if roll < 0.15:
            raise ConnectionResetError("the platform reset the connection")

    async def conclude(self, report: str) -> None:
        if self.rng.random() < 0.05:
            raise ConnectionError("outcome message lost")


@pytest.fixture
async def service(
    database_url: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[ImagineService]:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        generation_timeout_seconds=0.3,
        provider_concurrency=64,
        # The clock stands still: every request is in the same minute.
        quotes_per_minute=REQUESTS,
    )
    async with open_service(settings, extra_admins=frozenset({"console:bank"}), clock=clock) as svc:
        for account in ACCOUNTS:
            await svc.credits.grant("console:bank", account, GRANT, "fault injection")
        yield svc


async def test_random_failures_never_lose_or_overcharge_a_credit(service: ImagineService) -> None:
    rng = random.Random(7)
    requests = [
        (rng.choice(ACCOUNTS), f"model:chaos count:{rng.randint(1, 4)} picture {number}")
        for number in range(REQUESTS)
    ]
    deliveries: dict[str, FlakyDelivery] = {}

    async def run(account: str, text: str) -> Outcome:
        quote = await service.quote(account, parse_imagine(text, service.catalog))
        delivery = deliveries[quote.id] = FlakyDelivery(random.Random(quote.id))
        return await service.confirm(quote.id, account, delivery)

    outcomes: list[Outcome] = []
    for start in range(0, REQUESTS, 50):
        batch = requests[start : start + 50]
        outcomes += await asyncio.gather(*(run(account, text) for account, text in batch))

    assert len(outcomes) == REQUESTS
    charged: dict[str, int] = dict.fromkeys(ACCOUNTS, 0)
    for outcome in outcomes:
        generation = outcome.generation
        assert generation.status in SETTLED
        assert outcome.message
        assert generation.credits_charged == generation.images_delivered * 3
        assert generation.credits_held == 0
        if generation.images_delivered:
            assert generation.images_delivered == deliveries[generation.id].posted
        charged[generation.account_id] += generation.credits_charged
    for account in ACCOUNTS:
        balance = await service.credits.balance(account)
        assert (balance.available, balance.held) == (GRANT - charged[account], 0)
    assert await service.ledger.verify() == []
    statuses = {outcome.generation.status for outcome in outcomes}
    assert statuses == SETTLED, "the chaos should produce every kind of ending"
