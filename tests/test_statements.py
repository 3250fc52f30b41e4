"""The ledger's statements run straight on the driver: compiled for its dialect, values stored as SQLAlchemy would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import literal, select
from sqlalchemy.dialects import postgresql, sqlite

from ledger import statements
from ledger.schema import UTCDateTime

SQLALCHEMY_SQLITE_BIND = (
    UTCDateTime().dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())
)

offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_times = st.datetimes(
    min_value=datetime(1900, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
)


@given(aware_times)
def test_a_timestamp_is_stored_as_text_sqlalchemy_would_store(value: datetime) -> None:
    assert UTCDateTime.sqlite_text(value) == SQLALCHEMY_SQLITE_BIND(value)


def test_a_whole_second_keeps_its_microseconds_so_stored_times_sort_as_text() -> None:
    assert UTCDateTime.sqlite_text(datetime(2026, 1, 1, tzinfo=UTC)) == (
        "2026-01-01 00:00:00.000000"
    )


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        UTCDateTime.sqlite_text(datetime(2026, 1, 1))


def test_no_timestamp_stays_null() -> None:
    assert UTCDateTime.sqlite_text(None) is None


def test_a_statement_run_on_both_databases_in_one_process_is_compiled_for_each() -> None:
    values = {"generation_id": "g1", "images": 2}
    on_sqlite, _ = statements.for_driver(statements.MARK_POSTED, sqlite.dialect(), values)
    on_postgres, arguments = statements.for_driver(
        statements.MARK_POSTED, postgresql.asyncpg.dialect(), values
    )
    assert "?" in on_sqlite
    assert ("$1" in on_postgres, "?" in on_postgres) == (True, False)
    assert arguments[:2] == (2, "g1")


def test_statements_built_one_after_another_are_each_compiled_for_themselves() -> None:
    arguments = [
        statements.for_driver(select(literal(number)), sqlite.dialect(), {})[1]
        for number in range(20)
    ]
    assert arguments == [(number,) for number in range(20)]
