"""The money rules, written once: what confirming a quote and settling a generation change.

Pure functions of what was read, so that both databases apply the same
answers. SQLite reads, decides and applies inside its writer's transaction.
PostgreSQL applies an answer in one statement (``statements.HOLD_AT_ONCE``,
``SETTLE_AT_ONCE``) guarded on every column of the generation the rule read,
and on the balance still covering what it moves: if another connection
changed any of them in between, nothing is applied, and the ledger reads
again and decides again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.errors import InsufficientFunds, InvalidTransition, QuoteExpired, WrongAccount
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
    """As read; the hold applies only while it is still so."""
    price: int
    line: Line


@dataclass(frozen=True)
class Settlement:
    """Ending a running generation: the delivered images are charged, the rest returned."""

    running: Generation
    """As read; the settlement applies only while it is still so."""
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


def settlement(
    running: Generation,
    images_delivered: int,
    error_code: str | None = None,
    error_message: str | None = None,
) -> Settlement:
    """Settling ``running`` for ``images_delivered`` (clamped to what was asked).

    Each delivered image is charged at the quoted price per image; the rest of
    the hold goes back to available. Raises ``InvalidTransition`` for a
    generation that is not running.
    """
    if running.status != GenerationStatus.RUNNING:
        raise InvalidTransition(running.id, running.status, "settle")
    delivered = max(0, min(images_delivered, running.images_requested))
    charged = delivered * running.credits_per_image
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
        not_delivered = returned // running.credits_per_image
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


def missing_hold(generation_id: str) -> InvalidTransition:
    """A running generation whose account no longer holds its credits: never applied."""
    return InvalidTransition(generation_id, "missing its hold", "settle")
