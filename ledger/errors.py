"""Every refusal the ledger gives, in one place.

The ledger knows nothing of chat; the bot translates these into sentences.

    LedgerError
    ├── AccountNotFound        no such account
    ├── GenerationNotFound     no such generation (request id)
    ├── InsufficientFunds      a hold or revoke larger than the available balance
    ├── WrongAccount           a generation confirmed or cancelled by another account
    ├── QuoteExpired           a hold asked after the quote's expiry
    ├── InvalidTransition      the generation is not in a state that allows the operation
    ├── IdempotencyConflict    a key reused with different parameters
    └── InvalidAmount          zero or negative credits

Anything else an operation raises is the database's or a bug's; ``unreachable``
tells the first kind, worth trying again, from the second.
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


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the database could not be reached, or dropped the connection.

    Such an operation may succeed if tried again (settling twice is safe); a
    syntax error or a bug would fail the same way every time.
    """
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, exc.OperationalError | exc.InterfaceError
        )
    return isinstance(
        error,
        OSError
        | exc.TimeoutError
        | exc.DisconnectionError
        | sqlite3.OperationalError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError,
    )
