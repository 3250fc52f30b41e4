"""The database's clock, which every process sharing the database reads alike: leases are timed
by it, not by any one machine's clock."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, func, type_coerce
from sqlalchemy.engine import Connection

from ledger.schema import UTCDateTime


def database_now(connection: Connection) -> ColumnElement[datetime]:
    return database_clock(connection.dialect.name)


def database_clock(dialect: str) -> ColumnElement[datetime]:
    """The database's current time on ``dialect``, as an expression to select or compare with."""
    if dialect == "sqlite":
        # In the form SQLite's timestamps are stored in, microseconds included, so they compare as text.
        return type_coerce(func.strftime("%Y-%m-%d %H:%M:%f000", "now"), UTCDateTime)
    return type_coerce(func.now(), UTCDateTime)
