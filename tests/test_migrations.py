"""Schema changes go through Alembic, from an empty database and back, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger import Balance, Ledger, LotKind, NewGeneration, create_engine, migrate, schema
from tests.conftest import FakeClock

LEDGER_TABLES = {"accounts", "generations", "ledger_entries"}


async def table_names(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_from_empty_creates_the_schema_at_head(fresh_database_url: str) -> None:
    engine = create_engine(fresh_database_url)
    try:
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()
    assert await table_names(fresh_database_url) >= LEDGER_TABLES


async def test_migrations_at_head_build_exactly_the_tables_the_code_declares(
    fresh_database_url: str,
) -> None:
    engine = create_engine(fresh_database_url)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), schema.metadata)
            )
    finally:
        await engine.dispose()
    assert differences == []


async def test_upgrade_twice_changes_nothing(fresh_database_url: str) -> None:
    engine = create_engine(fresh_database_url)
    try:
        await migrate.upgrade(engine)
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


async def test_downgrade_to_base_removes_the_schema(fresh_database_url: str) -> None:
    engine = create_engine(fresh_database_url)
    try:
        await migrate.upgrade(engine)
        await migrate.downgrade(engine, "base")
        assert await migrate.current_revision(engine) is None
    finally:
        await engine.dispose()
    assert not LEDGER_TABLES & await table_names(fresh_database_url)


async def test_sqlite_database_runs_in_wal_mode_with_a_busy_timeout(tmp_path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    try:
        async with engine.connect() as connection:
            journal = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
            timeout = (await connection.execute(text("PRAGMA busy_timeout"))).scalar()
    finally:
        await engine.dispose()
    assert journal == "wal"
    assert timeout is not None and timeout >= 5000


@contextlib.asynccontextmanager
async def engine_for(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_a_fresh_database_is_set_up_even_without_upgrading(fresh_database_url: str) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.prepare(engine, upgrade=False)
        assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_an_older_database_is_refused_unless_upgrading_and_left_as_it_was(
    fresh_database_url: str,
) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine, "0003")

        with pytest.raises(migrate.SchemaOutdated) as refused:
            await migrate.prepare(engine, upgrade=False)

        assert (refused.value.current, refused.value.head) == ("0003", migrate.head_revision())
        assert await migrate.current_revision(engine) == "0003"


async def test_an_older_database_is_upgraded_when_asked(fresh_database_url: str) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine, "0003")
        await migrate.prepare(engine, upgrade=True)
        assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_a_database_written_by_a_newer_version_is_refused_even_when_upgrading(
    fresh_database_url: str,
) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine)
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '9001'"))

        with pytest.raises(migrate.SchemaUnknown) as refused:
            await migrate.prepare(engine, upgrade=True)

        assert refused.value.current == "9001"


async def test_processes_starting_at_once_on_an_older_database_upgrade_it_once(
    fresh_database_url: str,
) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine, "0002")
    engines = [create_engine(fresh_database_url) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate.prepare(each, upgrade=True) for each in engines))
        assert await migrate.current_revision(engines[0]) == migrate.head_revision()
    finally:
        for each in engines:
            await each.dispose()


async def test_generations_running_at_the_upgrade_to_leases_keep_a_lease(
    fresh_database_url: str,
) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine, "0003")
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO accounts (id, available, held, created_at, updated_at)"
                    " VALUES ('discord:1', 0, 10, :at, :at)"
                ),
                {"at": datetime(2026, 12, 1, tzinfo=UTC)},
            )
            await connection.execute(
                text(
                    "INSERT INTO generations (id, account_id, model_id, provider, provider_model,"
                    " prompt, options, images_requested, images_delivered, credits_per_image,"
                    " credits_held, credits_charged, status, created_at, expires_at,"
                    " confirmed_at) VALUES ('g1', 'discord:1', 'm', 'local', 'p', 'a fox', '{}',"
                    " 1, 0, 10, 10, 0, 'running', :at, :at, :at)"
                ),
                {"at": datetime(2026, 12, 1, tzinfo=UTC)},
            )

        await migrate.prepare(engine, upgrade=True)

        ledger = Ledger(engine)
        try:
            assert await ledger.expired_leases() == []
            running = await ledger.generation("g1")
        finally:
            await ledger.close()
        assert running.lease_until is not None
        assert running.lease_until > datetime.now(UTC)


async def test_upgrading_to_lots_keeps_every_balance_and_settles_holds_made_before(
    fresh_database_url: str,
) -> None:
    clock = FakeClock()
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine, "0006")
        async with engine.begin() as connection:
            await connection.execute(insert(schema.accounts), before_lots_accounts(clock.now))
            await connection.execute(insert(schema.generations), before_lots_generations(clock))
            await connection.execute(insert(schema.ledger_entries), before_lots_entries(clock.now))
    ledger = Ledger(create_engine(fresh_database_url), clock, owner="bot:1")
    try:
        await migrate.upgrade(ledger.engine)
        balances = [await ledger.balance(account) for account in ("discord:1", "discord:2")]
        alice_lots = [
            (lot.kind, lot.available, lot.held, lot.expires_at) for lot in balances[0].lots
        ]
        verified = await ledger.verify()
        await ledger.capture("running", 1)
        await ledger.hold("quoted", "discord:2")
        await ledger.release("quoted", error_code="x", error_message="x")
        after = [await ledger.balance(account) for account in ("discord:1", "discord:2")]
        verified_after = await ledger.verify()
    finally:
        await ledger.close()

    assert balances == [Balance("discord:1", 70, 20), Balance("discord:2", 50, 0)]
    assert alice_lots == [(LotKind.PROMO, 70, 20, None)]
    assert verified == []
    assert after == [Balance("discord:1", 80, 0), Balance("discord:2", 50, 0)]
    assert verified_after == []


def before_lots_accounts(now: datetime) -> list[dict[str, Any]]:
    """Alice spent 10 and holds 20 for a running generation; Bob has a quote; Carol nothing."""
    return [
        {"id": account, "available": available, "held": held, "created_at": now, "updated_at": now}
        for account, available, held in (
            ("discord:1", 70, 20),
            ("discord:2", 50, 0),
            ("discord:3", 0, 0),
        )
    ]


def before_lots_generations(clock: FakeClock) -> list[dict[str, Any]]:
    def generation(
        generation_id: str, account: str, status: str, held: int, charged: int
    ) -> dict[str, Any]:
        return {
            "id": generation_id,
            "account_id": account,
            "model_id": "local-sketch",
            "provider": "local",
            "provider_model": "procedural-v1",
            "prompt": "a lighthouse",
            "options": {},
            "channel": None,
            "images_requested": 2 if status != "completed" else 1,
            "images_delivered": 1 if status == "completed" else 0,
            "credits_per_image": 10,
            "credits_held": held,
            "credits_charged": charged,
            "status": status,
            "created_at": clock.now,
            "expires_at": clock.now + timedelta(minutes=10),
            "confirmed_at": None if status == "quoted" else clock.now,
            "finished_at": clock.now if status == "completed" else None,
            "owner": "bot:1" if status == "running" else None,
            "lease_until": clock.now + timedelta(minutes=3) if status == "running" else None,
        }

    return [
        generation("done", "discord:1", "completed", 0, 10),
        generation("running", "discord:1", "running", 20, 0),
        generation("quoted", "discord:2", "quoted", 0, 0),
    ]


def before_lots_entries(now: datetime) -> list[dict[str, Any]]:
    def entry(
        account: str,
        kind: str,
        amount: int,
        available: int,
        held: int,
        key: str,
        generation: str | None,
    ) -> dict[str, Any]:
        return {
            "account_id": account,
            "kind": kind,
            "amount": amount,
            "available_delta": available,
            "held_delta": held,
            "actor": "test",
            "reason": "",
            "idempotency_key": key,
            "generation_id": generation,
            "created_at": now,
        }

    return [
        entry("discord:1", "grant", 100, 100, 0, "fund:1", None),
        entry("discord:1", "hold", 10, -10, 10, "hold:done", "done"),
        entry("discord:1", "capture", 10, 0, -10, "capture:done", "done"),
        entry("discord:1", "hold", 20, -20, 20, "hold:running", "running"),
        entry("discord:2", "grant", 50, 50, 0, "fund:2", None),
    ]


async def test_downgrading_from_lots_keeps_every_balance_as_stored_before_lots_and_back(
    fresh_database_url: str,
) -> None:
    # The downgrade expires lots by the machine's clock, so the ledger's runs a day behind it:
    # every lot this test lets expire has expired by both.
    clock = FakeClock(datetime.now(UTC) - timedelta(days=1))
    ledger = Ledger(create_engine(fresh_database_url), clock, owner="bot:1")
    try:
        await migrate.upgrade(ledger.engine)
        await lots_of_every_kind(ledger, clock)
        balances = {account: await ledger.balance(account) for account in ("alice", "bob")}
        assert await ledger.verify() == []
    finally:
        await ledger.close()
    at_head = {account: (each.available, each.held) for account, each in balances.items()}

    async with engine_for(fresh_database_url) as engine:
        await migrate.downgrade(engine, "0006")
        async with engine.connect() as connection:
            stored = await before_lots_balances(connection)
            disagreeing = await before_lots_disagreements(connection)

    ledger = Ledger(create_engine(fresh_database_url), clock, owner="bot:1")
    try:
        await migrate.upgrade(ledger.engine)
        upgraded = {account: await ledger.balance(account) for account in ("alice", "bob")}
        verified = await ledger.verify()
        # The generation still running settles on the lot the upgrade made.
        await ledger.capture("g2", 1)
        settled = await ledger.balance("alice")
    finally:
        await ledger.close()

    # Alice: 125 granted, 15 charged, 10 + 10 expired, 40 held; Bob: 24 granted, 8 + 4 expired.
    assert at_head == {"alice": (50, 40), "bob": (12, 0)}
    assert stored == at_head
    assert disagreeing == []
    assert {account: (each.available, each.held) for account, each in upgraded.items()} == at_head
    assert [(lot.kind, lot.expires_at) for lot in upgraded["alice"].lots] == [(LotKind.PROMO, None)]
    assert verified == []
    assert (settled.available, settled.held) == (50, 0)


async def lots_of_every_kind(ledger: Ledger, clock: FakeClock) -> None:
    """Two lots of each kind for Alice, one expiring before her first generation settles and
    one after; that generation captured half its hold, the rest released, part of it to a
    lot that expired meanwhile; a second generation holding credits from three lots. Bob's
    allowance expired and swept, his promo expired and not yet swept."""
    start = clock.now
    for account, amount, kind, expires_at in (
        ("alice", 10, LotKind.ALLOWANCE, start + timedelta(hours=1)),
        ("alice", 10, LotKind.ALLOWANCE, start + timedelta(days=30)),
        ("alice", 20, LotKind.PROMO, start + timedelta(hours=2)),
        ("alice", 5, LotKind.PROMO, None),
        ("alice", 50, LotKind.PAID, None),
        ("alice", 30, LotKind.PAID, None),
        ("bob", 8, LotKind.ALLOWANCE, start + timedelta(hours=1)),
        ("bob", 4, LotKind.PROMO, start + timedelta(hours=4)),
        ("bob", 12, LotKind.PAID, None),
    ):
        await ledger.grant(
            account,
            amount,
            actor="admin",
            reason="",
            idempotency_key=f"{account}:{kind}:{expires_at}:{amount}",
            kind=kind,
            expires_at=expires_at,
        )
    # 30 from both allowances and the promo expiring first.
    await ledger.create_quote(quote("g1", images=2, credits_per_image=15, now=clock.now))
    await ledger.hold("g1", "alice")
    clock.advance(hours=3)
    # 15 charged; 5 back to the allowance, 10 to the promo that expired meanwhile: expired.
    await ledger.capture("g1", 1)
    # The expired promo's 10 available and Bob's allowance.
    assert await ledger.expire_lots() == 2
    # 40 from the allowance's 5, the never-expiring promo's 5 and the first paid lot.
    await ledger.create_quote(quote("g2", images=1, credits_per_image=40, now=clock.now))
    await ledger.hold("g2", "alice")
    # Bob's promo expires, unswept.
    clock.advance(hours=2)


def quote(
    generation_id: str, *, images: int, credits_per_image: int, now: datetime
) -> NewGeneration:
    return NewGeneration(
        id=generation_id,
        account_id="alice",
        model_id="local-sketch",
        provider="local",
        provider_model="procedural-v1",
        prompt="a lighthouse",
        options={},
        images_requested=images,
        credits_per_image=credits_per_image,
        expires_at=now + timedelta(minutes=10),
    )


async def before_lots_balances(connection: AsyncConnection) -> dict[str, tuple[int, int]]:
    rows = await connection.execute(text("SELECT id, available, held FROM accounts"))
    return {row.id: (row.available, row.held) for row in rows}


async def before_lots_disagreements(connection: AsyncConnection) -> list[Any]:
    """The accounts the ledger before lots would report: stored figures other than the sums
    of their entries, or held other than what their running generations hold."""
    rows = await connection.execute(
        text(
            "SELECT accounts.id FROM accounts"
            " LEFT JOIN (SELECT account_id, SUM(available_delta) AS available,"
            " SUM(held_delta) AS held FROM ledger_entries GROUP BY account_id) AS entries"
            " ON entries.account_id = accounts.id"
            " LEFT JOIN (SELECT account_id, SUM(credits_held) AS held FROM generations"
            " WHERE status = 'running' GROUP BY account_id) AS running"
            " ON running.account_id = accounts.id"
            " WHERE accounts.available <> COALESCE(entries.available, 0)"
            " OR accounts.held <> COALESCE(entries.held, 0)"
            " OR accounts.held <> COALESCE(running.held, 0)"
        )
    )
    return list(rows)


async def test_upgrading_to_slot_claims_adds_their_table_and_downgrading_removes_it(
    fresh_database_url: str,
) -> None:
    async with engine_for(fresh_database_url) as engine:
        await migrate.upgrade(engine, "0012")
        before = await table_names(fresh_database_url)
        await migrate.upgrade(engine, "0013")
        upgraded = await table_names(fresh_database_url)
        await migrate.downgrade(engine, "0012")
        downgraded = await table_names(fresh_database_url)

    assert "slot_claims" not in before
    assert upgraded - before == {"slot_claims"}
    assert downgraded == before
