"""The ledger's schema: a fresh database is set up, an older one upgraded only when asked.

Changes to the schema are Alembic migrations in ``ledger/migrations``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"

_MIGRATION_LOCK = 0x1A6E_B07
"""The PostgreSQL advisory lock processes take turns on to set up or upgrade the schema."""


class SchemaOutdated(Exception):
    """The database is at an older revision, and this command does not upgrade it."""

    def __init__(self, current: str, head: str) -> None:
        super().__init__(f"the database is at revision {current}; this version needs {head}")
        self.current = current
        self.head = head


class SchemaUnknown(Exception):
    """The database is at a revision this code does not know: a newer version wrote it."""

    def __init__(self, current: str) -> None:
        super().__init__(f"the database is at revision {current}, which this version does not know")
        self.current = current


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def prepare(engine: AsyncEngine, *, upgrade: bool) -> None:
    """Bring the database to this code's revision, or refuse.

    A fresh, empty database always gets the whole schema. One at an older
    revision is upgraded only if ``upgrade`` (``SchemaOutdated`` otherwise);
    one at a revision this code does not know is refused (``SchemaUnknown``).
    Processes starting at once take turns: the check and the upgrade run in
    one transaction under a lock (an advisory lock on PostgreSQL, ``BEGIN
    IMMEDIATE`` on SQLite), so the second finds the first's work done.
    """
    async with engine.connect() as connection:
        await connection.execution_options(ledger_write=True)
        await connection.run_sync(_prepare, upgrade)


def _prepare(connection: Connection, upgrade: bool) -> None:
    with connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
        current = MigrationContext.configure(connection).get_current_revision()
        scripts = _scripts()
        head = scripts.get_current_head()
        if current == head:
            return
        if current is not None:
            if not _known(scripts, current):
                raise SchemaUnknown(current)
            if not upgrade:
                raise SchemaOutdated(current, head or "")
        command.upgrade(_config(connection), "head")


def _known(scripts: ScriptDirectory, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply every pending migration up to ``revision`` (a fresh database gets the whole schema)."""
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: command.upgrade(_config(sync), revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: command.downgrade(_config(sync), revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


def head_revision() -> str | None:
    return _scripts().get_current_head()


@functools.cache
def _scripts() -> ScriptDirectory:
    """The migration scripts, read once: they ship with this code and do not change under it
    (reading them is most of what opening an up-to-date database costs)."""
    return ScriptDirectory.from_config(_config())
