"""Small helpers the benchmarks share: percentiles, event-loop lag, PostgreSQL databases."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg

POSTGRES = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
"""Where the benchmarks create (and drop) PostgreSQL databases of their own."""


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def summary_ms(values: Sequence[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5) * 1000:7.1f} ms  "
        f"p95 {percentile(values, 0.95) * 1000:7.1f} ms  "
        f"p99 {percentile(values, 0.99) * 1000:7.1f} ms"
    )


class LoopLag:
    """Measures how late a 10 ms timer fires while other work runs: the event loop's lag."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _tick(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - started - self.interval))

    @property
    def p99(self) -> float:
        return percentile(self.lags, 0.99)


def machine() -> str:
    """What the figures were measured on: architecture, CPU model, cores, Python, system."""
    return (
        f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.system()}"
    )


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


@contextlib.asynccontextmanager
async def postgres_database(name: str) -> AsyncIterator[tuple[str, str]]:
    """A database of its own on ``POSTGRES``, as (SQLAlchemy URL, asyncpg DSN), dropped after."""
    admin = await asyncpg.connect(POSTGRES, timeout=5)
    database = f"imagine_bench_{name}_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{database}"')
    host = POSTGRES.rsplit("/", 1)[0]
    try:
        yield (
            host.replace("postgresql://", "postgresql+asyncpg://") + f"/{database}",
            f"{host}/{database}",
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def postgres_version() -> str:
    """The version of the PostgreSQL server at ``POSTGRES``, e.g. "15.20"."""
    connection = await asyncpg.connect(POSTGRES, timeout=5)
    try:
        return str(await connection.fetchval("SHOW server_version")).split(" ", 1)[0]
    finally:
        await connection.close()


async def postgres_reachable() -> bool:
    try:
        connection = await asyncpg.connect(POSTGRES, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


def add_database_option(parser: argparse.ArgumentParser) -> None:
    """``--database``: where the bot under test keeps its ledger, for ``ledger_database``."""
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="where the bot keeps its ledger (PostgreSQL at TEST_POSTGRES_DSN)",
    )


async def database_name(kind: str) -> str:
    """``kind`` as a header line names it: "sqlite", or "PostgreSQL 15.20" with the server's version."""
    if kind == "sqlite" or not await postgres_reachable():
        return kind
    return f"PostgreSQL {await postgres_version()}"


@contextlib.asynccontextmanager
async def ledger_database(kind: str, folder: Path, name: str) -> AsyncIterator[str]:
    """The bot's DATABASE_URL: a SQLite file in ``folder``, or a PostgreSQL database of its own."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder / f'{name}.db'}"
        return
    if not await postgres_reachable():
        raise SystemExit(f"PostgreSQL at {POSTGRES} is not reachable (TEST_POSTGRES_DSN)")
    async with postgres_database(name) as (url, _dsn):
        yield url
