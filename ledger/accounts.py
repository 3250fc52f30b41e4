"""Finding accounts for an admin (the dashboard's users page): one Core statement, run by
``Ledger`` as a read."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ledger.schema import accounts, credit_lots
from ledger.values import Balance

_ESCAPE = "\\"


def find(connection: Connection, text: str, limit: int, now: datetime) -> list[Balance]:
    """Accounts whose id contains ``text`` (any case), most recently active first, with their
    balances as ``Ledger.balance`` counts them (an expired lot's credits count for nothing);
    every account when ``text`` is empty."""
    expired = (
        select(func.coalesce(func.sum(credit_lots.c.available), 0))
        .where(
            credit_lots.c.account_id == accounts.c.id,
            credit_lots.c.expires_at <= now,
        )
        .scalar_subquery()
    )
    query = (
        select(accounts.c.id, accounts.c.available - expired, accounts.c.held, accounts.c.owed)
        .order_by(accounts.c.updated_at.desc(), accounts.c.id)
        .limit(limit)
    )
    if text:
        # Typed text, not a pattern: % and _ in it match themselves.
        pattern = (
            text.lower()
            .replace(_ESCAPE, _ESCAPE * 2)
            .replace("%", _ESCAPE + "%")
            .replace("_", _ESCAPE + "_")
        )
        query = query.where(func.lower(accounts.c.id).like(f"%{pattern}%", escape=_ESCAPE))
    return [
        Balance(account, int(available), held, owed=owed)
        for account, available, held, owed in connection.execute(query)
    ]
