"""Schema changes go through Alembic, from an empty database and back, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import Ledger, create_engine, migrate, schema

LEDGER_TABLES = {"accounts", "generations", "ledger_entries"}


async def table_names(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_from_empty_creates_the_schema_at_head(fresh_database_url: str) -> None:
    engine = create_engine(fresh_database_url)
    try:
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()
    assert await table_names(fresh_database_url) >= LEDGER_TABLES


async def test_migrations_at_head_build_exactly_the_tables_the_code_declares(
    fresh_database_url: str,
) -> None:
    engine = create_engine(fresh_database_url)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), schema.metadata)
            )
    finally:
        await engine.dispose()
    assert differences == []


async def test_upgrade_twice_changes_nothing(fresh_database_url: str) -> None:
    engine = create_engine(fresh_database_url)
    try:
        await migrate.upgrade(engine)
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


async def test_downgrade_to_base_removes_the_schema(fresh_database_url: str) -> None:
    engine = create_engine(fresh_database_url)
    try:
        await migrate.upgrade(engine)
        await migrate.downgrade(engine, "base")
        assert await migrate.current_revision(engine) is None
    finally:
        await engine.dispose()
    assert not LEDGER_TABLES & await table_names(fresh_database_url)


async def test_sqlite_database_runs_in_wal_mode_with_a_busy_timeout(tmp_path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    try:
        async with engine.connect() as connection:
            journal = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
            timeout = (await connection.execute(text("PRAGMA busy_timeout"))).scalar()
    finally:
        await engine.dispose()
    assert journal == "wal"
    assert timeout is not None and timeout >= 5000


@contextlib.asynccontextmanager
async def engine_for(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_a_fresh_database_is_set_up_even_without_upgrading(fresh_database_url: str) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.prepare(engine, upgrade=False)
        assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_an_older_database_is_refused_unless_upgrading_and_left_as_it_was(
    fresh_database_url: str,
) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine, "0003")

        with pytest.raises(migrate.SchemaOutdated) as refused:
            await migrate.prepare(engine, upgrade=False)

        assert (refused.value.current, refused.value.head) == ("0003", migrate.head_revision())
        assert await migrate.current_revision(engine) == "0003"


async def test_an_older_database_is_upgraded_when_asked(fresh_database_url: str) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine, "0003")
        await migrate.prepare(engine, upgrade=True)
        assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_a_database_written_by_a_newer_version_is_refused_even_when_upgrading(
    fresh_database_url: str,
) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine)
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '9001'"))

        with pytest.raises(migrate.SchemaUnknown) as refused:
            await migrate.prepare(engine, upgrade=True)

        assert refused.value.current == "9001"


async def test_processes_starting_at_once_on_an_older_database_upgrade_it_once(
    fresh_database_url: str,
) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine, "0002")
    engines = [create_engine(fresh_database_url) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate.prepare(each, upgrade=True) for each in engines))
        assert await migrate.current_revision(engines[0]) == migrate.head_revision()
    finally:
        for each in engines:
            await each.dispose()


async def test_generations_running_at_the_upgrade_to_leases_keep_a_lease(
    fresh_database_url: str,
) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine, "0003")
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO accounts (id, available, held, created_at, updated_at)"
                    " VALUES ('discord:1', 0, 10, :at, :at)"
                ),
                {"at": datetime(2026, 12, 1, tzinfo=UTC)},
            )
            await connection.execute(
                text(
                    "INSERT INTO generations (id, account_id, model_id, provider, provider_model,"
                    " prompt, options, images_requested, images_delivered, credits_per_image,"
                    " credits_held, credits_charged, status, created_at, expires_at,"
                    " confirmed_at) VALUES ('g1', 'discord:1', 'm', 'local', 'p', 'a fox', '{}',"
                    " 1, 0, 10, 10, 0, 'running', :at, :at, :at)"
                ),
                {"at": datetime(2026, 12, 1, tzinfo=UTC)},
            )

        await migrate.prepare(engine, upgrade=True)

        ledger = Ledger(engine)
        try:
            assert await ledger.expired_leases() == []
            running = await ledger.generation("g1")
        finally:
            await ledger.close()
        assert running.lease_until is not None
        assert running.lease_until > datetime.now(UTC)
