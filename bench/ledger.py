"""Ledger throughput: hold + capture round trips per second, against the raw driver doing the same.

For 1, 16 and 64 concurrent tasks over 1 and 1,000 accounts, each account's
credits in one lot, on SQLite (file, WAL) and PostgreSQL (``TEST_POSTGRES_DSN``,
skipped if unreachable): every round trip holds a one-credit quote and captures
it, each one transaction through ``Ledger``. Baseline: the statements the
ledger issues, in the same transactions, written by hand on the raw async
driver:

- hold: the generation locked with the database's clock (``FOR UPDATE`` on
  PostgreSQL), the account's row locked (``FOR NO KEY UPDATE``; SQLite's writer
  lock covers it), the account's lots with credits, the conditional balance
  ``UPDATE``, the entry, the lot's ``UPDATE``, the entry's part, and the
  generation's ``UPDATE ... RETURNING``;
- capture (1 of 1 image): the generation locked, the account's row locked, the
  hold's parts with their lots, then as a hold from the balance ``UPDATE`` on.

On SQLite, aiosqlite with the ledger's pragmas and one writer connection behind
an asyncio lock, each transaction ``BEGIN IMMEDIATE``; on PostgreSQL, asyncpg
with one pooled connection per task, taken before the clock starts, each
operation in a transaction.

Lots: the same round trip, 5 credits held and captured, on accounts whose credits
are in 1 lot and on accounts whose credits are in 5 lots (allowance, two expiring
promos, a never-expiring promo, paid; one credit each, so every hold draws from
all 5 and its capture charges all 5). One account per round trip, so every hold
finds its lots whole. Target: 5-lot holds at least 0.6x as many per second as 1-lot.

    python -m bench.ledger [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

from bench.common import (
    POSTGRES,
    machine,
    percentile,
    postgres_database,
    postgres_reachable,
    postgres_version,
)
from ledger import DEFAULT_LEASE, Ledger, LotKind, NewGeneration, create_engine, migrate

SQLITE_TARGET = 1.0
POSTGRES_TARGET = 0.6
"""The least ledger/raw ratio each database should reach."""
LOTS_TARGET = 0.6
"""The least ratio of 5-lot to 1-lot holds per second in the same run."""
LOT_CREDITS = 5


@dataclass(frozen=True)
class Result:
    ops_per_second: float
    hold_latencies: list[float]
    capture_latencies: list[float]
    errors: int


Operation = Callable[[str, str], Awaitable[None]]
Task = tuple[Operation, Operation]
"""One task's hold and capture, each given (generation, account)."""


async def drive(work: list[tuple[str, str]], tasks: Sequence[Task]) -> Result:
    """Run hold-then-capture for every (generation, account), one task per entry of ``tasks``."""
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    holds: list[float] = []
    captures: list[float] = []
    errors = 0

    async def worker(hold: Operation, capture: Operation) -> None:
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
            except Exception as error:
                if not errors:
                    print(f"  first error: {error!r}")
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(hold, capture) for hold, capture in tasks))
    elapsed = time.perf_counter() - started
    return Result(len(work) / elapsed, holds, captures, errors)


LOTS = (
    (LotKind.ALLOWANCE, timedelta(days=1)),
    (LotKind.PROMO, timedelta(days=1)),
    (LotKind.PROMO, timedelta(days=2)),
    (LotKind.PROMO, None),
    (LotKind.PAID, None),
)
"""The lots an account's credits are split into, each kind and how long until it expires:
allowance, promos by soonest expiry, the never-expiring promo, then paid, the draw order."""


