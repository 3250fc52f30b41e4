"""Subjects (table ``subject_images``): an account's named sets of reference images, each
operation one function of a Core ``Connection`` that ``Ledger`` runs in a transaction of its own.

Which images are acceptable, and what a valid name is, are the bot's rules; the
ledger keeps the bytes, their digests and the storage limit, checked in the same
transaction that replaces a subject, so two saves cannot both slip past it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection

from ledger.errors import ReferenceCorrupt, SubjectStorageFull
from ledger.schema import subject_images
from ledger.values import QuoteReference

_SUBJECT_LOCK_KEY = 0x5B1EC7
"""With the account's hash, PostgreSQL's transaction-scoped lock one account's saves take turns on."""


@dataclass(frozen=True)
class SubjectSummary:
    name: str
    images: int
    byte_size: int
    created_at: datetime


def rows(
    account: str, name: str, images: Sequence[QuoteReference], now: datetime
) -> list[dict[str, Any]]:
    """The rows that store a subject; called off the event loop, as it hashes megabytes."""
    return [
        {
            "account_id": account,
            "name": name,
            "position": position,
            "media_type": image.media_type,
            "sha256": hashlib.sha256(image.data).hexdigest(),
            "byte_size": len(image.data),
            "data": image.data,
            "created_at": now,
        }
        for position, image in enumerate(images)
    ]


def save(
    connection: Connection, *, account: str, name: str, new_rows: list[dict[str, Any]], limit: int
) -> bool:
    """Replace ``account``'s subject ``name`` with ``new_rows`` (whether there was one), or raise
    ``SubjectStorageFull``, changing nothing, if its subjects would take more than ``limit`` bytes."""
    if connection.dialect.name == "postgresql":
        # Read committed: without turns, two saves could each see room for itself.
        connection.execute(
            select(func.pg_advisory_xact_lock(_SUBJECT_LOCK_KEY, func.hashtext(account)))
        )
    others = connection.execute(
        select(func.coalesce(func.sum(subject_images.c.byte_size), 0)).where(
            subject_images.c.account_id == account, subject_images.c.name != name
        )
    ).scalar_one()
    adding = sum(row["byte_size"] for row in new_rows)
    if others + adding > limit:
        raise SubjectStorageFull(account, int(others), adding, limit)
    replaced = connection.execute(_DELETE, {"account": account, "name": name}).rowcount > 0
    connection.execute(insert(subject_images), new_rows)
    return replaced


def listed(connection: Connection, *, account: str) -> list[SubjectSummary]:
    """``account``'s subjects by name."""
    found = connection.execute(
        select(
            subject_images.c.name,
            func.count().label("images"),
            func.sum(subject_images.c.byte_size).label("byte_size"),
            func.min(subject_images.c.created_at).label("created_at"),
        )
        .where(subject_images.c.account_id == account)
        .group_by(subject_images.c.name)
        .order_by(subject_images.c.name)
    ).all()
    return [
        SubjectSummary(row.name, int(row.images), int(row.byte_size), row.created_at)
        for row in found
    ]


def images(connection: Connection, *, account: str, name: str) -> Sequence[Any]:
    """The stored rows of ``account``'s subject ``name``, in order; empty if there is none."""
    return connection.execute(
        select(
            subject_images.c.position,
            subject_images.c.media_type,
            subject_images.c.sha256,
            subject_images.c.data,
        )
        .where(subject_images.c.account_id == account, subject_images.c.name == name)
        .order_by(subject_images.c.position)
    ).all()


def verified(account: str, name: str, found: Sequence[Any]) -> tuple[QuoteReference, ...]:
    """The stored images, each checked against its digest; called off the event loop."""
    for row in found:
        if hashlib.sha256(row.data).hexdigest() != row.sha256:
            raise ReferenceCorrupt(f"subject {account}/{name}", row.position)
    return tuple(QuoteReference(row.media_type, bytes(row.data)) for row in found)


def remove(connection: Connection, *, account: str, name: str) -> bool:
    """Delete ``account``'s subject ``name``; whether there was one."""
    return connection.execute(_DELETE, {"account": account, "name": name}).rowcount > 0


_DELETE = delete(subject_images).where(
    subject_images.c.account_id == bindparam("account"),
    subject_images.c.name == bindparam("name"),
)
