"""The admin dashboard's login links and sessions (table ``dashboard_tokens``), each operation
one function of a Core ``Connection`` that ``Ledger`` runs in a transaction of its own.

A token is handed out once and stored only as its SHA-256, so neither a copy
of the database nor its logs can be used to log in. Whether the account may
use the dashboard (``ADMIN_ACCOUNTS``) is the bot's rule, not the ledger's.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.engine import Connection

from ledger.schema import dashboard_tokens

LINK = "link"
SESSION = "session"

_KEPT_AFTER_EXPIRY = timedelta(days=1)
"""How long an expired token's row stays (for an operator looking into a login) before the
next new token deletes it."""
_TOKEN_BYTES = 32


@dataclass(frozen=True)
class DashboardSession:
    account: str
    expires_at: datetime


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(
    connection: Connection, *, kind: str, account: str, lifetime: timedelta, now: datetime
) -> str:
    """A fresh random token of ``kind`` for ``account``, valid for ``lifetime``; only its hash
    is stored. Tokens long expired are deleted on the way."""
    connection.execute(
        delete(dashboard_tokens).where(dashboard_tokens.c.expires_at < now - _KEPT_AFTER_EXPIRY)
    )
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    connection.execute(
        insert(dashboard_tokens).values(
            token_sha256=token_hash(token),
            kind=kind,
            account_id=account,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    return token


def valid(
    connection: Connection, *, token: str, kind: str, now: datetime
) -> DashboardSession | None:
    """The account a token of ``kind`` stands for, and until when; None if it is unknown,
    used (a link) or ended (a session), or expired. Changes nothing."""
    row = connection.execute(
        select(dashboard_tokens.c.account_id, dashboard_tokens.c.expires_at).where(
            *_usable(token, kind, now)
        )
    ).first()
    return None if row is None else DashboardSession(row.account_id, row.expires_at)


def exchange_link(
    connection: Connection, *, token: str, session_lifetime: timedelta, now: datetime
) -> tuple[str, DashboardSession] | None:
    """Use a login link up and open a session for its account: the session's token and what it
    stands for, or None if the link is unknown, used or expired.

    One conditional UPDATE marks the link used, so of two exchanges racing for one link
    exactly one gets a session, on both databases.
    """
    used = connection.execute(
        update(dashboard_tokens)
        .where(*_usable(token, LINK, now))
        .values(used_at=now)
        .returning(dashboard_tokens.c.account_id)
    ).first()
    if used is None:
        return None
    session = new_token(
        connection, kind=SESSION, account=used.account_id, lifetime=session_lifetime, now=now
    )
    return session, DashboardSession(used.account_id, now + session_lifetime)


def end_session(connection: Connection, *, token: str, now: datetime) -> bool:
    """Log a session out; False if it had ended already."""
    ended = connection.execute(
        update(dashboard_tokens).where(*_usable(token, SESSION, now)).values(used_at=now)
    )
    return ended.rowcount == 1


def _usable(token: str, kind: str, now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        dashboard_tokens.c.token_sha256 == token_hash(token),
        dashboard_tokens.c.kind == kind,
        dashboard_tokens.c.used_at.is_(None),
        dashboard_tokens.c.expires_at > now,
    )