async def prepare(
    url: str, rounds: int, accounts: int, *, lots: int = 1, images: int = 1
) -> list[tuple[str, str]]:
    """A migrated database with one quote of ``images`` one-credit images per round trip, the
    round trips spread over ``accounts`` accounts; each account holds exactly what its quotes
    cost, in equal parts in the first ``lots`` of ``LOTS``."""
    engine = create_engine(url)
    ledger = Ledger(engine)
    now = datetime.now(UTC)
    try:
        await migrate.upgrade(engine)
        # Accounts beyond the round trips' would hold nothing, and no lot holds nothing.
        names = [f"bench:{number}" for number in range(min(accounts, rounds))]
        for number, name in enumerate(names):
            credits = images * len(range(number, rounds, len(names)))
            if credits % lots:
                raise ValueError(f"{credits} credits do not split into {lots} equal lots")
            for index, (kind, lasts) in enumerate(LOTS[:lots]):
                await ledger.grant(
                    name,
                    credits // lots,
                    actor="bench",
                    reason="",
                    idempotency_key=f"f:{name}:{index}",
                    kind=kind,
                    expires_at=None if lasts is None else now + lasts,
                )
        work = []
        for number in range(rounds):
            account = names[number % len(names)]
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
                    images_requested=images,
                    credits_per_image=1,
                    expires_at=now + timedelta(hours=1),
                )
            )
            work.append((generation_id, account))
        return work
    finally:
        await ledger.close()


async def run_ledger(
    url: str, work: list[tuple[str, str]], concurrency: int, images: int = 1
) -> Result:
    ledger = Ledger(create_engine(url))
    try:
        # Open the connections first, as the baseline does before its clock starts.
        await asyncio.gather(*(ledger.ping() for _ in range(concurrency)))

        async def hold(generation_id: str, account: str) -> None:
            await ledger.hold(generation_id, account)

        async def capture(generation_id: str, _account: str) -> None:
            await ledger.capture(generation_id, images)

        return await drive(work, [(hold, capture)] * concurrency)
    finally:
        await ledger.close()


async def lots_section(
    folder: Path, backends: Sequence[str], rounds: int, concurrencies: Sequence[int]
) -> tuple[float, int]:
    """Print 1-lot against 5-lot holds per backend and task count; the worst ratio and errors."""
    print(f"{'db':8} {'tasks':>5} {'1-lot holds/s':>13} {'5-lot holds/s':>13} {'ratio':>6}")
    worst = float("inf")
    errors = 0
    for backend in backends:
        for concurrency in concurrencies:
            rates = []
            for lots in (1, 5):
                database = (
                    sqlite_database(folder, f"lots{backend}{lots}x{concurrency}")
                    if backend == "sqlite"
                    else postgres_database(f"lots{lots}x{concurrency}")
                )
                async with database as (url, _):
                    work = await prepare(url, rounds, rounds, lots=lots, images=LOT_CREDITS)
                    result = await run_ledger(url, work, concurrency, LOT_CREDITS)
                errors += result.errors
                # Holds per second of hold time, as each task spent it.
                rates.append(len(result.hold_latencies) * concurrency / sum(result.hold_latencies))
            ratio = rates[1] / rates[0]
            worst = min(worst, ratio)
            print(f"{backend:8} {concurrency:>5} {rates[0]:>13.0f} {rates[1]:>13.0f} {ratio:>6.2f}")
    return worst, errors


# -- the baseline: the ledger's statements, by hand -----------------------------------
# As SQLAlchemy renders them for Ledger._hold and Ledger._settle (check with
# the "sqlalchemy.engine" logger at INFO).

_GENERATION_COLUMNS = (
    "id, account_id, model_id, provider, provider_model, prompt, options, channel, "
    "images_requested, images_delivered, credits_per_image, credits_held, credits_charged, "
    "status, error_code, error_message, created_at, expires_at, confirmed_at, finished_at, "
    "images_posted, owner, lease_until, provider_attempts"
)
_QUALIFIED_COLUMNS = ", ".join(f"generations.{name}" for name in _GENERATION_COLUMNS.split(", "))
_ENTRY_COLUMNS = (
    "account_id, kind, amount, available_delta, held_delta, actor, reason, idempotency_key, "
    "generation_id, created_at"
)
_LOT_COLUMNS = (
    "credit_lots.id, credit_lots.kind, credit_lots.available, credit_lots.held, "
    "credit_lots.expires_at"
)
_HOLD_PARTS = (
    "SELECT entry_parts.lot_id, entry_parts.held_delta AS held, credit_lots.kind, "
    "credit_lots.expires_at FROM ledger_entries "
    "JOIN entry_parts ON entry_parts.entry_id = ledger_entries.id "
    "JOIN credit_lots ON credit_lots.id = entry_parts.lot_id "
    "WHERE ledger_entries.idempotency_key = "
)

