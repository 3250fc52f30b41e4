"""The admin dashboard's pages over 100,000 generations: how long each takes to answer.

The database is filled as ``bench.report`` fills it (1,000 accounts, 100,000
generations over 90 days, six models of three providers), plus 3,000 credit-pack
purchases over the same days (one in ten refunded) and 200 grants to the account
whose page is asked for, so its statement is long. The bot's web server with the
dashboard runs in this process on a loopback port; a logged-in client asks for
each page, as a browser would, and reads the whole answer: the median of five
after one warm-up; on PostgreSQL after ``ANALYZE``, as autovacuum would have run it
on a live database. Each page as it opens (``/admin/models`` and
``/admin/purchases`` over their default 30 days), and, outside the headline,
the models page over the whole history. Target: every page under 300 ms.

    python -m bench.dashboard [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import machine, postgres_database, postgres_reachable, postgres_version
from bench.report import NOW, fill, median_seconds
from bot.app import open_service
from bot.dashboard.auth import LINK_LIFETIME
from bot.settings import Settings
from bot.web import PublicWeb
from ledger import Ledger, LotKind, create_engine
from ledger.schema import purchases

TARGET_MS = 300
RUNS = 5
ADMIN = "discord:1"
ACCOUNTS_NAMED = "console:bench"
"""The dashboard opens only well-formed accounts' pages: a console account's will do."""
HEAVY_ACCOUNT = f"{ACCOUNTS_NAMED}7"
PAGES = (
    ("overview", "/admin"),
    ("models", "/admin/models"),
    ("users (search)", f"/admin/users?q={ACCOUNTS_NAMED}12"),
    ("account", f"/admin/users/{HEAVY_ACCOUNT}"),
    ("purchases", "/admin/purchases"),
    ("live", "/admin/live"),
)
EXTRA_PAGES = (("models, all history", "/admin/models?days=all"),)
"""Measured and shown, but not part of the headline: not what a page opens on."""
REPO = Path(__file__).resolve().parent.parent


async def add_purchases(engine: AsyncEngine, count: int, account_count: int) -> None:
    chance = random.Random(20261207)
    rows: list[dict[str, Any]] = []
    for number in range(count):
        paid = NOW - timedelta(seconds=chance.uniform(0, 90 * 86_400))
        refunded = number % 10 == 0
        rows.append(
            {
                "id": f"pur_{number:06d}",
                "source": "stripe",
                "external_id": f"cs_{number:06d}",
                "account_id": f"{ACCOUNTS_NAMED}{number % account_count}",
                "pack": ("starter", "plus", "pro")[number % 3],
                "credits": (500, 1200, 3000)[number % 3],
                "amount": (499, 999, 1999)[number % 3],
                "currency": "usd",
                "status": "refunded" if refunded else "paid",
                "payment_reference": f"pi_{number:06d}",
                "amount_refunded": (499, 999, 1999)[number % 3] if refunded else 0,
                "disputed": 0,
                "credits_taken_back": 0,
                "channel": None,
                "created_at": paid - timedelta(minutes=2),
                "updated_at": paid,
                "paid_at": paid,
            }
        )
    async with engine.begin() as connection:
        await connection.execute(insert(purchases), rows)


async def add_grants(url: str, count: int) -> None:
    ledger = Ledger(create_engine(url), clock=lambda: NOW)
    try:
        for number in range(count):
            await ledger.grant(
                HEAVY_ACCOUNT,
                10,
                actor=ADMIN,
                reason="bench grant",
                idempotency_key=f"bench-grant:{number}",
                kind=LotKind.PROMO,
            )
    finally:
        await ledger.close()


async def measure(url: str, count: int, account_count: int) -> list[tuple[str, float]]:
    engine = create_engine(url)
    try:
        started = time.perf_counter()
        await fill(engine, count, account_count, ACCOUNTS_NAMED)
        await add_purchases(engine, count * 3 // 100, account_count)
        if engine.dialect.name == "postgresql":
            # What autovacuum does within a minute of a bulk load: without statistics the
            # planner reads a day's generations through a scan of the whole table.
            async with engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text("ANALYZE"))
    finally:
        await engine.dispose()
    await add_grants(url, 200 if count >= 10_000 else 20)
    print(f"  filled {count:,} generations in {time.perf_counter() - started:.1f} s")
    settings = Settings(
        _env_file=None,
        database_url=url,
        models_file=REPO / "config" / "models.toml",
        pricing_file=REPO / "config" / "pricing.toml",
        admin_accounts=ADMIN,
    )
    # The history ends at bench.report's NOW: the dashboard's "today" and "30 days" are then.
    async with open_service(settings, clock=lambda: NOW, serving=False) as service:
        public = PublicWeb(settings)
        public.add_dashboard(service)
        async with TestClient(TestServer(public.application)) as client:
            token = await service.ledger.new_dashboard_link(ADMIN, LINK_LIFETIME)
            logged_in = await client.post("/admin/login", data={"token": token})
            assert logged_in.status == 200, await logged_in.text()

            async def ask(path: str) -> None:
                async with client.get(path) as response:
                    body = await response.read()
                    assert response.status == 200, body[:500]

            return [
                (label, await median_seconds(lambda path=path: ask(path)))
                for label, path in (*PAGES, *EXTRA_PAGES)
            ]


async def main(quick: bool) -> None:
    count, account_count = (500, 20) if quick else (100_000, 1_000)
    reachable = await postgres_reachable()
    server = f", PostgreSQL {await postgres_version()}" if reachable else ""
    print(f"bench.dashboard on {machine()}{server}: {count:,} generations, median of {RUNS}")
    slowest: dict[str, tuple[float, str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("sqlite", "postgresql") if reachable else ("sqlite",):
            print(name)
            if name == "sqlite":
                results = await measure(
                    f"sqlite+aiosqlite:///{Path(folder) / 'dashboard.db'}", count, account_count
                )
            else:
                async with postgres_database("dashboard") as (url, _dsn):
                    results = await measure(url, count, account_count)
            headline = {label for label, _ in PAGES}
            for label, seconds in results:
                extra = "" if label in headline else "  (not in the headline)"
                print(f"  {label:<22} {seconds * 1000:8.1f} ms{extra}")
            slowest[name] = max((seconds, label) for label, seconds in results if label in headline)
    if not reachable:
        print("(PostgreSQL was not reachable; SQLite only)")
    print(
        "dashboard: slowest page "
        + ", ".join(
            f"{name} {seconds * 1000:.0f} ms ({label})"
            for name, (seconds, label) in slowest.items()
        )
        + f" at {count:,} generations (target < {TARGET_MS} ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 generations")
    asyncio.run(main(parser.parse_args().quick))
