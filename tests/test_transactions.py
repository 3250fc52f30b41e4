"""How ledger transactions run: one whole transaction each, writes one at a time on SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection, make_url

from ledger import create_engine, migrate, transient
from ledger.schema import bot_state
from ledger.transactions import POSTGRES_POOL_SIZE, Database
from tests.conftest import postgres_database

NOW = datetime(2026, 11, 25, tzinfo=UTC)


class Refused(Exception):
    pass


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}")
    await migrate.upgrade(engine)
    opened = Database(engine)
    try:
        yield opened
    finally:
        await opened.close()


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


async def test_writes_run_one_at_a_time_in_the_order_they_were_asked(database: Database) -> None:
    order: list[int] = []

    def numbered(number: int) -> Callable[[Connection], None]:
        def work(connection: Connection) -> None:
            order.append(number)
            remember(f"k{number:02}")(connection)

        return work

    await asyncio.gather(*(database.write(numbered(number)) for number in range(20)))

    assert order == list(range(20))
    assert len(await database.read(keys)) == 20


async def test_a_refused_write_leaves_nothing_behind_and_the_others_keep_theirs(
    database: Database,
) -> None:
    outcomes = await asyncio.gather(
        database.write(remember("a")),
        database.write(remember("b", then_refuse=True)),
        database.write(remember("c")),
        return_exceptions=True,
    )

    assert outcomes[0] == "a" and outcomes[2] == "c"
    assert isinstance(outcomes[1], Refused)
    assert await database.read(keys) == ["a", "c"]


async def test_a_write_whose_caller_is_cancelled_while_it_runs_still_commits(
    database: Database,
) -> None:
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(connection: Connection) -> str:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.2)
        return remember("a")(connection)

    write = asyncio.ensure_future(database.write(slow))
    await started.wait()
    write.cancel()

    await database.write(remember("b"))
    assert await database.read(keys) == ["a", "b"]


async def test_closing_finishes_the_writes_already_asked_for(
    database: Database, tmp_path: Path
) -> None:
    writes = [asyncio.ensure_future(database.write(remember(f"k{n:02}"))) for n in range(20)]
    await asyncio.sleep(0)

    await database.close()

    assert [await write for write in writes] == [f"k{n:02}" for n in range(20)]
    reopened = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"))
    try:
        assert len(await reopened.read(keys)) == 20
    finally:
        await reopened.close()


async def test_a_connection_left_broken_is_replaced_for_the_next_write(database: Database) -> None:
    def break_connection(connection: Connection) -> None:
        connection.invalidate()
        raise Refused("the connection broke")

    with pytest.raises(Refused):
        await database.write(break_connection)

    assert await database.write(remember("after")) == "after"
    assert await database.read(keys) == ["after"]


async def test_writers_of_two_processes_on_one_file_wait_for_each_other_instead_of_failing(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"
    schema = create_engine(url)
    await migrate.upgrade(schema)
    await schema.dispose()
    first, second = Database(create_engine(url)), Database(create_engine(url))

    def read_then_write(key: str) -> Callable[[Connection], str]:
        # A reader upgrading to a writer is what SQLite refuses at once under a plain BEGIN.
        def work(connection: Connection) -> str:
            keys(connection)
            return remember(key)(connection)

        return work

    try:
        await asyncio.gather(
            *(
                (first if number % 2 else second).write(read_then_write(f"k{number:03}"))
                for number in range(100)
            )
        )
        assert len(await first.read(keys)) == 100
    finally:
        await first.close()
        await second.close()


async def test_a_read_runs_beside_a_write_in_progress(database: Database) -> None:
    writing = asyncio.Event()
    finish = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_write(connection: Connection) -> None:
        remember("slow")(connection)
        loop.call_soon_threadsafe(writing.set)
        asyncio.run_coroutine_threadsafe(finish.wait(), loop).result(timeout=10)

    write = asyncio.ensure_future(database.write(slow_write))
    await writing.wait()
    try:
        assert await asyncio.wait_for(database.read(keys), 5) == []
    finally:
        finish.set()
        await write
    assert await database.read(keys) == ["slow"]


@contextlib.asynccontextmanager
async def postgres(**engine_options: float) -> AsyncIterator[Database]:
    async with postgres_database() as url:
        engine = create_engine(url, **engine_options)
        await migrate.upgrade(engine)
        opened = Database(engine)
        try:
            yield opened
        finally:
            await opened.close()


@pytest.mark.postgres
async def test_a_write_waits_its_turn_while_every_pooled_connection_is_busy() -> None:
    async with postgres() as database:
        busy = [await database.engine.connect() for _ in range(POSTGRES_POOL_SIZE)]
        try:
            waiting = asyncio.ensure_future(database.write(remember("queued")))
            await asyncio.sleep(0.2)
            assert not waiting.done()

            await busy.pop().close()

            assert await waiting == "queued"
        finally:
            for connection in busy:
                await connection.close()


@pytest.mark.postgres
async def test_a_transaction_cancelled_while_it_runs_leaves_its_connection_usable() -> None:
    async with postgres() as database:
        sleeping = asyncio.ensure_future(
            database.read(lambda connection: connection.execute(select(func.pg_sleep(5))))
        )
        await asyncio.sleep(0.2)
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeping

        assert await database.read(lambda connection: connection.scalar(select(7))) == 7


@pytest.mark.postgres
async def test_every_connection_has_a_server_side_statement_timeout() -> None:
    async with postgres() as database:
        shown = await database.read(
            lambda connection: connection.scalar(text("SHOW statement_timeout"))
        )
    assert shown not in {"0", "0ms"}


@pytest.mark.postgres
async def test_a_statement_past_the_command_timeout_fails_as_worth_retrying() -> None:
    async with postgres(command_timeout=1.0) as database:
        with pytest.raises(Exception) as timed_out:
            await database.read(lambda connection: connection.execute(select(func.pg_sleep(3))))
        assert transient(timed_out.value)

        assert await database.read(lambda connection: connection.scalar(select(7))) == 7


class FrozenLink:
    """A TCP relay to PostgreSQL that can stop passing bytes: a half-open connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen = False
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if not self.frozen:
                        sink.write(data)
                        await sink.drain()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.mark.postgres
async def test_a_connection_whose_server_stopped_answering_fails_in_seconds_not_minutes() -> None:
    async with postgres_database() as url:
        parsed = make_url(url)
        link = FrozenLink(parsed.host or "127.0.0.1", parsed.port or 5432)
        port = await link.start()
        engine = create_engine(parsed.set(port=port).render_as_string(False), command_timeout=1.0)
        await migrate.upgrade(engine)
        database = Database(engine)
        try:
            assert await database.read(lambda connection: connection.scalar(select(1))) == 1
            link.frozen = True

            with pytest.raises(Exception) as stuck:
                await asyncio.wait_for(
                    database.write(remember("never")), timeout=POSTGRES_POOL_SIZE
                )
            assert transient(stuck.value)
        finally:
            await link.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(database.close(), 5)
