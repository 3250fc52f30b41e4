"""Which commands change the database on their own: only run, console and db upgrade upgrade it,
only run and console settle what other processes left behind."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from ledger import GenerationStatus, Ledger, create_engine, migrate
from tests.cli_helpers import imagine_bot
from tests.conftest import FakeClock, run_out_leases
from tests.test_ledger import new_quote

OWNER = "console:local"


@pytest.fixture
def database_file(tmp_path: Path) -> Path:
    """Where ``imagine_bot`` keeps the database, in the test's own folder."""
    return tmp_path / "imagine.db"


def at_revision(database_file: Path, revision: str) -> None:
    async def upgrade() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{database_file}")
        try:
            await migrate.upgrade(engine, revision)
        finally:
            await engine.dispose()

    asyncio.run(upgrade())


def revision_of(database_file: Path) -> str | None:
    async def read() -> str | None:
        engine = create_engine(f"sqlite+aiosqlite:///{database_file}")
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_a_command_on_an_older_database_is_refused_with_what_to_run(
    tmp_path: Path, database_file: Path
) -> None:
    at_revision(database_file, "0003")

    run = imagine_bot(tmp_path, "balance", OWNER)

    assert run.returncode == 1
    assert "older version of the bot (revision 0003)" in run.stderr
    assert "imagine-bot db upgrade" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert revision_of(database_file) == "0003"


@pytest.mark.parametrize(
    "arguments",
    [("report",), ("ledger", "verify"), ("grant", OWNER, "5"), ("history", OWNER)],
)
def test_no_other_command_upgrades_an_older_database(
    tmp_path: Path, database_file: Path, arguments: tuple[str, ...]
) -> None:
    at_revision(database_file, "0003")
    run = imagine_bot(tmp_path, *arguments)
    assert (run.returncode, revision_of(database_file)) == (1, "0003"), run.stderr


def test_db_upgrade_upgrades_an_older_database(tmp_path: Path, database_file: Path) -> None:
    at_revision(database_file, "0003")

    run = imagine_bot(tmp_path, "db", "upgrade")

    assert run.returncode == 0, run.stderr
    assert f"revision {migrate.head_revision()} (latest)" in run.stdout
    assert revision_of(database_file) == migrate.head_revision()


def test_the_console_upgrades_an_older_database(tmp_path: Path, database_file: Path) -> None:
    at_revision(database_file, "0003")
    run = imagine_bot(tmp_path, "console", stdin="/credits\n")
    assert run.returncode == 0, run.stderr
    assert revision_of(database_file) == migrate.head_revision()


def test_every_command_refuses_a_database_written_by_a_newer_version(
    tmp_path: Path, database_file: Path
) -> None:
    at_revision(database_file, "head")

    async def from_the_future() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{database_file}")
        try:
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE alembic_version SET version_num = '9001'"))
        finally:
            await engine.dispose()

    asyncio.run(from_the_future())

    for arguments in (("balance", OWNER), ("db", "upgrade"), ("console",)):
        run = imagine_bot(tmp_path, *arguments)
        assert run.returncode == 1, arguments
        assert "newer version of the bot (revision 9001" in run.stderr


def abandoned_generation(database_file: Path) -> None:
    """A generation held by a process that has since died: its lease has run out."""

    async def leave() -> None:
        ledger = Ledger(create_engine(f"sqlite+aiosqlite:///{database_file}"), owner="dead")
        try:
            await migrate.upgrade(ledger.engine)
            await ledger.grant(OWNER, 10, actor="test", reason="", idempotency_key="fund")
            now = FakeClock(datetime.now(UTC))
            await ledger.create_quote(new_quote(now, "g1", OWNER, images=1, credits_per_image=1))
            await ledger.hold("g1", OWNER)
            await run_out_leases(ledger)
        finally:
            await ledger.close()

    asyncio.run(leave())


def status_of_g1(database_file: Path) -> GenerationStatus:
    async def read() -> GenerationStatus:
        ledger = Ledger(create_engine(f"sqlite+aiosqlite:///{database_file}"))
        try:
            return (await ledger.generation("g1")).status
        finally:
            await ledger.close()

    return asyncio.run(read())


@pytest.mark.parametrize(
    "arguments",
    [("balance", OWNER), ("history", OWNER), ("report",), ("ledger", "verify"), ("models",)],
)
def test_a_one_off_command_settles_nothing_another_process_left(
    tmp_path: Path, database_file: Path, arguments: tuple[str, ...]
) -> None:
    abandoned_generation(database_file)
    run = imagine_bot(tmp_path, *arguments)
    assert run.returncode == 0, run.stderr
    assert status_of_g1(database_file) == GenerationStatus.RUNNING


def test_the_console_settles_what_a_dead_process_left(tmp_path: Path, database_file: Path) -> None:
    abandoned_generation(database_file)
    run = imagine_bot(tmp_path, "console", stdin="/credits\n")
    assert run.returncode == 0, run.stderr
    assert status_of_g1(database_file) == GenerationStatus.FAILED


def test_db_backup_copies_the_ledger_while_another_connection_holds_it_open(
    tmp_path: Path, database_file: Path
) -> None:
    imagine_bot(tmp_path, "grant", "discord:42", "50")
    backup = tmp_path / "backups" / "imagine-backup.db"
    backup.parent.mkdir()

    # A reader in the middle of a transaction, as a running bot may be.
    with contextlib.closing(sqlite3.connect(database_file)) as running_bot:
        running_bot.execute("BEGIN")
        running_bot.execute("SELECT count(*) FROM ledger_entries").fetchone()
        result = imagine_bot(tmp_path, "db", "backup", str(backup))

    assert result.returncode == 0, result.stderr
    assert f"Backed up {database_file} to {backup}" in result.stdout
    assert "docs/ledger.md" in result.stdout
    from_backup = imagine_bot(
        tmp_path, "balance", "discord:42", DATABASE_URL=f"sqlite+aiosqlite:///{backup}"
    )
    assert "discord:42: Balance: 50 credits available." in from_backup.stdout


def test_db_backup_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    imagine_bot(tmp_path, "grant", "discord:42", "50")
    earlier = tmp_path / "earlier-backup.db"
    earlier.write_bytes(b"the only good backup")

    result = imagine_bot(tmp_path, "db", "backup", str(earlier))

    assert result.returncode == 1
    assert f"{earlier} already exists" in result.stderr
    assert earlier.read_bytes() == b"the only good backup"


def test_db_backup_of_a_missing_database_creates_nothing(tmp_path: Path) -> None:
    result = imagine_bot(tmp_path, "db", "backup", str(tmp_path / "backup.db"))

    assert result.returncode == 1
    assert "There is no database file at" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_db_backup_on_postgresql_says_to_use_pg_dump_without_connecting(tmp_path: Path) -> None:
    # Port 1: nothing listens there, so a connection attempt would fail differently.
    result = imagine_bot(
        tmp_path,
        "db",
        "backup",
        "imagine.dump",
        DATABASE_URL="postgresql+asyncpg://bot:secret@127.0.0.1:1/imagine",
    )

    assert result.returncode == 1
    assert "On PostgreSQL, back up with pg_dump" in result.stderr
    assert "pg_dump -Fc -d <database> -f imagine.dump" in result.stderr
    assert not (tmp_path / "imagine.dump").exists()
