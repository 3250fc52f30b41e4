"""Schema changes go through Alembic, from an empty database and back, on both databases."""

from __future__ import annotations

from sqlalchemy import inspect, text

from ledger import create_engine, migrate

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
