"""A consistent copy of a SQLite ledger, taken while bots may be writing to it."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

_PAGES_PER_STEP = 1024
"""Copied between pauses, so a large copy lets the bot's writers in along the way."""

_BUSY_TIMEOUT_SECONDS = 30.0


class NoDatabaseFile(Exception):
    """There is no database at the source path: nothing to back up."""


def backup_sqlite(database: str, target: Path) -> Path:
    """Copy the database file ``database`` to the new file ``target`` with SQLite's backup API.

    The backup API, unlike copying the file, includes commits still in the
    write-ahead log and yields one consistent snapshot. Raises ``FileExistsError``
    rather than overwrite ``target`` (it may be the only good backup), and
    ``NoDatabaseFile`` rather than create an empty database to copy. Returns
    the database's path, with ``~`` expanded.
    """
    source = Path(database).expanduser()
    if not source.is_file():
        raise NoDatabaseFile(database)
    # Claimed before copying, so two backups to one path cannot both write it.
    target.open("xb").close()
    try:
        with (
            contextlib.closing(sqlite3.connect(source, timeout=_BUSY_TIMEOUT_SECONDS)) as reading,
            contextlib.closing(sqlite3.connect(target)) as writing,
        ):
            reading.backup(writing, pages=_PAGES_PER_STEP)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return source
