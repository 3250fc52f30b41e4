"""Which commands change the database on their own: only run, console and db upgrade upgrade it,
only run and console settle what other processes left behind."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from bot import cli
from ledger import GenerationStatus, Ledger, NewGeneration, create_engine, migrate
from tests.conftest import run_out_leases

REPO = Path(__file__).resolve().parent.parent
OWNER = "console:local"

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def database_file(tmp_path: Path) -> Path:
    return tmp_path / "imagine.db"


@pytest.fixture
def imagine_bot(
    tmp_path: Path,
    database_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """``imagine-bot`` in this process: its exit code, standard output and standard error."""
    monkeypatch.chdir(tmp_path)
    for name in ("DISCORD_TOKEN", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{database_file}")
    monkeypatch.setenv("MODELS_FILE", str(REPO / "config" / "models.toml"))
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path / "out"))

    def run(*arguments: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        with pytest.raises(SystemExit) as exited:
            cli.main(list(arguments))
        out, err = capsys.readouterr()
        return int(exited.value.code or 0), out, err

    return run


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
    imagine_bot: Run, database_file: Path
) -> None:
    at_revision(database_file, "0003")

    code, _, err = imagine_bot("balance", OWNER)

    assert code == 1
    assert "older version of the bot (revision 0003)" in err
    assert "imagine-bot db upgrade" in err
    assert len(err.strip().splitlines()) == 1
    assert revision_of(database_file) == "0003"


@pytest.mark.parametrize(
    "arguments",
    [("report",), ("ledger", "verify"), ("grant", OWNER, "5"), ("history", OWNER)],
)
def test_no_other_command_upgrades_an_older_database(
    imagine_bot: Run, database_file: Path, arguments: tuple[str, ...]
) -> None:
    at_revision(database_file, "0003")
    code, _, err = imagine_bot(*arguments)
    assert (code, revision_of(database_file)) == (1, "0003"), err


def test_db_upgrade_upgrades_an_older_database(imagine_bot: Run, database_file: Path) -> None:
    at_revision(database_file, "0003")

    code, out, err = imagine_bot("db", "upgrade")

    assert code == 0, err
    assert f"revision {migrate.head_revision()} (latest)" in out
    assert revision_of(database_file) == migrate.head_revision()


def test_the_console_upgrades_an_older_database(imagine_bot: Run, database_file: Path) -> None:
    at_revision(database_file, "0003")
    code, _, err = imagine_bot("console", stdin="/credits\n")
    assert code == 0, err
    assert revision_of(database_file) == migrate.head_revision()


def test_every_command_refuses_a_database_written_by_a_newer_version(
    imagine_bot: Run, database_file: Path
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
        code, _, err = imagine_bot(*arguments)
        assert code == 1, arguments
        assert "newer version of the bot (revision 9001" in err


def abandoned_generation(database_file: Path) -> None:
    """A generation held by a process that has since died: its lease has run out."""

    async def leave() -> None:
        ledger = Ledger(create_engine(f"sqlite+aiosqlite:///{database_file}"), owner="dead")
        try:
            await migrate.upgrade(ledger.engine)
            await ledger.grant(OWNER, 10, actor="test", reason="", idempotency_key="fund")
            await ledger.create_quote(
                NewGeneration(
                    id="g1",
                    account_id=OWNER,
                    model_id="local-sketch",
                    provider="local",
                    provider_model="procedural-v1",
                    prompt="a fox",
                    options={"resolution": "1K", "aspect_ratio": "1:1"},
                    images_requested=1,
                    credits_per_image=1,
                    expires_at=datetime.now(UTC) + timedelta(minutes=10),
                )
            )
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
    imagine_bot: Run, database_file: Path, arguments: tuple[str, ...]
) -> None:
    abandoned_generation(database_file)
    code, _, err = imagine_bot(*arguments)
    assert code == 0, err
    assert status_of_g1(database_file) == GenerationStatus.RUNNING


def test_the_console_settles_what_a_dead_process_left(
    imagine_bot: Run, database_file: Path
) -> None:
    abandoned_generation(database_file)
    code, _, err = imagine_bot("console", stdin="/credits\n")
    assert code == 0, err
    assert status_of_g1(database_file) == GenerationStatus.FAILED
