"""Where the ledger's transactions run: each one whole, in one go, off the event loop.

A ledger operation is a plain function of a SQLAlchemy ``Connection`` (a few
Core statements); this module runs it inside one transaction and hands the
result back to asyncio.

On a SQLite file the function runs on a thread, with the standard library's
``sqlite3``: one hand-off per operation. Through ``aiosqlite`` every cursor,
execute, fetch and close is a hand-off of its own (about twenty for a hold),
which made the ledger four times slower than the driver underneath it (see
``bench/README.md``). Writes share one thread, so they queue in order without
a lock, and begin with ``BEGIN IMMEDIATE`` (SQLite skips its busy handler when
a reader upgrades to a writer); reads use a few threads of their own, which
WAL lets run beside the writer.

Elsewhere (PostgreSQL through asyncpg, or an in-memory SQLite database that
only the async engine's own connection can see) the function runs through
``AsyncConnection.run_sync``.

A thread cannot be interrupted: a caller cancelled while its write runs on
the thread gets ``CancelledError``, but the write still commits. The ledger is
built for that (every hold is found by the heartbeat sweep if nobody settles
it; grants are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.sql.expression import Executable

from ledger import statements

T = TypeVar("T")
Work = Callable[[Connection], T]

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Connections each process may open on PostgreSQL, and keeps. None beyond: a burst's
# extra connections were opened and closed again around one statement each, costing
# more than waiting for a pooled one (bench.latency); ten processes fit in the default 100.
POSTGRES_POOL_SIZE = 10
POSTGRES_POOL_OVERFLOW = 0
POSTGRES_POOL_WAIT_SECONDS = 600
"""How long a ledger operation waits its turn for a pooled connection before failing.

SQLAlchemy's default of 30 s failed settlements under 500 clicks at once on a slow
machine (bench.latency on PostgreSQL): with the event loop that busy, every
transaction held its connection longer, and the line moved slower than 30 s
allows. The line always moves, and an operation failing only for being last
in it would release a hold whose images were already posted."""
POSTGRES_GROUPS_AT_ONCE = 2
"""``Transactions.grouped`` runs out at the server at a time, alone or in groups.

Under a burst of 50 or 500 quotes, 2 answered sooner than 1 (each group then
waits for a whole group before it) and than 4 or 10 (smaller groups, each a
round trip and a commit of its own) in bench.latency."""
POSTGRES_RUNS_PER_GROUP = 16
"""Small enough that a burst's first answers do not wait for its last runs, as for SQLite."""
SQLITE_READER_THREADS = 4
SQLITE_WRITES_PER_BATCH = 16
"""Small enough that a burst's first answers do not wait for its last writes."""

