"""Shared fixtures: real SQLite and PostgreSQL databases, a controllable clock, the test providers.

Each test session (each pytest-xdist worker) migrates one PostgreSQL database and one
SQLite file of its own, once. A test that takes ``database_url`` or ``ledger`` gets that
PostgreSQL database with the ledger's tables emptied, or a copy of that SQLite file. A test
that needs a database no migration has touched (migrations from empty, an old revision)
takes ``fresh_database_url`` or opens ``postgres_database()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest
from sqlalchemy import update

import providers
from ledger import GenerationStatus, Ledger, create_engine, migrate, schema
from ledger.schema import generations
from providers import ProviderSpec

POSTGRES_ADMIN_DSN = os.environ.get(
    "TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
_POSTGRES_SERVER = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
"""Part of every database name, so two xdist workers never share one."""

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


@pytest.fixture(autouse=True)
def no_pricing_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty PRICING_FILE unless a test gives its own.

    Tests run at the repository's root, where the shipped ``config/pricing.toml``
    would otherwise put its batch discounts into every price they compute.
    """
    monkeypatch.setenv("PRICING_FILE", os.devnull)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _postgres_unreachable(error: BaseException | str) -> NoReturn:
    """Skip the test, or fail it when the run must cover PostgreSQL (``REQUIRE_POSTGRES=1``)."""
    message = f"PostgreSQL is not reachable at {POSTGRES_ADMIN_DSN}: {error}"
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(message + " (REQUIRE_POSTGRES=1)")
    pytest.skip(message)


async def _admin_connection() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        _postgres_unreachable(error)


def _new_database_name() -> str:
    return f"imagine_test_{_WORKER}_{uuid.uuid4().hex[:12]}"


def _sqlalchemy_url(name: str) -> str:
    return f"{_POSTGRES_SERVER.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"


async def require_postgres() -> None:
    """Skip (or fail, with ``REQUIRE_POSTGRES=1``) as every PostgreSQL test does when it is down."""
    await (await _admin_connection()).close()


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A brand-new, empty PostgreSQL database for one test, dropped afterwards."""
    admin = await _admin_connection()
    name = _new_database_name()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _sqlalchemy_url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


_EMPTY_THE_LEDGER = (
    # Connections a previous test left open would hold locks the deletes wait for.
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid();"
    # Every table the schema declares, so a new one is emptied too (never alembic_version),
    # those referring to others first. DELETE, not TRUNCATE: on tables this small it takes a
    # quarter of the time, and every PostgreSQL test pays it.
    "BEGIN;"
    + "".join(f'DELETE FROM "{table.name}";' for table in reversed(schema.metadata.sorted_tables))
    + "COMMIT;"
)
_SEQUENCES = "SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()"


class SessionPostgres:
    """This session's (this xdist worker's) migrated PostgreSQL database.

    It is created and migrated when a test first asks for it, in that test's event loop
    (its connections are closed again at once), and dropped when the session ends. A test
    that left it at another revision (a downgrade) gets it rebuilt for the tests after it.
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self.revision: str | None = None
        self._unreachable: str | None = None

    async def emptied(self) -> str:
        """The database's URL, with every ledger table empty and its identities restarted."""
        if self._unreachable is not None:
            _postgres_unreachable(self._unreachable)
        if self.name is None or not await self._empty_if_still_migrated(self.name):
            await self.drop()
            await self._create()
        assert self.name is not None
        return _sqlalchemy_url(self.name)

    async def _empty_if_still_migrated(self, name: str) -> bool:
        connection = await asyncpg.connect(f"{_POSTGRES_SERVER}/{name}", timeout=5)
        try:
            try:
                revision = await connection.fetchval("SELECT version_num FROM alembic_version")
            except asyncpg.UndefinedTableError:
                return False
            if revision != self.revision:
                return False
            await connection.execute(_EMPTY_THE_LEDGER)
            # Ids start from 1 again, as in a new database.
            for sequence in await connection.fetch(_SEQUENCES):
                await connection.execute(f'ALTER SEQUENCE "{sequence[0]}" RESTART')
            return True
        finally:
            await connection.close()

    async def _create(self) -> None:
        try:
            admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            self._unreachable = str(error)
            _postgres_unreachable(error)
        name = _new_database_name()
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self.name = name
        engine = create_engine(_sqlalchemy_url(name))
        try:
            await migrate.upgrade(engine)
            self.revision = await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    async def drop(self) -> None:
        if self.name is None:
            return
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()
        self.name = None


@pytest.fixture(scope="session")
def session_postgres() -> Iterator[SessionPostgres]:
    database = SessionPostgres()
    yield database
    asyncio.run(database.drop())


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session, copied for each test that wants one."""
    path = tmp_path_factory.mktemp("template") / "imagine.db"

    async def migrated() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(migrated())
    # Everything into the one file that is copied (the last connection to close does this too).
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the PostgreSQL runs of ``sqlite_only`` tests not also marked ``both_databases``.

    A platform adapter's tests check what it translates; the ledger and flow
    tests run every rule on both databases. Those of its tests whose point is
    the database (a double click, a redelivery, an outage) keep both.
    """
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("database_url") == "postgres"
        dropped_here = (
            on_postgres
            and item.get_closest_marker("sqlite_only") is not None
            and item.get_closest_marker("both_databases") is None
        )
        (dropped if dropped_here else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    session_postgres: SessionPostgres,
    migrated_sqlite_file: Path,
) -> str:
    """Each test that takes this runs once on a SQLite file and once on PostgreSQL.

    The database is migrated and empty: a copy of the session's migrated SQLite file, or
    the session's PostgreSQL database with its tables emptied. Migrating it again changes
    nothing.
    """
    if request.param == "sqlite":
        shutil.copyfile(migrated_sqlite_file, tmp_path / "imagine.db")
        return f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"
    return await session_postgres.emptied()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database no migration has touched yet, on SQLite and on PostgreSQL."""
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
