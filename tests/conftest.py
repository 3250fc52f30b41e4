"""Shared fixtures: real SQLite and PostgreSQL databases, a controllable clock, the test providers."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import update

import providers
from ledger import GenerationStatus, Ledger, create_engine, migrate
from ledger.schema import generations
from providers import ProviderSpec

POSTGRES_ADMIN_DSN = os.environ.get(
    "TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)

# Test providers go through the same registration line a real provider uses.
providers.register(ProviderSpec("scripted", "tests.fakes:ScriptedProvider"))
providers.register(ProviderSpec("chaos", "tests.fakes:ChaosProvider"))


class FakeClock:
    """A clock tests move by hand; every reading is a microsecond later so order is kept."""

    def __init__(self, start: datetime = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        message = f"PostgreSQL is not reachable at {POSTGRES_ADMIN_DSN}: {error}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(message + " (REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    name = f"imagine_test_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        host = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].removeprefix("postgresql://")
        yield f"postgresql+asyncpg://{host}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test that takes this runs once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def ledger(database_url: str, clock: FakeClock) -> AsyncIterator[Ledger]:
    engine = create_engine(database_url)
    await migrate.upgrade(engine)
    opened = Ledger(engine, clock)
    try:
        yield opened
    finally:
        await opened.close()


async def run_out_leases(ledger: Ledger) -> None:
    """What time does to a process that stopped renewing: every running generation's lease is over."""
    async with ledger.engine.begin() as connection:
        await connection.execute(
            update(generations)
            .where(generations.c.status == GenerationStatus.RUNNING)
            .values(lease_until=datetime(2000, 1, 1, tzinfo=UTC))
        )