SQLITE_LOCKED_GENERATION = (
    f"SELECT {_QUALIFIED_COLUMNS}, strftime(?, ?) AS database_now "
    "FROM generations WHERE generations.id = ?"
)
SQLITE_LOCKED_ACCOUNT = (
    "SELECT accounts.available, accounts.held FROM accounts WHERE accounts.id = ?"
)
SQLITE_LOTS = (
    f"SELECT {_LOT_COLUMNS} FROM credit_lots WHERE credit_lots.account_id = ? "
    "AND (credit_lots.available > ? OR credit_lots.held > ?)"
)
SQLITE_HOLD_PARTS = f"{_HOLD_PARTS}?"
SQLITE_APPLY = (
    "UPDATE accounts SET available=(accounts.available + ?), held=(accounts.held + ?), "
    "updated_at=? WHERE accounts.id = ? AND accounts.available + ? >= ? "
    "AND accounts.held + ? >= ?"
)
SQLITE_ENTRY = (
    f"INSERT INTO ledger_entries ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SQLITE_CHANGE_LOT = (
    "UPDATE credit_lots SET available=(credit_lots.available + ?), "
    "held=(credit_lots.held + ?) WHERE credit_lots.id = ?"
)
SQLITE_PARTS = (
    "INSERT INTO entry_parts (entry_id, lot_id, available_delta, held_delta) VALUES (?, ?, ?, ?)"
)
SQLITE_HOLD_GENERATION = (
    "UPDATE generations SET credits_held=?, status=?, confirmed_at=?, owner=?, lease_until=? "
    f"WHERE generations.id = ? RETURNING {_GENERATION_COLUMNS}"
)
SQLITE_SETTLE_GENERATION = (
    "UPDATE generations SET images_delivered=?, credits_held=?, credits_charged=?, status=?, "
    f"error_code=?, error_message=?, finished_at=? WHERE generations.id = ? RETURNING {_GENERATION_COLUMNS}"
)
SQLITE_NOW = ("%Y-%m-%d %H:%M:%f000", "now")
"""The database's clock, as ``ledger.ledger._database_now`` reads it on SQLite."""

POSTGRES_LOCKED_GENERATION = (
    f"SELECT {_QUALIFIED_COLUMNS}, now() AS database_now "
    "FROM generations WHERE generations.id = $1::VARCHAR FOR UPDATE OF generations"
)
POSTGRES_LOCKED_ACCOUNT = (
    "SELECT accounts.available, accounts.held FROM accounts WHERE accounts.id = $1::VARCHAR "
    "FOR NO KEY UPDATE"
)
POSTGRES_LOTS = (
    f"SELECT {_LOT_COLUMNS} FROM credit_lots WHERE credit_lots.account_id = $1::VARCHAR "
    "AND (credit_lots.available > $2::BIGINT OR credit_lots.held > $3::BIGINT)"
)
POSTGRES_HOLD_PARTS = f"{_HOLD_PARTS}$1::VARCHAR"
POSTGRES_APPLY = (
    "UPDATE accounts SET available=(accounts.available + $1::BIGINT), "
    "held=(accounts.held + $2::BIGINT), updated_at=$3::TIMESTAMP WITH TIME ZONE "
    "WHERE accounts.id = $4::VARCHAR AND accounts.available + $1::BIGINT >= $5::BIGINT "
    "AND accounts.held + $2::BIGINT >= $6::BIGINT"
)
POSTGRES_ENTRY = (
    f"INSERT INTO ledger_entries ({_ENTRY_COLUMNS}) VALUES ($1::VARCHAR, $2::VARCHAR, "
    "$3::BIGINT, $4::BIGINT, $5::BIGINT, $6::VARCHAR, $7::VARCHAR, $8::VARCHAR, $9::VARCHAR, "
    "$10::TIMESTAMP WITH TIME ZONE) RETURNING ledger_entries.id"
)
POSTGRES_CHANGE_LOT = (
    "UPDATE credit_lots SET available=(credit_lots.available + $1::BIGINT), "
    "held=(credit_lots.held + $2::BIGINT) WHERE credit_lots.id = $3::BIGINT"
)
POSTGRES_PARTS = (
    "INSERT INTO entry_parts (entry_id, lot_id, available_delta, held_delta) "
    "VALUES ($1::BIGINT, $2::BIGINT, $3::BIGINT, $4::BIGINT)"
)
POSTGRES_HOLD_GENERATION = (
    "UPDATE generations SET credits_held=$1::BIGINT, status=$2::VARCHAR, "
    "confirmed_at=$3::TIMESTAMP WITH TIME ZONE, owner=$4::VARCHAR, "
    "lease_until=$5::TIMESTAMP WITH TIME ZONE "
    f"WHERE generations.id = $6::VARCHAR RETURNING {_QUALIFIED_COLUMNS}"
)
POSTGRES_SETTLE_GENERATION = (
    "UPDATE generations SET images_delivered=$1::INTEGER, credits_held=$2::BIGINT, "
    "credits_charged=$3::BIGINT, status=$4::VARCHAR, error_code=$5::VARCHAR, "
    "error_message=$6::VARCHAR, finished_at=$7::TIMESTAMP WITH TIME ZONE "
    f"WHERE generations.id = $8::VARCHAR RETURNING {_QUALIFIED_COLUMNS}"
)

