"""The money rules, written once: what opening, confirming and settling change, and who may.

Pure functions of what a ledger transaction read under its lock; ``ledger.ledger``
applies their answers in the same transaction, the same way on every database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.errors import (
    InsufficientFunds,
    InvalidTransition,
    LeaseHeld,
    QuoteExpired,
    WrongAccount,
)
from ledger.values import EntryKind, Generation, GenerationStatus

SYSTEM_ACTOR = "system"
"""Who entries made by the bot itself (not a user or an admin) name as their actor."""

STARTING_GRANT_REASON = "starting credits"


@dataclass(frozen=True)
class Line:
    """One ledger entry to record."""

    kind: EntryKind
    amount: int
    available_delta: int
    held_delta: int
    actor: str
    reason: str
    idempotency_key: str


@dataclass(frozen=True)
class Hold:
    """Confirming a quote: its price moves from available to held."""

    quote: Generation
    price: int
    line: Line


@dataclass(frozen=True)
class Settlement:
    """Ending a running generation: the delivered images are charged, the rest returned."""

    running: Generation
    delivered: int
    charged: int
    returned: int
    status: GenerationStatus
    error_code: str | None
    error_message: str | None
    lines: tuple[Line, ...]


def starting_grant_key(account: str) -> str:
    """One starting grant per account, ever."""
    return f"starting-credits:{account}"


def opening(account: str, starting_credits: int) -> tuple[Line, ...]:
    """The entries that open a new account with ``starting_credits``: a grant, if any."""
    if starting_credits <= 0:
        return ()
    grant = Line(
        EntryKind.GRANT,
        starting_credits,
        starting_credits,
        0,
        SYSTEM_ACTOR,
        STARTING_GRANT_REASON,
        starting_grant_key(account),
    )
    return (grant,)


def hold(quote: Generation, account: str, available: int, now: datetime) -> Hold:
    """``account`` confirming ``quote`` with ``available`` credits, or the refusal raised.

    Refusals in this order: another account's quote (``WrongAccount``), one no
    longer waiting (``InvalidTransition``), one past its expiry
    (``QuoteExpired``; the caller marks it expired), one not covered
    (``InsufficientFunds``).
    """
    if quote.account_id != account:
        raise WrongAccount(quote.id, account)
    if quote.status != GenerationStatus.QUOTED:
        raise InvalidTransition(quote.id, quote.status, "confirm")
    if quote.expires_at <= now:
        raise QuoteExpired(quote.id)
    price = quote.price
    if available < price:
        raise InsufficientFunds(account, price, available)
    line = Line(
        EntryKind.HOLD,
        price,
        -price,
        price,
        account,
        f"hold for generation {quote.id}",
        f"hold:{quote.id}",
    )
    return Hold(quote, price, line)


def already_settled(generation: Generation) -> bool:
    """Settling twice answers the first settlement, unchanged."""
    return generation.status.is_final and generation.confirmed_at is not None


def delivered_charge(held: int, requested: int, delivered: int) -> int:
    """What ``delivered`` of ``requested`` images cost out of a hold of ``held`` credits.

    Each image's share of the quoted price, rounded down: with a batch discount
    the price is no longer per image × count, and a partial delivery must never
    cost more than the whole (nor more per image than the user was quoted).
    Every image delivered is the whole hold, to the credit. Before price rules
    the hold was per image × count, and this is exactly per image × delivered.
    """
    if requested <= 0 or delivered <= 0:
        return 0
    if delivered >= requested:
        return held
    return held * delivered // requested


def settlement(
    running: Generation,
    images_delivered: int,
    error_code: str | None = None,
    error_message: str | None = None,
) -> Settlement:
    """Settling ``running`` for ``images_delivered`` (clamped to what was asked).

    The delivered images are charged their share of the hold
    (``delivered_charge``); the rest of the hold goes back to available.
    Raises ``InvalidTransition`` for a generation that is not running.
    """
    if running.status != GenerationStatus.RUNNING:
        raise InvalidTransition(running.id, running.status, "settle")
    delivered = max(0, min(images_delivered, running.images_requested))
    charged = delivered_charge(running.credits_held, running.images_requested, delivered)
    returned = running.credits_held - charged
    lines = []
    if charged:
        lines.append(
            Line(
                EntryKind.CAPTURE,
                charged,
                0,
                -charged,
                SYSTEM_ACTOR,
                f"{delivered} of {running.images_requested} images delivered",
                f"capture:{running.id}",
            )
        )
    if returned:
        not_delivered = running.images_requested - delivered
        lines.append(
            Line(
                EntryKind.RELEASE,
                returned,
                returned,
                -returned,
                SYSTEM_ACTOR,
                error_code or f"{not_delivered} of {running.images_requested} images not delivered",
                f"release:{running.id}",
            )
        )
    if delivered == running.images_requested:
        status = GenerationStatus.COMPLETED
    elif delivered:
        status = GenerationStatus.PARTIAL
    else:
        status = GenerationStatus.FAILED
    return Settlement(
        running, delivered, charged, returned, status, error_code, error_message, tuple(lines)
    )


def abandoned(running: Generation, *, reason: str, posted_reason: str) -> Settlement:
    """Settling a generation whose owner stopped answering for it (its lease ran out).

    The images its owner recorded as posted were received, so they are
    charged (noted with ``posted_reason``); with none, the whole hold goes
    back, recorded as interrupted with ``reason``.
    """
    posted = running.images_posted or 0
    if posted:
        return settlement(running, posted, None, posted_reason or None)
    return settlement(running, 0, "interrupted", reason)


def missing_hold(generation_id: str) -> InvalidTransition:
    """A running generation whose account no longer holds its credits: never applied."""
    return InvalidTransition(generation_id, "missing its hold", "settle")


def lease_expired(running: Generation, database_now: datetime) -> bool:
    """Whether the process running ``running`` no longer answers for it.

    A generation held before leases existed has none: nobody answers for it.
    """
    return running.lease_until is None or running.lease_until <= database_now


def check_settler(running: Generation, settler: str, database_now: datetime) -> None:
    """Only its owner settles a generation while its lease lasts; anyone may once it has run out.

    Raises ``LeaseHeld`` otherwise: another live process is still working on it.
    """
    if running.owner != settler and not lease_expired(running, database_now):
        raise LeaseHeld(running.id, running.owner or "")
