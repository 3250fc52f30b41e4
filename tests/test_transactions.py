"""How ledger transactions run: on a SQLite file queued writes commit together, each undone alone."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import Integer, bindparam, func, insert, literal, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from ledger import Ledger, create_engine, migrate, unreachable
from ledger import transactions as transactions_module
from ledger.schema import bot_state
from ledger.transactions import (
    POSTGRES_GROUPS_AT_ONCE,
    POSTGRES_POOL_SIZE,
    POSTGRES_POOL_WAIT_SECONDS,
    POSTGRES_RUNS_PER_GROUP,
    SQLITE_WRITES_PER_BATCH,
    ThreadedSQLite,
    transactions_for,
)
from tests.conftest import FakeClock, postgres_database

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


async def test_a_batch_without_a_refusal_runs_each_write_once(
    transactions: ThreadedSQLite,
) -> None:
    ran: list[str] = []

    def counted(key: str) -> Callable[[Connection], str]:
        def work(connection: Connection) -> str:
            ran.append(key)
            return remember(key)(connection)

        return work

    await asyncio.gather(
        *(transactions.write(counted(f"k{n:03}")) for n in range(2 * SQLITE_WRITES_PER_BATCH))
    )

    assert sorted(ran) == [f"k{n:03}" for n in range(2 * SQLITE_WRITES_PER_BATCH)]
    assert transactions.batches_written_again == 0


async def test_a_refusal_runs_only_its_own_batch_again(transactions: ThreadedSQLite) -> None:
    # The first write goes alone to the idle writer; the next batch queues behind it.
    first = asyncio.ensure_future(transactions.write(remember("a")))
    await asyncio.sleep(0)
    queued = [
        transactions.write(remember(f"k{n:03}", then_refuse=n == 3))
        for n in range(SQLITE_WRITES_PER_BATCH)
    ]
    outcomes = await asyncio.gather(first, *queued, return_exceptions=True)

    assert [isinstance(outcome, Refused) for outcome in outcomes].count(True) == 1
    assert transactions.batches_written_again == 1
    assert len(await transactions.read(keys)) == SQLITE_WRITES_PER_BATCH


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


async def test_closing_finishes_the_writes_already_asked_for(
    transactions: ThreadedSQLite, tmp_path: Path
) -> None:
    writes = [
        asyncio.ensure_future(transactions.write(remember(f"k{n:03}")))
        for n in range(2 * SQLITE_WRITES_PER_BATCH)
    ]
    await asyncio.sleep(0)

    await transactions.close()

    assert [await write for write in writes] == [
        f"k{n:03}" for n in range(2 * SQLITE_WRITES_PER_BATCH)
    ]
    reopened = transactions_for(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"))
    try:
        assert len(await reopened.read(keys)) == 2 * SQLITE_WRITES_PER_BATCH
    finally:
        await reopened.close()


async def test_an_in_memory_database_runs_the_ledger_through_the_async_driver(
    clock: FakeClock,
) -> None:
    engine = create_engine("sqlite+aiosqlite:///:memory:")
    await migrate.upgrade(engine)
    ledger = Ledger(engine, clock)
    try:
        await ledger.grant("discord:1", 10, actor="test", reason="", idempotency_key="g")
        await asyncio.gather(
            *(
                ledger.revoke("discord:1", 1, actor="test", reason="", idempotency_key=f"r{n}")
                for n in range(4)
            )
        )
        assert (await ledger.balance("discord:1")).available == 6
        assert await ledger.verify() == []
    finally:
        await ledger.close()


async def test_a_writer_connection_left_broken_is_replaced_for_the_next_write(
    transactions: ThreadedSQLite,
) -> None:
    def break_connection(connection: Connection) -> None:
        connection.invalidate()
        raise Refused("the connection broke")

    with pytest.raises(Refused):
        await transactions.write(break_connection)

    assert await transactions.write(remember("after")) == "after"
    assert await transactions.read(keys) == ["after"]


@pytest.mark.postgres
async def test_a_write_after_a_lone_statement_is_still_one_transaction() -> None:
    async with postgres_database() as url:
        engine = create_engine(url)
        await migrate.upgrade(engine)
        runner = transactions_for(engine)
        try:
            # A lone statement commits as it runs; the connection must not stay that way.
            await runner.statement(
                insert(bot_state).values(key="alone", value="v", updated_at=NOW), {}
            )

            with pytest.raises(Refused):
                await runner.write(remember("refused", then_refuse=True))

            assert await runner.read(keys) == ["alone"]
        finally:
            await runner.close()


@pytest.mark.postgres
async def test_a_write_waits_its_turn_while_every_pooled_connection_is_busy() -> None:
    async with postgres_database() as url:
        engine = create_engine(url)
        await migrate.upgrade(engine)
        runner = transactions_for(engine)
        busy = [await engine.connect() for _ in range(POSTGRES_POOL_SIZE)]
        try:
            waiting = asyncio.ensure_future(runner.write(remember("queued")))
            await asyncio.sleep(0.2)
            assert not waiting.done()

            await busy.pop().close()

            assert await waiting == "queued"
            # Not SQLAlchemy's 30 s: under a burst the line moves slower than that.
            assert engine.sync_engine.pool.timeout() == POSTGRES_POOL_WAIT_SECONDS >= 600
        finally:
            for connection in busy:
                await connection.close()
            await runner.close()


@pytest.mark.postgres
async def test_pooled_connections_go_to_the_tasks_in_the_order_they_asked() -> None:
    async with postgres_database() as url:
        engine = create_async_engine(url, pool_size=1, max_overflow=0)
        runner = transactions_for(engine)
        turns: list[tuple[int, int]] = []

        async def one_after_another(task: int) -> None:
            for step in range(3):
                await runner.statement(select(literal(task)), {})
                turns.append((task, step))

        try:
            await asyncio.gather(*(one_after_another(task) for task in range(4)))
        finally:
            await runner.close()
        # A task asking again as soon as it is served queues behind those already waiting.
        assert turns == [(task, step) for step in range(3) for task in range(4)]


@pytest.mark.postgres
async def test_a_statement_cancelled_while_it_runs_leaves_its_connection_usable() -> None:
    async with postgres_database() as url:
        engine = create_async_engine(url, pool_size=1, max_overflow=0)
        runner = transactions_for(engine)
        try:
            sleeping = asyncio.ensure_future(runner.statement(select(func.pg_sleep(5)), {}))
            await asyncio.sleep(0.2)
            sleeping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sleeping

            row = await runner.typed_statement(select(literal(7).label("answer")), {})
            assert row == {"answer": 7}
        finally:
            await runner.close()


@pytest.mark.postgres
async def test_a_statement_that_waited_too_long_for_a_connection_fails_as_worth_retrying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transactions_module, "POSTGRES_POOL_WAIT_SECONDS", 0.2)
    async with postgres_database() as url:
        engine = create_async_engine(url, pool_size=1, max_overflow=0)
        runner = transactions_for(engine)
        busy = asyncio.ensure_future(runner.statement(select(func.pg_sleep(1)), {}))
        try:
            await asyncio.sleep(0.1)
            with pytest.raises(sa_exc.TimeoutError) as waited:
                await runner.statement(select(literal(1)), {})
            assert unreachable(waited.value)
        finally:
            await busy
            await runner.close()


RUN_NUMBER = bindparam("run", type_=Integer)


@pytest.mark.postgres
async def test_grouped_runs_asked_for_while_others_are_out_go_together_in_one_transaction() -> None:
    statement = select(func.txid_current().label("transaction"), RUN_NUMBER.label("run"))
    runs = POSTGRES_GROUPS_AT_ONCE + 2 * POSTGRES_RUNS_PER_GROUP
    async with postgres_database() as url:
        runner = transactions_for(create_engine(url))
        try:
            rows = await asyncio.gather(
                *(runner.grouped(statement, {"run": run}) for run in range(runs))
            )
        finally:
            await runner.close()

    assert [row["run"] for row in rows] == list(range(runs))
    runs_per_transaction = Counter(row["transaction"] for row in rows)
    # The first go at once, alone; the rest waited for them, and went in full groups.
    assert sorted(runs_per_transaction.values()) == (
        [1] * POSTGRES_GROUPS_AT_ONCE + [POSTGRES_RUNS_PER_GROUP] * 2
    )


@pytest.mark.postgres
async def test_a_grouped_run_that_fails_fails_alone_and_the_rest_of_its_group_is_answered() -> None:
    statement = select((literal(60) / bindparam("divisor", type_=Integer)).label("quotient"))
    divisors = [1] * POSTGRES_GROUPS_AT_ONCE + [2, 0, 3]
    async with postgres_database() as url:
        runner = transactions_for(create_engine(url))
        try:
            answers = await asyncio.gather(
                *(runner.grouped(statement, {"divisor": divisor}) for divisor in divisors),
                return_exceptions=True,
            )
        finally:
            await runner.close()

    *alone, half, by_zero, third = answers
    assert [row["quotient"] for row in alone] == [60] * POSTGRES_GROUPS_AT_ONCE
    assert (half["quotient"], third["quotient"]) == (30, 20)
    assert isinstance(by_zero, asyncpg.DivisionByZeroError)


@pytest.mark.postgres
async def test_a_grouped_run_cancelled_before_its_group_went_is_never_sent() -> None:
    remembered = insert(bot_state).values(key=bindparam("key"), value="v", updated_at=NOW)
    async with postgres_database() as url:
        engine = create_engine(url)
        await migrate.upgrade(engine)
        runner = transactions_for(engine)
        try:
            busy = [
                asyncio.ensure_future(runner.grouped(select(func.pg_sleep(0.3)), {}))
                for _ in range(POSTGRES_GROUPS_AT_ONCE)
            ]
            await asyncio.sleep(0.1)
            waiting = {
                key: asyncio.ensure_future(
                    runner.grouped(remembered.returning(bot_state.c.key), {"key": key})
                )
                for key in ("kept", "cancelled", "also kept")
            }
            await asyncio.sleep(0)
            waiting["cancelled"].cancel()
            await asyncio.gather(*busy, *waiting.values(), return_exceptions=True)

            assert waiting["kept"].result()["key"] == "kept"
            assert sorted(await runner.read(keys)) == ["also kept", "kept"]
        finally:
            await runner.close()
