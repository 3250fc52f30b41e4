"""Ledger throughput: hold + capture round trips per second, against the raw driver doing the same.

For 1, 16 and 64 concurrent tasks over 1 and 1,000 accounts, on SQLite (file,
WAL) and PostgreSQL (127.0.0.1:5432, skipped if unreachable): every round trip
holds a one-credit quote and captures it. Baseline: the same statements in the
same transactions, written by hand on aiosqlite / asyncpg (the generation read
and locked, the conditional balance update, the entry, the generation update,
and the read-back), with the same writer lock and ``BEGIN IMMEDIATE`` on SQLite;
on PostgreSQL, as the ledger does there, the hold reads the quote and the
balance in one statement and applies it in one guarded statement, and the
capture is one guarded statement given the generation as held.

    python -m bench.ledger [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

from bench.common import POSTGRES, machine, percentile, postgres_database, postgres_reachable
from ledger import Generation, Ledger, NewGeneration, create_engine, migrate


@dataclass(frozen=True)
class Result:
    ops_per_second: float
    hold_latencies: list[float]
    capture_latencies: list[float]
    errors: int


Operation = Callable[[str, str], Awaitable[None]]


async def drive(
    work: list[tuple[str, str]], concurrency: int, hold: Operation, capture: Operation
) -> Result:
    """Run hold-then-capture for every (generation, account), ``concurrency`` at a time."""
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    holds: list[float] = []
    captures: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while not queue.empty():
            generation_id, account = queue.get_nowait()
            try:
                started = time.perf_counter()
                await hold(generation_id, account)
                held = time.perf_counter()
                await capture(generation_id, account)
                holds.append(held - started)
                captures.append(time.perf_counter() - held)
            except Exception:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Result(len(work) / elapsed, holds, captures, errors)


async def prepare(url: str, accounts: int, rounds: int) -> list[tuple[str, str]]:
    """A migrated database with funded accounts and one quote per round trip."""
    engine = create_engine(url)
    ledger = Ledger(engine)
    try:
        await migrate.upgrade(engine)
        names = [f"bench:{number}" for number in range(accounts)]
        for name in names:
            await ledger.grant(name, rounds, actor="bench", reason="", idempotency_key=f"f:{name}")
        work = []
        expires = datetime.now(UTC) + timedelta(hours=1)
        for number in range(rounds):
            account = names[number % accounts]
            generation_id = f"g{number}-{uuid.uuid4().hex[:6]}"
            await ledger.create_quote(
                NewGeneration(
                    id=generation_id,
                    account_id=account,
                    model_id="m",
                    provider="local",
                    provider_model="p",
                    prompt="bench",
                    options={},
                    images_requested=1,
                    credits_per_image=1,
                    expires_at=expires,
                )
            )
            work.append((generation_id, account))
        return work
    finally:
        await ledger.close()


async def run_ledger(url: str, work: list[tuple[str, str]], concurrency: int) -> Result:
    ledger = Ledger(create_engine(url))
    try:
        # Open the connections first, as the baseline's pool does before its clock starts.
        await asyncio.gather(*(ledger.ping() for _ in range(concurrency)))

        held: dict[str, Generation] = {}

        async def hold(generation_id: str, account: str) -> None:
            held[generation_id] = await ledger.hold(generation_id, account)

        async def capture(generation_id: str, _account: str) -> None:
            await ledger.capture(generation_id, 1, running=held.pop(generation_id))

        return await drive(work, concurrency, hold, capture)
    finally:
        await ledger.close()


# -- the baseline: the same statements, by hand ------------------------------------

HOLD_ACCOUNT = "UPDATE accounts SET available = available - {p}1, held = held + {p}1, updated_at = {p}2 WHERE id = {p}3 AND available >= {p}1"
CAPTURE_ACCOUNT = "UPDATE accounts SET held = held - {p}1, available = available + 0, updated_at = {p}2 WHERE id = {p}3 AND held >= {p}1"
ENTRY = (
    "INSERT INTO ledger_entries (account_id, kind, amount, available_delta, held_delta, actor, "
    "reason, idempotency_key, generation_id, created_at) "
    "VALUES ({p}1, {p}2, {p}3, {p}4, {p}5, {p}6, {p}7, {p}8, {p}9, {p}10)"
)
HOLD_GENERATION = "UPDATE generations SET status = 'running', credits_held = 1, confirmed_at = {p}1, heartbeat_at = {p}1 WHERE id = {p}2"
CAPTURE_GENERATION = "UPDATE generations SET status = 'completed', images_delivered = 1, credits_held = 0, credits_charged = 1, finished_at = {p}1 WHERE id = {p}2"
READ_GENERATION = "SELECT * FROM generations WHERE id = {p}1"
# PostgreSQL reads the quote and the balance in one statement (statements.QUOTE_AND_BALANCE),
POSTGRES_QUOTE_AND_BALANCE = """
SELECT generations.*, (SELECT available FROM accounts WHERE id = $2::varchar) AS available
FROM generations WHERE id = $1::varchar
"""
# then applies the hold in one statement guarded on what it read (statements.HOLD_AT_ONCE),
POSTGRES_HOLD_AT_ONCE = """
WITH quote AS (
    SELECT id FROM generations
    WHERE id = $1::varchar AND account_id = $2::varchar AND status = 'quoted'
      AND images_requested = $3::integer AND credits_per_image = $4::bigint
      AND expires_at > $6::timestamptz
    FOR UPDATE),