OWNER = "bench:raw"

Part = tuple[int, int, int]
"""A line's change to one lot: the lot's id, its available delta, its held delta."""


@dataclass(frozen=True)
class Line:
    """An entry and its parts, as ``Ledger._apply`` writes them."""

    account: str
    kind: str
    amount: int
    available_delta: int
    held_delta: int
    actor: str
    reason: str
    key: str
    generation_id: str
    parts: list[Part]

    def entry(self) -> tuple[Any, ...]:
        """The entry's columns in ``_ENTRY_COLUMNS``' order, all but ``created_at``."""
        return (
            self.account,
            self.kind,
            self.amount,
            self.available_delta,
            self.held_delta,
            self.actor,
            self.reason,
            self.key,
            self.generation_id,
        )


def hold_line(quote: Any, account: str, lots: Sequence[Any], now: datetime) -> Line:
    """``rules.hold``'s checks on the locked quote, and ``rules.drawn`` of its price over the
    account's unexpired lots; in the order read, as every account here has one lot."""
    if quote is None or quote["account_id"] != account or quote["status"] != "quoted":
        raise RuntimeError("hold refused")
    if quote["expires_at"] <= now:
        raise RuntimeError("quote expired")
    price = quote["images_requested"] * quote["credits_per_image"]
    wanted = price
    parts = []
    for lot in lots:
        if wanted and lot["available"] and not expired(lot["expires_at"], now):
            taken = min(wanted, lot["available"])
            wanted -= taken
            parts.append((lot["id"], -taken, taken))
    if wanted:
        raise RuntimeError("insufficient funds")
    generation_id = quote["id"]
    return Line(
        account,
        "hold",
        price,
        -price,
        price,
        account,
        f"hold for generation {generation_id}",
        f"hold:{generation_id}",
        generation_id,
        parts,
    )


def check_running(running: Any) -> None:
    """``rules.check_settler`` and ``rules.settlement``'s checks on the locked row."""
    if running is None or running["status"] != "running" or running["owner"] != OWNER:
        raise RuntimeError("capture refused")


def capture_line(running: Any, held_parts: Sequence[Any]) -> Line:
    """``rules.by_lot`` for every image delivered: each part of the hold charged whole."""
    held = running["credits_held"]
    if sum(part["held"] for part in held_parts) != held:
        raise RuntimeError("hold missing")
    images = running["images_requested"]
    return Line(
        running["account_id"],
        "capture",
        held,
        0,
        -held,
        "system",
        f"{images} of {images} images delivered",
        f"capture:{running['id']}",
        running["id"],
        [(part["lot_id"], 0, -part["held"]) for part in held_parts],
    )


def expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


