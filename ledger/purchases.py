"""Purchases of credit packs (tables ``purchases`` and ``purchase_events``): each statement one
function of a Core ``Connection``, run by ``Ledger`` inside the transaction that also grants or
takes back the pack's credits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from ledger.schema import purchase_events, purchases
from ledger.values import NewPurchase, PaymentEvent, Purchase, PurchaseStatus

_INSERTS = {"postgresql": postgresql_insert, "sqlite": sqlite_insert}


def grant_key(purchase_id: str) -> str:
    """The key of the grant that pays out a purchase: once per purchase, whatever happens."""
    return f"purchase:{purchase_id}"


def open_purchase(connection: Connection, new: NewPurchase, now: datetime) -> Purchase:
    """Record ``new`` as open; a purchase with its id already recorded is left as it is."""
    connection.execute(
        _INSERTS[connection.dialect.name](purchases)
        .values(
            id=new.id,
            source=new.source,
            external_id=new.external_id,
            account_id=new.account_id,
            pack=new.pack,
            credits=new.credits,
            amount=new.amount,
            currency=new.currency,
            status=PurchaseStatus.OPEN,
            amount_refunded=0,
            disputed=0,
            credits_taken_back=0,
            channel=new.channel,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    found = find(connection, new.id)
    assert found is not None
    return found


def find(connection: Connection, purchase_id: str, *, lock: bool = False) -> Purchase | None:
    """The purchase, its row locked until the transaction ends if ``lock``."""
    query = select(purchases).where(purchases.c.id == purchase_id)
    row = connection.execute(query.with_for_update() if lock else query).first()
    return None if row is None else _purchase_from(row)


def find_by(connection: Connection, **where: str) -> Purchase | None:
    """The purchase whose columns have these values (``external_id``, ``payment_reference``)."""
    query = select(purchases).where(*(purchases.c[name] == value for name, value in where.items()))
    row = connection.execute(query.order_by(purchases.c.created_at).limit(1)).first()
    return None if row is None else _purchase_from(row)


def listed(
    connection: Connection, account: str | None, limit: int, reversed_only: bool = False
) -> list[Purchase]:
    """Newest first: ``account``'s purchases, or everyone's; only those refunded, disputed or
    with credits taken back if ``reversed_only``."""
    query = select(purchases).order_by(purchases.c.created_at.desc(), purchases.c.id).limit(limit)
    if account is not None:
        query = query.where(purchases.c.account_id == account)
    if reversed_only:
        query = query.where(
            or_(
                purchases.c.amount_refunded > 0,
                purchases.c.disputed > 0,
                purchases.c.credits_taken_back > 0,
            )
        )
    return [_purchase_from(row) for row in connection.execute(query)]


def record_event(
    connection: Connection, event: PaymentEvent, purchase_id: str | None, now: datetime
) -> bool:
    """Remember ``event``; False if it was already seen (it then changes nothing)."""
    recorded = connection.execute(
        _INSERTS[connection.dialect.name](purchase_events)
        .values(event_id=event.id, purchase_id=purchase_id, type=event.type, received_at=now)
        .on_conflict_do_nothing(index_elements=["event_id"])
    )
    return recorded.rowcount == 1


def change(connection: Connection, purchase_id: str, now: datetime, **values: Any) -> Purchase:
    """Set columns of the purchase; the purchase as it is now."""
    connection.execute(_CHANGE.values(updated_at=now, **values), {"purchase_id": purchase_id})
    found = find(connection, purchase_id)
    assert found is not None
    return found


_CHANGE = update(purchases).where(purchases.c.id == bindparam("purchase_id"))


def _purchase_from(row: Row[Any]) -> Purchase:
    values = dict(row._mapping)
    return Purchase(
        **{
            **values,
            "status": PurchaseStatus(values["status"]),
            "disputed": bool(values["disputed"]),
        }
    )