took AS (
    UPDATE accounts
    SET available = available - $5::bigint, held = held + $5::bigint, updated_at = $6::timestamptz
    WHERE id = $2::varchar AND available >= $5::bigint AND EXISTS (SELECT 1 FROM quote)
    RETURNING id),
entry AS (
    INSERT INTO ledger_entries (account_id, kind, amount, available_delta, held_delta, actor,
                                reason, idempotency_key, generation_id, created_at)
    SELECT $2::varchar, 'hold', $5::bigint, -$5::bigint, $5::bigint, $2::varchar,
           'hold for generation ' || $1::varchar, 'hold:' || $1::varchar, $1::varchar,
           $6::timestamptz
    WHERE EXISTS (SELECT 1 FROM took)),
started AS (
    UPDATE generations
    SET status = 'running', credits_held = $5::bigint, confirmed_at = $6::timestamptz,
        heartbeat_at = $6::timestamptz
    WHERE id = $1::varchar AND EXISTS (SELECT 1 FROM took)
    RETURNING generations.*)
SELECT * FROM started
"""
# and captures in one statement guarded on the generation as held (statements.SETTLE_AT_ONCE).
POSTGRES_CAPTURE_AT_ONCE = """
WITH running AS (
    SELECT id FROM generations
    WHERE id = $1::varchar AND account_id = $2::varchar AND status = 'running'
      AND images_requested = $3::integer AND credits_per_image = $4::bigint
      AND credits_held = $5::bigint
    FOR UPDATE),
paid AS (
    UPDATE accounts
    SET held = held - $5::bigint, available = available + 0, updated_at = $6::timestamptz
    WHERE id = $2::varchar AND held >= $5::bigint AND EXISTS (SELECT 1 FROM running)
    RETURNING id),
entries AS (
    INSERT INTO ledger_entries (account_id, kind, amount, available_delta, held_delta, actor,
                                reason, idempotency_key, generation_id, created_at)
    SELECT $2::varchar, 'capture', $5::bigint, 0, -$5::bigint, 'system',
           '1 of 1 images delivered', 'capture:' || $1::varchar, $1::varchar, $6::timestamptz
    WHERE EXISTS (SELECT 1 FROM paid)),
finished AS (
    UPDATE generations
    SET status = 'completed', images_delivered = 1, credits_held = 0, credits_charged = $5::bigint,
        finished_at = $6::timestamptz
    WHERE id = $1::varchar AND EXISTS (SELECT 1 FROM paid)
    RETURNING generations.*)
