"""Per-account price overrides (table ``price_overrides``), each operation one function of a
Core ``Connection`` that ``Ledger`` runs in a transaction of its own.

The ledger only keeps them; which one applies to a request, and what it then
costs, is the bot's price rule (``bot.pricing``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, delete, insert, select
from sqlalchemy.engine import Connection

from ledger.schema import price_overrides
from ledger.values import PriceOverride


def set_override(
    connection: Connection,
    *,
    account: str,
    model_id: str | None,
    credits_per_image: int | None,
    percent_off: int | None,
    until: datetime | None,
    actor: str,
    reason: str,
    now: datetime,
) -> PriceOverride:
    """Record the rule, replacing the account's rule of the same scope (the model, or every model).

    One transaction, so a rule is never briefly missing nor briefly doubled.
    """
    connection.execute(delete(price_overrides).where(*_scope(account, model_id)))
    row = connection.execute(
        insert(price_overrides)
        .values(
            account_id=account,
            model_id=model_id,
            credits_per_image=credits_per_image,
            percent_off=percent_off,
            until=until,
            actor=actor,
            reason=reason,
            created_at=now,
        )
        .returning(*price_overrides.c)
    ).one()
    return _override_from(row)


_EVERY_OVERRIDE = select(price_overrides).order_by(
    price_overrides.c.account_id,
    price_overrides.c.model_id.is_not(None),
    price_overrides.c.model_id,
)
_ACCOUNT_OVERRIDES = _EVERY_OVERRIDE.where(price_overrides.c.account_id == bindparam("account"))
"""Built once: one account's are read for every quote, and building a statement afresh costs
more than running it."""


def overrides(connection: Connection, account: str | None) -> list[PriceOverride]:
    """``account``'s rules (everyone's if None), expired ones included: by account, every-model
    rule first, then by model."""
    if account is None:
        return [_override_from(row) for row in connection.execute(_EVERY_OVERRIDE)]
    rows = connection.execute(_ACCOUNT_OVERRIDES, {"account": account})
    return [_override_from(row) for row in rows]


def clear_overrides(connection: Connection, account: str, model_id: str | None) -> int:
    """Delete the account's rule for ``model_id``, or every rule it has if None; how many went."""
    conditions = (
        _scope(account, model_id)
        if model_id is not None
        else (price_overrides.c.account_id == account,)
    )
    return connection.execute(delete(price_overrides).where(*conditions)).rowcount


def _scope(account: str, model_id: str | None) -> tuple[Any, ...]:
    model = (
        price_overrides.c.model_id.is_(None)
        if model_id is None
        else price_overrides.c.model_id == model_id
    )
    return (price_overrides.c.account_id == account, model)


def _override_from(row: Row[Any]) -> PriceOverride:
    return PriceOverride(**row._mapping)
