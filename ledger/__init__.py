"""The credit ledger: accounts, holds, captures, releases and generation history.

It knows nothing of chat platforms or providers; ``bot`` drives it.
"""

from ledger.errors import (
    AccountNotFound,
    AccountReferencesFull,
    GenerationNotFound,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidTransition,
    LeaseHeld,
    LedgerError,
    QuoteExpired,
    ReferenceCorrupt,
    ReferenceStorageFull,
    TooManyQuotes,
    WrongAccount,
    transient,
)
from ledger.ledger import DEFAULT_LEASE, Ledger, create_engine, process_identity, utc_now
from ledger.values import (
    Balance,
    Discrepancy,
    Entry,
    EntryKind,
    Generation,
    GenerationStatus,
    NewGeneration,
    PriceOverride,
    QuoteLimits,
    QuoteReference,
)

__all__ = [
    "DEFAULT_LEASE",
    "AccountNotFound",
    "AccountReferencesFull",
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
    "LeaseHeld",
    "Ledger",
    "LedgerError",
    "NewGeneration",
    "PriceOverride",
    "QuoteExpired",
    "QuoteLimits",
    "QuoteReference",
    "ReferenceCorrupt",
    "ReferenceStorageFull",
    "TooManyQuotes",
    "WrongAccount",
    "create_engine",
    "process_identity",
    "transient",
    "utc_now",
]
