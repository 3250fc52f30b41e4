"""Concurrency limits every process sharing PostgreSQL counts alike (table ``slot_claims``).

A limit (one user's, one provider's) is a *scope*; each generation under it has one row
there, running or waiting, and the rows' ids are the line's order, which is the order the
generations were queued in, whichever process queued them. Each operation is one function
of a Core ``Connection`` that ``Ledger`` runs in a transaction of its own.

A claim takes the scope's turn first (``pg_advisory_xact_lock`` on a key computed here, so
two claims in one scope never both count the same free slot; SQLite's one writer already
takes turns), then reads the database's clock and counts, each statement after the lock,
since PostgreSQL's read committed snapshot is taken per statement. Rows whose lease ran
out (their process died or stalled) are deleted first: a killed process's slots come free
within a lease.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from ledger.clock import database_now
from ledger.schema import slot_claims


@dataclass(frozen=True)
class SlotPlace:
    """Where a generation stands under one limit after a claim."""

    claim_id: int
    """Its row's id: its place in the line among every process's waiters (smaller is earlier).
    A row that expired and was queued again has a new one."""
    position: int
    """0: it holds a slot now; else its place among those waiting (1: next in line)."""


def lock_key(scope: str) -> int:
    """The advisory lock key of ``scope``: a signed 64-bit number, computed here so that the
    server hashes nothing and every process agrees on it."""
    digest = hashlib.blake2b(f"slot:{scope}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def claim(
    connection: Connection,
    *,
    generation_id: str,
    scope: str,
    owner: str,
    limit: int,
    lease: timedelta,
) -> SlotPlace:
    """Queue ``generation_id`` under ``scope`` if it has no row there (again, if its row expired),
    and give it a slot if fewer than ``limit`` run and nobody waits ahead of it.

    Either way its lease is renewed for ``lease`` from the database's now: a waiter being
    asked about stays in line even between sweeps.
    """
    now = _take_turn(connection, scope)
    connection.execute(
        delete(slot_claims).where(slot_claims.c.scope == scope, slot_claims.c.lease_until <= now)
    )
    row = connection.execute(
        select(slot_claims.c.id, slot_claims.c.running).where(
            slot_claims.c.generation_id == generation_id, slot_claims.c.scope == scope
        )
    ).first()
    if row is None:
        claim_id = connection.execute(
            insert(slot_claims)
            .values(
                generation_id=generation_id,
                scope=scope,
                owner=owner,
                running=False,
                lease_until=now + lease,
            )
            .returning(slot_claims.c.id)
        ).scalar_one()
        running = False
    else:
        claim_id, running = row.id, row.running
    if running:
        position = 0
    else:
        ahead = connection.execute(
            select(
                func.count().filter(slot_claims.c.running),
                func.count().filter(and_(~slot_claims.c.running, slot_claims.c.id < claim_id)),
            ).where(slot_claims.c.scope == scope)
        ).one()
        taken, waiting_ahead = int(ahead[0]), int(ahead[1])
        position = 0 if taken + waiting_ahead < limit else waiting_ahead + 1
    connection.execute(
        update(slot_claims)
        .where(slot_claims.c.id == claim_id)
        .values(running=position == 0, lease_until=now + lease)
    )
    return SlotPlace(claim_id, position)


def free(connection: Connection, *, generation_id: str, scope: str) -> None:
    """Give up ``generation_id``'s slot or place in line under ``scope``."""
    connection.execute(
        delete(slot_claims).where(
            slot_claims.c.generation_id == generation_id, slot_claims.c.scope == scope
        )
    )


def renew(
    connection: Connection, *, generation_ids: Collection[str], owner: str, lease_until: datetime
) -> None:
    """Say ``owner`` still runs or waits for these generations, until ``lease_until``."""
    connection.execute(
        update(slot_claims)
        .where(slot_claims.c.generation_id.in_(list(generation_ids)), slot_claims.c.owner == owner)
        .values(lease_until=lease_until)
    )


def drop_expired(connection: Connection) -> int:
    """Delete every row whose lease ran out, in every scope; returns how many."""
    return connection.execute(
        delete(slot_claims).where(slot_claims.c.lease_until <= database_now(connection))
    ).rowcount


def _take_turn(connection: Connection, scope: str) -> datetime:
    """Wait for ``scope``'s turn (PostgreSQL), then the database's now, read after the wait."""
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(lock_key(scope))))
    now = connection.scalar(select(database_now(connection)))
    assert now is not None
    return now
