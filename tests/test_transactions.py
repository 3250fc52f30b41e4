"""How ledger transactions run on a SQLite file: queued writes commit together, each undone alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from ledger import create_engine, migrate
from ledger.schema import bot_state
from ledger.transactions import SQLITE_WRITES_PER_BATCH, ThreadedSQLite, transactions_for

NOW = datetime(2026, 11, 25, tzinfo=UTC)


class Refused(Exception):
    pass


@pytest.fixture
async def transactions(tmp_path: Path) -> AsyncIterator[ThreadedSQLite]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}")
    await migrate.upgrade(engine)
    runner = transactions_for(engine)
    assert isinstance(runner, ThreadedSQLite)
    try:
        yield runner
    finally:
        await runner.close()


def remember(key: str, *, then_refuse: bool = False) -> Callable[[Connection], str]:
    """Work that records ``key``, then, if asked, refuses after writing."""

    def work(connection: Connection) -> str:
        connection.execute(insert(bot_state).values(key=key, value="v", updated_at=NOW))
        if then_refuse:
            raise Refused(key)
        return key

    return work


def keys(connection: Connection) -> list[str]:
    return list(connection.scalars(select(bot_state.c.key).order_by(bot_state.c.key)))


async def test_writes_queued_together_each_keep_their_own_outcome(
    transactions: ThreadedSQLite,
) -> None:
    outcomes = await asyncio.gather(
        *(
            transactions.write(remember(f"k{n:03}", then_refuse=n % 3 == 1))
            for n in range(3 * SQLITE_WRITES_PER_BATCH)
        ),
        return_exceptions=True,
    )

    refused = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, Refused)]
    assert refused == [n for n in range(3 * SQLITE_WRITES_PER_BATCH) if n % 3 == 1]
    kept = [f"k{n:03}" for n in range(3 * SQLITE_WRITES_PER_BATCH) if n % 3 != 1]
    assert await transactions.read(keys) == kept


async def test_a_write_refused_alone_leaves_nothing_behind(transactions: ThreadedSQLite) -> None:
    with pytest.raises(Refused):
        await transactions.write(remember("lonely", then_refuse=True))

    assert await transactions.read(keys) == []


async def test_a_cancelled_callers_write_still_commits_as_do_those_queued_with_it(
    transactions: ThreadedSQLite,
) -> None:
    first = asyncio.ensure_future(transactions.write(remember("a")))
    second = asyncio.ensure_future(transactions.write(remember("b")))
    third = asyncio.ensure_future(transactions.write(remember("c")))
    await asyncio.sleep(0)
    second.cancel()

    assert await first == "a"
    assert await third == "c"
    assert await transactions.read(keys) == ["a", "b", "c"]
