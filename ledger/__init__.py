"""The credit ledger: accounts, holds, captures, releases and generation history.

It knows nothing of chat platforms or providers; ``bot`` drives it.
"""

from ledger.errors import (
    AccountNotFound,
    GenerationNotFound,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidTransition,
    LedgerError,
    QuoteExpired,
    WrongAccount,
    unreachable,
)
from ledger.ledger import Ledger, create_engine, utc_now
from ledger.values import (
    Balance,
    Discrepancy,
    Entry,
    EntryKind,
    Generation,
    GenerationStatus,
    NewGeneration,
)

__all__ = [
    "AccountNotFound",
    "Balance",
    "Discrepancy",
    "Entry",
    "EntryKind",
    "Generation",
    "GenerationNotFound",
    "GenerationStatus",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidTransition",
    "Ledger",
    "LedgerError",
    "NewGeneration",
    "QuoteExpired",
    "WrongAccount",
    "create_engine",
    "unreachable",
    "utc_now",
]