SELECT * FROM finished
"""


def sqlite_sql(template: str) -> str:
    # aiosqlite takes ?NNN numbered parameters.
    return template.format(p="?")


async def run_raw_sqlite(path: Path, work: list[tuple[str, str]], concurrency: int) -> Result:
    connections = [await aiosqlite.connect(path, isolation_level=None) for _ in range(concurrency)]
    for connection in connections:
        # The ledger's own settings, so both sides pay for the same durability and checks.
        await connection.execute("PRAGMA busy_timeout = 10000")
        await connection.execute("PRAGMA foreign_keys = ON")
        await connection.execute("PRAGMA synchronous = NORMAL")
    idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
    for connection in connections:
        idle.put_nowait(connection)
    lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def writing() -> AsyncIterator[aiosqlite.Connection]:
        connection = await idle.get()
        try:
            async with lock:
                await connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                except BaseException:
                    await connection.execute("ROLLBACK")
                    raise
                await connection.execute("COMMIT")
        finally:
            idle.put_nowait(connection)

    def now() -> str:
        return datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")

    async def step(generation_id: str, account: str, kind: str) -> None:
        stamp = now()
        async with writing() as db:
            await (await db.execute(sqlite_sql(READ_GENERATION), (generation_id,))).fetchall()
            template = HOLD_ACCOUNT if kind == "hold" else CAPTURE_ACCOUNT
            changed = await db.execute(sqlite_sql(template), (1, stamp, account))
            if changed.rowcount != 1:
                raise RuntimeError("balance refused")
            deltas = (-1, 1) if kind == "hold" else (0, -1)
            await db.execute(
                sqlite_sql(ENTRY),
                (
                    account,
                    kind,
                    1,
                    *deltas,
                    "bench",
                    "",
                    f"{kind}:{generation_id}",
                    generation_id,
                    stamp,
                ),
            )
            update = HOLD_GENERATION if kind == "hold" else CAPTURE_GENERATION
            await db.execute(sqlite_sql(update), (stamp, generation_id))
        connection = await idle.get()
        try:
            await (
                await connection.execute(sqlite_sql(READ_GENERATION), (generation_id,))
            ).fetchall()
        finally:
            idle.put_nowait(connection)

    async def hold(generation_id: str, account: str) -> None:
        await step(generation_id, account, "hold")

    async def capture(generation_id: str, account: str) -> None:
        await step(generation_id, account, "capture")

    try:
        return await drive(work, concurrency, hold, capture)
    finally:
        for connection in connections:
            await connection.close()


async def run_raw_postgres(dsn: str, work: list[tuple[str, str]], concurrency: int) -> Result:
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    held: dict[str, asyncpg.Record] = {}

    async def hold(generation_id: str, account: str) -> None:
        now = datetime.now(UTC)
        async with pool.acquire() as db:
            quote = await db.fetchrow(POSTGRES_QUOTE_AND_BALANCE, generation_id, account)
        if quote is None or quote["status"] != "quoted" or quote["expires_at"] <= now:
            raise RuntimeError("hold refused")
        price = quote["images_requested"] * quote["credits_per_image"]
        if quote["account_id"] != account or quote["available"] < price:
            raise RuntimeError("hold refused")
        async with pool.acquire() as db:
            started = await db.fetchrow(
                POSTGRES_HOLD_AT_ONCE,
                generation_id,
                account,
                quote["images_requested"],
                quote["credits_per_image"],
                price,
                now,
            )
        if started is None:
            raise RuntimeError("hold refused")
        held[generation_id] = started

    async def capture(generation_id: str, account: str) -> None:
        running = held.pop(generation_id)
        async with pool.acquire() as db:
            captured = await db.fetchrow(
                POSTGRES_CAPTURE_AT_ONCE,
                generation_id,
                account,
                running["images_requested"],
                running["credits_per_image"],
                running["credits_held"],
                datetime.now(UTC),
            )
        if captured is None:
            raise RuntimeError("capture refused")

    try:
        return await drive(work, concurrency, hold, capture)
    finally:
        await pool.close()


# -- databases ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sqlite_database(folder: Path, name: str) -> AsyncIterator[tuple[str, Any]]:
    path = folder / f"{name}.db"
    yield f"sqlite+aiosqlite:///{path}", path


async def main(quick: bool) -> None:
    rounds = 60 if quick else 2000
    concurrencies = [1, 16] if quick else [1, 16, 64]
    account_counts = [1, 100] if quick else [1, 1000]
    backends = ["sqlite"] + (["postgres"] if await postgres_reachable() else [])
    print(f"bench.ledger on {machine()}: {rounds} hold+capture round trips per run")
    print(
        f"{'db':8} {'tasks':>5} {'accounts':>8} {'ledger ops/s':>12} {'raw ops/s':>10} {'ratio':>6}  ledger hold / capture"
    )
    worst = float("inf")
    errors = 0
    with tempfile.TemporaryDirectory() as folder:
        for backend in backends:
            for accounts in account_counts:
                for concurrency in concurrencies:
                    name = f"{backend}{accounts}x{concurrency}"
                    results = []
                    for system in ("ledger", "raw"):
                        database = (
                            sqlite_database(Path(folder), f"{name}{system}")
                            if backend == "sqlite"
                            else postgres_database(f"{accounts}x{concurrency}{system}")
                        )
                        async with database as (url, raw_target):
                            work = await prepare(url, accounts, rounds)
                            if system == "ledger":
                                results.append(await run_ledger(url, work, concurrency))
                            elif backend == "sqlite":
                                results.append(await run_raw_sqlite(raw_target, work, concurrency))
                            else:
                                results.append(
                                    await run_raw_postgres(raw_target, work, concurrency)
                                )
                    ledger_result, raw_result = results
                    ratio = ledger_result.ops_per_second / raw_result.ops_per_second
                    worst = min(worst, ratio)
                    errors += ledger_result.errors + raw_result.errors
                    print(
                        f"{backend:8} {concurrency:>5} {accounts:>8} {ledger_result.ops_per_second:>12.0f} "
                        f"{raw_result.ops_per_second:>10.0f} {ratio:>6.2f}  "
                        f"p50 {percentile(ledger_result.hold_latencies, 0.5) * 1000:.1f}/"
                        f"{percentile(ledger_result.capture_latencies, 0.5) * 1000:.1f} ms "
                        f"p99 {percentile(ledger_result.hold_latencies, 0.99) * 1000:.1f}/"
                        f"{percentile(ledger_result.capture_latencies, 0.99) * 1000:.1f} ms"
                    )
    if "postgres" not in backends:
        print(f"(PostgreSQL at {POSTGRES} was not reachable; SQLite only)")
    print(f"ledger: worst ledger/raw ratio {worst:.2f} (target >= 0.5), errors {errors}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="60 round trips, 1 and 16 tasks, 1 and 100 accounts"
    )
    asyncio.run(main(parser.parse_args().quick))