_Batch = tuple[asyncio.AbstractEventLoop, list[tuple["Work[Any]", "asyncio.Future[Any]"]]]


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine set up for the ledger: WAL, busy timeout and immediate writes on SQLite."""
    if database_url.startswith("sqlite"):
        # Every ledger transaction ends in an explicit commit or rollback, so the
        # extra rollback on each checkin would only cost aiosqlite a thread hop.
        engine = create_async_engine(database_url, pool_reset_on_return=None)
        configure_sqlite(engine.sync_engine)
    else:
        engine = create_async_engine(
            database_url,
            pool_size=POSTGRES_POOL_SIZE,
            max_overflow=POSTGRES_POOL_OVERFLOW,
            pool_timeout=POSTGRES_POOL_WAIT_SECONDS,
        )
        skip_closed_connections(engine.sync_engine)
    return engine


def skip_closed_connections(engine: Engine) -> None:
    """Replace a pooled connection the server has closed (a restart, an idle timeout) on checkout.

    ``pool_pre_ping`` would do this by asking the server, which through
    asyncpg costs three round trips (begin, ping, rollback) before every
    transaction, a third of a hold's time. The driver already knows when the
    server hung up, so ask it instead.
    """

    @event.listens_for(engine, "checkout")
    def _on_checkout(_dbapi_connection: Any, _record: Any, proxy: PoolProxiedConnection) -> None:
        if proxy.driver_connection is not None and proxy.driver_connection.is_closed():
            # The pool discards this connection and checks out another.
            raise DisconnectionError("the server closed this connection")


def configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for writes."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so "begin" below decides the BEGIN kind.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("ledger_write", False)
        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        if connection.dialect.driver == "pysqlite":
            # Straight on sqlite3: through SQLAlchemy's execution layer this cost
            # as much as the rest of beginning and committing together.
            connection.connection.driver_connection.execute(begin)
        else:
            connection.exec_driver_sql(begin)


def _in_transaction(connection: Connection, work: Work[T]) -> T:
    with connection.begin():
        return work(connection)


class Turns:
    """The pool's connections, handed out in the order they were asked for.

    SQLAlchemy's pool lets a newcomer take a connection just given back
    before the task woken for it runs, and the woken task then queues again
    at the back: with 64 tasks on 10 connections, one hold in a hundred
    waited over 2 s (``bench.ledger``). Only as many tasks as the pool has
    connections go past this line (asyncio's semaphore is first come, first
    served), so none waits in the pool; and, as the pool would, a task that
    waited ``POSTGRES_POOL_WAIT_SECONDS`` fails with SQLAlchemy's
    ``TimeoutError``, which ``ledger.unreachable`` counts as worth trying again.
    """

    def __init__(self, connections: int) -> None:
        self._free = asyncio.Semaphore(connections)

    async def __aenter__(self) -> None:
        if not self._free.locked():
            await self._free.acquire()
            return
        try:
            async with asyncio.timeout(POSTGRES_POOL_WAIT_SECONDS):
                await self._free.acquire()
        except TimeoutError:
            raise sqlalchemy.exc.TimeoutError(
                f"no pooled connection came free in {POSTGRES_POOL_WAIT_SECONDS} s"
            ) from None

    async def __aexit__(self, *_: object) -> None:
        self._free.release()


class Transactions:
    """Runs ledger operations through the async engine's own connections."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._waiting: dict[Executable, list[tuple[Mapping[str, Any], asyncio.Future[Any]]]] = {}
        """``grouped`` runs waiting for the next group, by statement."""
        self._groups_out = 0
        self._groups_sent: set[asyncio.Future[None]] = set()
        """Groups on their way, awaited by ``close``."""
        # Only reached for an in-memory SQLite database: one connection, so one writer at a time.
        self._write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        pool = engine.sync_engine.pool
        self._turns = Turns(pool.size()) if isinstance(pool, QueuePool) else None

    def _turn(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._turns or contextlib.nullcontext()

    async def write(self, work: Work[T]) -> T:
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self._turn(), self.engine.connect() as connection:
            await connection.execution_options(ledger_write=True)
            return await connection.run_sync(_in_transaction, work)

    async def read(self, work: Work[T]) -> T:
        async with self._turn(), self.engine.connect() as connection:
            return await connection.run_sync(_in_transaction, work)

    async def statement(
        self, statement: Executable, values: Mapping[str, Any]
    ) -> asyncpg.Record | None:
        """PostgreSQL: run one statement that is atomic by itself, committed as it runs; its first row.

        Straight on asyncpg with a pooled connection: no ``BEGIN`` and
        ``COMMIT`` (each a round trip of its own), and none of SQLAlchemy's
        asyncio layers around execution, which cost the event loop about
        300 µs a quote (bench.latency).
        """
        sql, arguments = statements.for_driver(statement, self.engine.dialect, values)
        async with self._driver_connection() as connection:
            row: asyncpg.Record | None = await connection.fetchrow(sql, *arguments)
            return row

    @contextlib.asynccontextmanager
    async def _driver_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection's asyncpg connection, in its turn, for statements that commit as they run."""
        async with self._turn():
            pooled = await self.engine.raw_connection()
            try:
                yield pooled.driver_connection
            finally:
                # No transaction was left open, so returning it to the pool costs no round trip.
                pooled.close()

    async def grouped(self, statement: Executable, values: Mapping[str, Any]) -> asyncpg.Record:
        """PostgreSQL: as ``statement``, for a statement that answers one row each run; its row.

        A group commit: runs asked for while ``POSTGRES_GROUPS_AT_ONCE`` groups
        are out wait, and go to the server together in the next group, in one
        round trip and one transaction (asyncpg's ``fetchmany``). Under a burst
        of quotes each one cost the event loop about 300 µs on its own, against
        about 30 µs in a group of fifty (bench.latency). A run asked for while
        fewer are out goes at once, as ``statement``, so a lone quote waits for
        nothing. If a group fails, each of its runs goes again on its own, so a
        failure reaches only its own run; a run whose caller was cancelled
        before its group went is never sent.
        """
        if self._groups_out >= POSTGRES_GROUPS_AT_ONCE:
            waited: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(statement, []).append((values, waited))
            return await waited
        self._groups_out += 1
        try:
            return _one_row(await self.statement(statement, values))
        finally:
            self._groups_out -= 1
            self._send_waiting()

    def _send_waiting(self) -> None:
        while self._groups_out < POSTGRES_GROUPS_AT_ONCE and self._waiting:
            statement, runs = next(iter(self._waiting.items()))
            taken = runs[:POSTGRES_RUNS_PER_GROUP]
            del runs[:POSTGRES_RUNS_PER_GROUP]
            if not runs:
                del self._waiting[statement]
            waited = [(values, outcome) for values, outcome in taken if not outcome.done()]
            if waited:
                self._groups_out += 1
                group = asyncio.ensure_future(self._send_group(statement, waited))
                self._groups_sent.add(group)
                group.add_done_callback(self._groups_sent.discard)

    async def _send_group(
        self, statement: Executable, runs: list[tuple[Mapping[str, Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            try:
                results = await self._group_results(statement, [values for values, _ in runs])
            except Exception as failure:
                results = [(False, failure)] * len(runs)
            _hand_out([outcome for _, outcome in runs], results)
        finally:
            for _, outcome in runs:
                outcome.cancel()  # only those the group could not answer: it was cancelled itself
            self._groups_out -= 1
            self._send_waiting()

    async def _group_results(
        self, statement: Executable, runs: list[Mapping[str, Any]]
    ) -> list[tuple[bool, Any]]:
        """Each run's (succeeded, row or exception): all together, or each alone if that failed."""
        compiled = [
            statements.for_driver(statement, self.engine.dialect, values) for values in runs
        ]
        try:
            async with self._driver_connection() as connection:
                rows = await connection.fetchmany(
                    compiled[0][0], [arguments for _, arguments in compiled]
                )
        except Exception:
            alone = await asyncio.gather(
                *(self.statement(statement, values) for values in runs), return_exceptions=True
            )
            return [_answered(result) for result in alone]
        if len(rows) != len(runs):
            raise RuntimeError(f"a grouped statement answered {len(rows)} rows to {len(runs)} runs")
        return [(True, row) for row in rows]

    async def typed_statement(
        self, statement: Executable, values: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """PostgreSQL: as ``statement``, its row by name, converted by the statement's column types.

        Through SQLAlchemy's asyncio layer instead, a hold or a settlement cost
        five greenlet switches and as many turns of the event loop.
        """
        row = await self.statement(statement, values)
        return (
            None
            if row is None
            else statements.from_driver(statement, self.engine.dialect, row.items())
        )

    async def close(self) -> None:
        await asyncio.gather(*self._groups_sent, return_exceptions=True)
        await self.engine.dispose()


class ThreadedSQLite(Transactions):
    """Runs ledger operations on a SQLite file with ``sqlite3`` on threads.

    Writes that queue up while the writer is busy go together in the next
    transaction (a group commit). Under a burst the writer pays one ``BEGIN``,
    ``COMMIT`` and hand-off per batch instead of per operation. If one of them
    is refused, the batch runs again with each inside a savepoint of its own,
    so the refusal undoes only itself; works must be safe to run twice (they
    are functions of the connection alone).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._file_engine = sqlalchemy.create_engine(engine.url.set(drivername="sqlite"))
        configure_sqlite(self._file_engine)
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._write_batches, name="ledger-write", daemon=True
        )
        self._writer.start()
        self._readers = ThreadPoolExecutor(SQLITE_READER_THREADS, thread_name_prefix="ledger-read")
        self._queued: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        self._writer_connection: Connection | None = None
        """Kept open by the writer thread between batches: checking one out costs more than a quote."""
        self._idle = asyncio.Event()
        """Set while no batch is being written."""
        self.batches_written_again = 0
        """Batches in which a work raised, so that all of them ran a second time."""
        self._idle.set()

    async def write(self, work: Work[T]) -> T:
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, outcome))
        if self._idle.is_set():
            self._write_queued()
        return await outcome

    async def read(self, work: Work[T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, work)

    def _write_queued(self) -> None:
        batch = self._queued[:SQLITE_WRITES_PER_BATCH]
        del self._queued[:SQLITE_WRITES_PER_BATCH]
        self._idle.clear()
        self._batches.put((asyncio.get_running_loop(), batch))

    def _write_batches(self) -> None:
        """The writer thread: each batch written, then handed straight back to its loop.

        One ``call_soon_threadsafe`` per batch; a ``run_in_executor`` future chained
        to an asyncio future costs a quote two more turns of the event loop.
        """
        while (next_batch := self._batches.get()) is not None:
            loop, batch = next_batch
            try:
                results = self._write_batch([work for work, _ in batch])
            except BaseException as failure:
                results = [(False, failure)] * len(batch)
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(
                    self._hand_back, [outcome for _, outcome in batch], results
                )

    def _hand_back(
        self, outcomes: list[asyncio.Future[Any]], results: list[tuple[bool, Any]]
    ) -> None:
        _hand_out(outcomes, results)
        if self._queued:
            self._write_queued()
        else:
            self._idle.set()

    def _write_batch(self, works: list[Work[Any]]) -> list[tuple[bool, Any]]:
        """Each work's (succeeded, result or exception), all committed together."""
        connection = self._writer_connection
        if connection is None:
            connection = self._writer_connection = self._file_engine.connect()
            connection.execution_options(ledger_write=True)
        # Every transaction below ends in a commit or a rollback; a connection that
        # broke on the way is invalidated, and SQLAlchemy opens another on next use.
        if len(works) == 1:
            try:
                return [(True, _in_transaction(connection, works[0]))]
            except Exception as refusal:
                return [(False, refusal)]
        # First all together: a savepoint and its release around each work cost a
        # quarter of the SQLite time of a new user's quote, and most batches hold no
        # refusal. A work that raises undoes the whole try, and the batch runs again
        # with each work in a savepoint, where a refusal undoes only itself.
        try:
            with connection.begin():
                return [(True, work(connection)) for work in works]
        except Exception:
            self.batches_written_again += 1
        return _each_in_a_savepoint(connection, works)

    def _read(self, work: Work[T]) -> T:
        with self._file_engine.connect() as connection:
            return _in_transaction(connection, work)

    async def close(self) -> None:
        """Finish the writes already asked for, then stop the threads and close the file."""
        await self._idle.wait()
        self._batches.put(None)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.join)
        await loop.run_in_executor(None, self._readers.shutdown)
        if self._writer_connection is not None:
            self._writer_connection.close()
        self._file_engine.dispose()
        await super().close()


def _each_in_a_savepoint(connection: Connection, works: list[Work[Any]]) -> list[tuple[bool, Any]]:
    """Each work's (succeeded, result or exception) in one transaction; a refusal undoes only itself."""
    results: list[tuple[bool, Any]] = []
    with connection.begin():
        # Straight on sqlite3, as statements.run does: through SQLAlchemy the
        # savepoint and its release cost a quarter of a quote's time on this thread.
        driver = connection.connection.driver_connection
        for work in works:
            driver.execute("SAVEPOINT ledger_work")
            try:
                results.append((True, work(connection)))
            except Exception as refusal:
                driver.execute("ROLLBACK TO ledger_work")
                results.append((False, refusal))
            driver.execute("RELEASE ledger_work")
    return results


def _hand_out(outcomes: list[asyncio.Future[Any]], results: list[tuple[bool, Any]]) -> None:
    """Each (succeeded, result or exception) to its caller's future, unless it stopped waiting."""
    for outcome, (succeeded, value) in zip(outcomes, results, strict=True):
        if outcome.done():
            continue
        if succeeded:
            outcome.set_result(value)
        else:
            outcome.set_exception(value)


def _one_row(row: asyncpg.Record | None) -> asyncpg.Record:
    if row is None:
        raise _no_row()
    return row


def _no_row() -> RuntimeError:
    return RuntimeError("a statement run by Transactions.grouped answered no row")


def _answered(result: asyncpg.Record | BaseException | None) -> tuple[bool, Any]:
    """A run sent on its own, as a group's (succeeded, row or exception)."""
    if isinstance(result, BaseException):
        return False, result
    if result is None:
        return False, _no_row()
    return True, result


def transactions_for(engine: AsyncEngine) -> Transactions:
    """Threads and ``sqlite3`` for a SQLite file; the async driver for anything else."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        return ThreadedSQLite(engine)
    return Transactions(engine)
