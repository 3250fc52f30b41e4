"""Where the ledger's transactions run: each one whole, in one short transaction, off the event loop.

A ledger operation is a plain function of a SQLAlchemy Core ``Connection``;
``Database`` runs it inside one transaction and hands the result back to
asyncio. The functions are the same on both databases; only how a
transaction runs and takes its lock differs, here:

- **SQLite file**: the function runs whole on a thread through the standard
  library's ``sqlite3`` (through ``aiosqlite`` every statement would be a
  hand-off of its own). Writes run on one thread, one after another in the
  order asked, each under ``BEGIN IMMEDIATE``: SQLite skips its busy handler
  when a reader upgrades to a writer, and one in-process writer keeps other
  processes' waits short. Reads have threads of their own, which WAL lets run
  beside the writer.
- **PostgreSQL**: the function runs through the async engine's
  ``run_sync``; a write locks the rows it decides on with
  ``SELECT … FOR UPDATE``, written into the operation (SQLite ignores it).
  Every read is one statement, so it runs without ``BEGIN`` and ``COMMIT``
  (``AUTOCOMMIT``), each of which would be a round trip of its own.

A thread cannot be interrupted: a caller cancelled while its write runs gets
``CancelledError``, but the write still commits. The ledger is built for
that: a hold nobody settles is settled when its lease runs out, and grants are
idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolProxiedConnection

T = TypeVar("T")
Work = Callable[[Connection], T]

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_READER_THREADS = 4
POSTGRES_POOL_SIZE = 10
"""Connections each process opens on PostgreSQL, and keeps: ten processes fit in the default 100."""
POSTGRES_POOL_WAIT_SECONDS = 300
"""How long an operation waits for a pooled connection. Under a burst of clicks the line
moves, only slowly; failing a hold for being late in it would refuse a user for nothing."""
POSTGRES_CONNECT_TIMEOUT_SECONDS = 10.0
POSTGRES_COMMAND_TIMEOUT_SECONDS = 30.0
"""How long the client waits for any one answer: a connection whose server vanished
(half-open) fails then, and leaves the pool, instead of holding its slot for minutes."""
POSTGRES_STATEMENT_TIMEOUT_MS = 20_000
"""The server's own limit on a statement, below the client's, so the server gives up first."""


def create_engine(
    database_url: str, *, command_timeout: float = POSTGRES_COMMAND_TIMEOUT_SECONDS
) -> AsyncEngine:
    """An async engine set up for the ledger: WAL and a busy timeout on SQLite, timeouts on PostgreSQL."""
    if database_url.startswith("sqlite"):
        engine = create_async_engine(database_url)
        configure_sqlite(engine.sync_engine)
        return engine
    engine = create_async_engine(
        database_url,
        pool_size=POSTGRES_POOL_SIZE,
        max_overflow=0,
        pool_timeout=POSTGRES_POOL_WAIT_SECONDS,
        connect_args={
            "timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS,
            "command_timeout": command_timeout,
            "server_settings": {"statement_timeout": str(POSTGRES_STATEMENT_TIMEOUT_MS)},
        },
    )
    skip_closed_connections(engine.sync_engine)
    return engine


def skip_closed_connections(engine: Engine) -> None:
    """Replace a pooled connection the server has closed (a restart, an idle timeout) on checkout.

    The driver already knows when the server hung up; ``pool_pre_ping`` would
    ask the server instead, a round trip before every transaction.
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
        writes = connection.get_execution_options().get("ledger_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _in_transaction(connection: Connection, work: Work[T]) -> T:
    with connection.begin():
        return work(connection)


class Database:
    """Runs ledger operations, each a function of a ``Connection``, in one transaction each."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._threads: tuple[Engine, ThreadPoolExecutor, ThreadPoolExecutor] | None = None
        self._writer_connection: Connection | None = None
        """The writer thread's own, kept open: checking one out of the pool costs as much
        as a short write."""
        if engine.dialect.name == "sqlite":
            # Every transaction ends in a commit or a rollback, so the pool's own
            # rollback when a connection comes back would do nothing but cost.
            file_engine = sqlalchemy.create_engine(
                engine.url.set(drivername="sqlite"), pool_reset_on_return=None
            )
            configure_sqlite(file_engine)
            writer = ThreadPoolExecutor(1, thread_name_prefix="ledger-write")
            readers = ThreadPoolExecutor(SQLITE_READER_THREADS, thread_name_prefix="ledger-read")
            self._threads = (file_engine, writer, readers)

    async def write(self, work: Work[T]) -> T:
        """Run ``work`` in a transaction that may write, one writer at a time on SQLite."""
        if self._threads is None:
            async with self.engine.connect() as connection:
                return await connection.run_sync(_in_transaction, work)
        _, writer, _ = self._threads
        return await asyncio.get_running_loop().run_in_executor(writer, self._write_here, work)

    def _write_here(self, work: Work[T]) -> T:
        """On the writer thread: ``work`` in a transaction on the thread's own connection."""
        if self._writer_connection is None:
            assert self._threads is not None
            self._writer_connection = self._threads[0].connect()
            self._writer_connection.execution_options(ledger_write=True)
        # A connection that broke on the way is invalidated, and opens again on next use.
        return _in_transaction(self._writer_connection, work)

    async def read(self, work: Work[T]) -> T:
        """Run ``work``, which only reads, in one statement (PostgreSQL) or one transaction."""
        if self._threads is None:
            async with self.engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                return await connection.run_sync(_in_transaction, work)
        file_engine, _, readers = self._threads
        return await asyncio.get_running_loop().run_in_executor(
            readers, _on_a_connection, file_engine, work
        )

    async def close(self) -> None:
        """Finish the writes already asked for, then close every connection."""
        if self._threads is not None:
            file_engine, writer, readers = self._threads
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, writer.shutdown)
            if self._writer_connection is not None:
                # The writer thread is done with it: every write asked for has run.
                await loop.run_in_executor(None, self._writer_connection.close)
                self._writer_connection = None
            await loop.run_in_executor(None, readers.shutdown)
            file_engine.dispose()
        await self.engine.dispose()


def _on_a_connection(engine: Engine, work: Work[T]) -> T:
    with engine.connect() as connection:
        return _in_transaction(connection, work)