def sqlite_text(moment: datetime) -> str:
    """A timestamp as the ledger stores it on SQLite (UTC, naive, microseconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def sqlite_time(text: str | None) -> datetime | None:
    """A timestamp the ledger stored on SQLite, aware again."""
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


async def run_raw_sqlite(path: Path, work: list[tuple[str, str]], concurrency: int) -> Result:
    db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = aiosqlite.Row
    # The ledger's own settings (transactions.configure_sqlite).
    for pragma in (
        "PRAGMA busy_timeout = 10000",
        "PRAGMA foreign_keys = ON",
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
    ):
        await db.execute(pragma)
    # One writer, one transaction at a time, as the ledger's writer thread.
    lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def writing() -> AsyncIterator[aiosqlite.Connection]:
        async with lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def locked_generation(generation_id: str) -> dict[str, Any] | None:
        rows = await db.execute_fetchall(SQLITE_LOCKED_GENERATION, (*SQLITE_NOW, generation_id))
        if not rows:
            return None
        found = dict(next(iter(rows)))
        found["expires_at"] = sqlite_time(found["expires_at"])
        found["database_now"] = sqlite_time(found["database_now"])
        return found

    async def apply(line: Line) -> None:
        changed = await db.execute(
            SQLITE_APPLY,
            (
                line.available_delta,
                line.held_delta,
                sqlite_text(datetime.now(UTC)),
                line.account,
                line.available_delta,
                0,
                line.held_delta,
                0,
            ),
        )
        if changed.rowcount != 1:
            raise RuntimeError("balance refused")
        entry = await db.execute(SQLITE_ENTRY, (*line.entry(), sqlite_text(datetime.now(UTC))))
        await db.executemany(SQLITE_CHANGE_LOT, [(a, h, lot) for lot, a, h in line.parts])
        await db.executemany(
            SQLITE_PARTS, [(entry.lastrowid, lot, a, h) for lot, a, h in line.parts]
        )

    async def hold(generation_id: str, account: str) -> None:
        now = datetime.now(UTC)
        async with writing():
            quote = await locked_generation(generation_id)
            await db.execute_fetchall(SQLITE_LOCKED_ACCOUNT, (account,))
            lots = [
                {**lot, "expires_at": sqlite_time(lot["expires_at"])}
                for lot in await db.execute_fetchall(SQLITE_LOTS, (account, 0, 0))
            ]
            line = hold_line(quote, account, lots, now)
            assert quote is not None
            await apply(line)
            started = await db.execute_fetchall(
                SQLITE_HOLD_GENERATION,
                (
                    line.amount,
                    "running",
                    sqlite_text(now),
                    OWNER,
                    sqlite_text(quote["database_now"] + DEFAULT_LEASE),
                    generation_id,
                ),
            )
            if not started:
                raise RuntimeError("hold lost its generation")

    async def capture(generation_id: str, _account: str) -> None:
        async with writing():
            running = await locked_generation(generation_id)
            check_running(running)
            assert running is not None
            await db.execute_fetchall(SQLITE_LOCKED_ACCOUNT, (running["account_id"],))
            held_parts = await db.execute_fetchall(SQLITE_HOLD_PARTS, (f"hold:{generation_id}",))
            line = capture_line(running, held_parts)
            await apply(line)
            finished = await db.execute_fetchall(
                SQLITE_SETTLE_GENERATION,
                (
                    running["images_requested"],
                    0,
                    line.amount,
                    "completed",
                    None,
                    None,
                    sqlite_text(datetime.now(UTC)),
                    generation_id,
                ),
            )
            if not finished:
                raise RuntimeError("capture lost its generation")

    try:
        return await drive(work, [(hold, capture)] * concurrency)
    finally:
        await db.close()


async def run_raw_postgres(dsn: str, work: list[tuple[str, str]], concurrency: int) -> Result:
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    connections = [await pool.acquire() for _ in range(concurrency)]

    def task(db: asyncpg.Connection) -> Task:
        async def apply(line: Line) -> None:
            changed = await db.execute(
                POSTGRES_APPLY,
                line.available_delta,
                line.held_delta,
                datetime.now(UTC),
                line.account,
                0,
                0,
            )
            if changed != "UPDATE 1":
                raise RuntimeError("balance refused")
            entry_id = await db.fetchval(POSTGRES_ENTRY, *line.entry(), datetime.now(UTC))
            await db.executemany(POSTGRES_CHANGE_LOT, [(a, h, lot) for lot, a, h in line.parts])
            await db.executemany(
                POSTGRES_PARTS, [(entry_id, lot, a, h) for lot, a, h in line.parts]
            )

        async def hold(generation_id: str, account: str) -> None:
            now = datetime.now(UTC)
            async with db.transaction():
                quote = await db.fetchrow(POSTGRES_LOCKED_GENERATION, generation_id)
                await db.fetchrow(POSTGRES_LOCKED_ACCOUNT, account)
                lots = await db.fetch(POSTGRES_LOTS, account, 0, 0)
                line = hold_line(quote, account, lots, now)
                await apply(line)
                started = await db.fetchrow(
                    POSTGRES_HOLD_GENERATION,
                    line.amount,
                    "running",
                    now,
                    OWNER,
                    quote["database_now"] + DEFAULT_LEASE,
                    generation_id,
                )
                if started is None:
                    raise RuntimeError("hold lost its generation")

        async def capture(generation_id: str, _account: str) -> None:
            async with db.transaction():
                running = await db.fetchrow(POSTGRES_LOCKED_GENERATION, generation_id)
                check_running(running)
                await db.fetchrow(POSTGRES_LOCKED_ACCOUNT, running["account_id"])
                held_parts = await db.fetch(POSTGRES_HOLD_PARTS, f"hold:{generation_id}")
                line = capture_line(running, held_parts)
                await apply(line)
                finished = await db.fetchrow(
                    POSTGRES_SETTLE_GENERATION,
                    running["images_requested"],
                    0,
                    line.amount,
                    "completed",
                    None,
                    None,
                    datetime.now(UTC),
                    generation_id,
                )
                if finished is None:
                    raise RuntimeError("capture lost its generation")

        return hold, capture

    try:
        return await drive(work, [task(db) for db in connections])
    finally:
        for db in connections:
            await pool.release(db)
        await pool.close()


# -- databases ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sqlite_database(folder: Path, name: str) -> AsyncIterator[tuple[str, Any]]:
    path = folder / f"{name}.db"
    yield f"sqlite+aiosqlite:///{path}", path


async def main(quick: bool) -> None:
    rounds = 20 if quick else 2000
    # --quick only shows the script runs: one size of each, every database and section.
    concurrencies = [16] if quick else [1, 16, 64]
    account_counts = [8] if quick else [1, 1000]
    backends = ["sqlite"] + (["postgres"] if await postgres_reachable() else [])
    server = f", PostgreSQL {await postgres_version()}" if "postgres" in backends else ""
    print(f"bench.ledger on {machine()}{server}: {rounds} hold+capture round trips per run")
    print(
        f"{'db':8} {'tasks':>5} {'accounts':>8} {'ledger ops/s':>12} {'raw ops/s':>10} {'ratio':>6}"
        "  ledger hold / capture"
    )
    worst: dict[str, float] = {}
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
                            work = await prepare(url, rounds, accounts)
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
                    worst[backend] = min(worst.get(backend, ratio), ratio)
                    errors += ledger_result.errors + raw_result.errors
                    print(
                        f"{backend:8} {concurrency:>5} {accounts:>8} {ledger_result.ops_per_second:>12.0f} "
                        f"{raw_result.ops_per_second:>10.0f} {ratio:>6.2f}  "
                        f"p50 {percentile(ledger_result.hold_latencies, 0.5) * 1000:.1f}/"
                        f"{percentile(ledger_result.capture_latencies, 0.5) * 1000:.1f} ms "
                        f"p99 {percentile(ledger_result.hold_latencies, 0.99) * 1000:.1f}/"
                        f"{percentile(ledger_result.capture_latencies, 0.99) * 1000:.1f} ms"
                    )
        lots_worst, lots_errors = await lots_section(
            Path(folder), backends, 10 if quick else 1000, concurrencies[:2]
        )
        errors += lots_errors
    if "postgres" not in backends:
        print(f"(PostgreSQL at {POSTGRES} was not reachable; SQLite only)")
    targets = {"sqlite": SQLITE_TARGET, "postgres": POSTGRES_TARGET}
    print(
        "ledger: worst ledger/raw ratio "
        + ", ".join(
            f"{backend} {ratio:.2f} (target >= {targets[backend]:g})"
            for backend, ratio in worst.items()
        )
        + f", 5-lot/1-lot hold {lots_worst:.2f} (target >= {LOTS_TARGET:g})"
        + f", errors {errors}"
    )
    if errors:
        # A run whose operations failed measured nothing.
        raise SystemExit(f"bench.ledger: {errors} operations failed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 round trips, 16 tasks, 8 accounts")
    asyncio.run(main(parser.parse_args().quick))
