"""Every refusal the ledger gives, in one place.

The ledger knows nothing of chat; the bot translates these into sentences.

    LedgerError
    ├── AccountNotFound        no such account
    ├── GenerationNotFound     no such generation (request id)
    ├── PurchaseNotFound       no such purchase
    ├── InsufficientFunds      a hold or revoke larger than the available balance
    ├── CreditsOwed            a hold or quote by an account that owes credits
    ├── WrongAccount           a generation confirmed or cancelled by another account
    ├── QuoteExpired           a hold asked after the quote's expiry
    ├── InvalidTransition      the generation is not in a state that allows the operation
    ├── LeaseHeld              a running generation another live process still answers for
    ├── IdempotencyConflict    a key reused with different parameters
    ├── InvalidAmount          zero or negative credits
    ├── TooManyQuotes          an account's quotes in the last minute reached the limit
    ├── AccountReferencesFull  an account's pending reference images would pass its limit
    ├── ReferenceStorageFull   everyone's pending reference images would pass the limit
    └── ReferenceCorrupt       a stored reference image no longer matches its digest

Anything else an operation raises is the database's or a bug's; ``transient``
tells a failure worth trying again (busy, disconnected, timed out) from one
that will fail every time.
"""

from __future__ import annotations

import sqlite3

import asyncpg
from sqlalchemy import exc


class LedgerError(Exception):
    """The ledger refused an operation; nothing was changed."""


class AccountNotFound(LedgerError):
    def __init__(self, account: str) -> None:
        super().__init__(f"no account {account!r}")
        self.account = account


class GenerationNotFound(LedgerError):
    def __init__(self, generation_id: str) -> None:
        super().__init__(f"no generation {generation_id!r}")
        self.generation_id = generation_id


class PurchaseNotFound(LedgerError):
    def __init__(self, purchase_id: str) -> None:
        super().__init__(f"no purchase {purchase_id!r}")
        self.purchase_id = purchase_id


class InsufficientFunds(LedgerError):
    def __init__(self, account: str, need: int, available: int) -> None:
        super().__init__(f"{account} needs {need} credits and has {available} available")
        self.account = account
        self.need = need
        self.available = available


class WrongAccount(LedgerError):
    def __init__(self, generation_id: str, account: str) -> None:
        super().__init__(f"generation {generation_id!r} does not belong to {account!r}")


class QuoteExpired(LedgerError):
    def __init__(self, generation_id: str) -> None:
        super().__init__(f"the quote for generation {generation_id!r} has expired")


class InvalidTransition(LedgerError):
    def __init__(self, generation_id: str, status: str, operation: str) -> None:
        super().__init__(f"cannot {operation} generation {generation_id!r}: it is {status}")
        self.status = status
        self.operation = operation


class LeaseHeld(LedgerError):
    def __init__(self, generation_id: str, owner: str) -> None:
        super().__init__(
            f"generation {generation_id!r} is still run by {owner!r}, whose lease lasts"
        )
        self.generation_id = generation_id
        self.owner = owner


class CreditsOwed(LedgerError):
    """The account owes credits taken back after they were spent; it holds nothing until the
    next grant or purchase pays them."""

    def __init__(self, account: str, owed: int) -> None:
        super().__init__(f"{account} owes {owed} credits")
        self.account = account
        self.owed = owed


class IdempotencyConflict(LedgerError):
    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for a different operation; use a new key"
        )
        self.key = key


class InvalidAmount(LedgerError):
    def __init__(self, amount: int) -> None:
        super().__init__(f"amount must be a positive whole number of credits, not {amount}")
        self.amount = amount


class TooManyQuotes(LedgerError):
    def __init__(self, account: str, limit: int) -> None:
        super().__init__(f"{account} made {limit} quotes in the last minute, the most allowed")
        self.account = account
        self.limit = limit


class AccountReferencesFull(LedgerError):
    def __init__(self, account: str, pending: int, adding: int, limit: int) -> None:
        super().__init__(
            f"{account} has {pending} bytes of references pending; {adding} more would pass {limit}"
        )
        self.account = account
        self.pending = pending
        self.adding = adding
        self.limit = limit


class ReferenceStorageFull(LedgerError):
    def __init__(self, pending: int, adding: int, limit: int) -> None:
        super().__init__(
            f"{pending} bytes of references are pending; {adding} more would pass {limit}"
        )
        self.pending = pending
        self.adding = adding
        self.limit = limit


class ReferenceCorrupt(LedgerError):
    def __init__(self, generation_id: str, position: int) -> None:
        super().__init__(
            f"reference {position} of generation {generation_id!r} does not match its digest"
        )
        self.generation_id = generation_id
        self.position = position


_TRANSIENT_SQLITE_ERRORS = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL")
"""SQLite's result codes (and their extended forms) that another try may get past."""

_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
"""PostgreSQL's: connection lost, serialization or deadlock, out of resources, the
operator's (shutdown, a cancelled or timed-out statement), and the system's (I/O)."""


def transient(error: BaseException) -> bool:
    """Whether trying the operation that raised ``error`` again may succeed.

    Busy or locked databases, dropped connections, timeouts and I/O errors
    pass; settling twice is safe, so such an operation is worth another try.
    A permanent failure (a read-only file, a missing table, a constraint, a
    bug) would fail the same way every time, and is not.
    """
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or (error.orig is not None and transient(error.orig))
    if isinstance(error, sqlite3.Error):
        return (getattr(error, "sqlite_errorname", None) or "").startswith(_TRANSIENT_SQLITE_ERRORS)
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
    if isinstance(
        error,
        OSError
        | TimeoutError
        | exc.TimeoutError
        | exc.DisconnectionError
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError,
    ):
        return True
    # SQLAlchemy's adaptation of an asyncpg error keeps the original as its cause.
    cause = error.__cause__
    return isinstance(cause, asyncpg.InterfaceError | asyncpg.PostgresConnectionError | OSError)


class SubjectStorageFull(LedgerError):
    def __init__(self, account: str, stored: int, adding: int, limit: int) -> None:
        super().__init__(
            f"{account} keeps {stored} bytes of subjects; {adding} more would pass {limit}"
        )
        self.account = account
        self.stored = stored
        self.adding = adding
        self.limit = limit
