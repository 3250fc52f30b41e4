"""`imagine-bot report` over 100,000 generations: how long ``build_report`` takes.

The database is migrated, then filled with bulk Core inserts: 1,000 accounts
and 100,000 generations over 90 days, six models of three providers, 90 %
settled (completed, partial or failed with a reason, each with its provider
calls recorded), the rest quotes that were cancelled or expired, or still
running. Each report is timed as the median of five runs, over all history
and over the last 7 days (``--days 7``). Baseline: one query that reads every
settled row's credits in the same range, the least any report of them costs.
Target: every report under 1 s.

    python -m bench.report [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import machine, postgres_database, postgres_reachable, postgres_version
from ledger import create_engine, migrate
from ledger.report import build_report
from ledger.schema import accounts, generations

TARGET_SECONDS = 1.0
RUNS = 5
DAYS = 90
MODELS = (
    ("gemini-3-pro", "google", 10),
    ("gemini-flash", "google", 4),
    ("gpt-image-2", "openai", 8),
    ("gpt-image-mini", "openai", 3),
    ("local-sketch", "local", 1),
    ("local-paint", "local", 1),
)
REASONS = ("blocked", "unavailable", "timeout", "rate_limited", "no_image")
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def rows(count: int, account_count: int, accounts_named: str = "bench:") -> list[dict[str, Any]]:
    """``count`` generations in a fixed pseudo-random mix, ids and all, of the accounts
    ``accounts_named`` followed by a number."""
    chance = random.Random(20261206)
    made = []
    for number in range(count):
        model_id, provider, price = MODELS[number % len(MODELS)]
        requested = chance.randint(1, 4)
        created = NOW - timedelta(seconds=chance.uniform(0, DAYS * 86_400))
        roll = chance.random()
        if roll < 0.7:
            status, delivered, error = "completed", requested, None
        elif roll < 0.78:
            status, delivered, error = "partial", max(1, requested - 1), None
        elif roll < 0.9:
            status, delivered, error = "failed", 0, chance.choice(REASONS)
        else:
            status, delivered, error = chance.choice(("cancelled", "expired", "running")), 0, None
        settled = status in ("completed", "partial", "failed")
        confirmed = created + timedelta(seconds=20) if status != "cancelled" else None
        finished = created + timedelta(seconds=50) if status != "running" else None
        calls = [
            {"image": image, "attempt": 1, "outcome": "ok", "status": 200, "seconds": 12.5}
            for image in range(requested)
        ]
        made.append(
            {
                "id": f"g{number:07d}",
                "account_id": f"{accounts_named}{number % account_count}",
                "model_id": model_id,
                "provider": provider,
                "provider_model": model_id,
                "prompt": "a lighthouse at dusk",
                "options": {"resolution": "1K", "aspect_ratio": "1:1"},
                "images_requested": requested,
                "images_delivered": delivered,
                "credits_per_image": price,
                "credits_held": 0,
                "credits_charged": delivered * price,
                "status": status,
                "error_code": error,
                "created_at": created,
                "expires_at": created + timedelta(minutes=10),
                "confirmed_at": confirmed,
                "finished_at": finished,
                "provider_attempts": calls if settled and provider != "local" else None,
            }
        )
    return made


async def fill(
    engine: AsyncEngine, count: int, account_count: int, accounts_named: str = "bench:"
) -> None:
    await migrate.upgrade(engine)
    async with engine.begin() as connection:
        await connection.execute(
            insert(accounts),
            [
                {"id": f"{accounts_named}{number}", "available": 0, "held": 0}
                | {"created_at": NOW, "updated_at": NOW}
                for number in range(account_count)
            ],
        )
    made = rows(count, account_count, accounts_named)
    for start in range(0, len(made), 10_000):
        async with engine.begin() as connection:
            await connection.execute(insert(generations), made[start : start + 10_000])


async def median_seconds(run: Callable[[], Awaitable[object]]) -> float:
    await run()  # warms the caches and the statement cache, as a running bot has them
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def scan(engine: AsyncEngine, since: datetime | None) -> None:
    """The baseline: every settled row's credits in the range, summed by the database."""
    query = select(func.count(), func.sum(generations.c.credits_charged)).where(
        generations.c.status.not_in(("quoted", "running", "cancelled", "expired"))
    )
    if since is not None:
        query = query.where(generations.c.finished_at >= since)
    async with engine.connect() as connection:
        (await connection.execute(query)).one()


async def measure(url: str, count: int, account_count: int) -> list[tuple[str, float, float]]:
    engine = create_engine(url)
    try:
        started = time.perf_counter()
        await fill(engine, count, account_count)
        print(f"  filled {count:,} generations in {time.perf_counter() - started:.1f} s")
        results = []
        for label, since in (("all", None), ("7 days", NOW - timedelta(days=7))):
            report = await median_seconds(lambda since=since: build_report(engine, since=since))
            baseline = await median_seconds(lambda since=since: scan(engine, since))
            results.append((label, report, baseline))
        return results
    finally:
        await engine.dispose()


async def main(quick: bool) -> None:
    count, account_count = (500, 20) if quick else (100_000, 1_000)
    reachable = await postgres_reachable()
    server = f", PostgreSQL {await postgres_version()}" if reachable else ""
    print(f"bench.report on {machine()}{server}: {count:,} generations, median of {RUNS}")
    slowest: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("sqlite", "postgresql") if reachable else ("sqlite",):
            print(name)
            if name == "sqlite":
                results = await measure(
                    f"sqlite+aiosqlite:///{Path(folder) / 'report.db'}", count, account_count
                )
            else:
                async with postgres_database("report") as (url, _dsn):
                    results = await measure(url, count, account_count)
            for label, report, baseline in results:
                print(
                    f"  {label:>6}: report {report * 1000:8.1f} ms  "
                    f"scan {baseline * 1000:7.1f} ms  ratio {report / baseline:5.1f}"
                )
            slowest[name] = max(report for _, report, _ in results)
    if not reachable:
        print("(PostgreSQL was not reachable; SQLite only)")
    print(
        "report: slowest report "
        + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in slowest.items())
        + f" (target < {TARGET_SECONDS:g} s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 generations")
    asyncio.run(main(parser.parse_args().quick))
