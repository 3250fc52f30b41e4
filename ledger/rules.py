"""The money rules, written once: what opening, confirming and settling change, and who may.

Pure functions of what a ledger transaction read under its lock; ``ledger.ledger``
applies their answers in the same transaction, the same way on every database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ledger.errors import (
    CreditsOwed,
    InsufficientFunds,
    InvalidTransition,
    LeaseHeld,
    QuoteExpired,
    WrongAccount,
)
from ledger.values import EntryKind, Generation, GenerationStatus, Lot, LotKind

SYSTEM_ACTOR = "system"
"""Who entries made by the bot itself (not a user or an admin) name as their actor."""

STARTING_GRANT_REASON = "starting credits"


@dataclass(frozen=True)
class Part:
    """A line's change to one lot of the account."""

    lot_id: int
    available_delta: int
    held_delta: int


@dataclass(frozen=True)
class Line:
    """One ledger entry to record, and how its change splits over the account's lots."""

    kind: EntryKind
    amount: int
    available_delta: int
    held_delta: int
    actor: str
    reason: str
    idempotency_key: str
    parts: tuple[Part, ...] = ()
    owed_delta: int = 0


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


def hold(quote: Generation, account: str, available: int, now: datetime, owed: int = 0) -> Hold:
    """``account`` confirming ``quote`` with ``available`` credits, or the refusal raised.

    Refusals in this order: another account's quote (``WrongAccount``), one no
    longer waiting (``InvalidTransition``), one past its expiry
    (``QuoteExpired``; the caller marks it expired), an account that ``owed``
    credits (``CreditsOwed``), one not covered (``InsufficientFunds``).
    """
    if quote.account_id != account:
        raise WrongAccount(quote.id, account)
    if quote.status != GenerationStatus.QUOTED:
        raise InvalidTransition(quote.id, quote.status, "confirm")
    if quote.expires_at <= now:
        raise QuoteExpired(quote.id)
    if owed > 0:
        raise CreditsOwed(account, owed)
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
        hold_key(quote.id),
    )
    return Hold(quote, price, line)


def cover_all(account: str, prices: Sequence[int], available: int) -> None:
    """Quotes confirmed together (a /compare) are held whole or not at all: refused with
    their total, not with whichever part happened to run out."""
    total = sum(prices)
    if available < total:
        raise InsufficientFunds(account, total, available)


def hold_key(generation_id: str) -> str:
    """The key of a generation's hold entry, whose parts say which lots it drew from."""
    return f"hold:{generation_id}"


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


# -- lots ------------------------------------------------------------------------------

_KIND_ORDER = {LotKind.ALLOWANCE: 0, LotKind.PROMO: 1, LotKind.PAID: 2}


_NEVER = datetime.max.replace(tzinfo=UTC)


def draw_order(lot: Lot) -> tuple[int, datetime, int]:
    """Allowance first, then promo by soonest expiry (never-expiring last), then paid;
    the older lot first among equals."""
    return _KIND_ORDER[lot.kind], lot.expires_at or _NEVER, lot.id


def in_draw_order(lots: Iterable[Lot]) -> list[Lot]:
    return sorted(lots, key=draw_order)


def lot_expired(lot: Lot, now: datetime) -> bool:
    return lot.expires_at is not None and lot.expires_at <= now


def spendable(lots: Iterable[Lot], now: datetime) -> int:
    """What the lots hold that can be spent at ``now``: an expired lot counts for nothing."""
    return sum(lot.available for lot in lots if not lot_expired(lot, now))


def expiry(lots: Iterable[Lot], now: datetime) -> tuple[Line, ...]:
    """The ``expire`` entries of lots past their expiry that still have credits, one per lot.

    After its entry a lot's ``available`` stays 0: credits released back to it expire at
    once (``by_lot``), so a lot expires through this once, and its key says so.
    """
    return tuple(
        Line(
            EntryKind.EXPIRE,
            lot.available,
            -lot.available,
            0,
            SYSTEM_ACTOR,
            f"{lot.kind} credits expired",
            # A lot expires here once (see above), unless two processes' clocks disagreed on
            # whether a release came before its expiry; the time keeps that second key new.
            f"expire:lot:{lot.id}:{now.isoformat()}",
            (Part(lot.id, -lot.available, 0),),
        )
        for lot in lots
        if lot_expired(lot, now) and lot.available > 0
    )


def drawn(line: Line, lots: Sequence[Lot], now: datetime) -> Line | None:
    """``line``, which takes ``line.amount`` out of available (a hold or a revoke), split
    over the unexpired ``lots`` in draw order; None if they do not hold that much."""
    wanted = line.amount
    held = line.held_delta > 0
    parts = []
    for lot in in_draw_order(lots):
        if not wanted:
            break
        if lot_expired(lot, now) or not lot.available:
            continue
        taken = min(wanted, lot.available)
        wanted -= taken
        parts.append(Part(lot.id, -taken, taken if held else 0))
    if wanted:
        return None
    return replace(line, parts=tuple(parts))


def taken_back(line: Line, lots: Sequence[Lot], now: datetime, first_lot: int | None) -> Line:
    """``line``, a take-back of ``line.amount``, split over the unexpired ``lots``: from lot
    ``first_lot`` (the one the refunded payment granted) first, then the others in draw
    order; whatever they do not hold (spent or held) becomes owed."""
    wanted = line.amount
    parts = []
    for lot in sorted(in_draw_order(lots), key=lambda lot: lot.id != first_lot):
        if not wanted:
            break
        if lot_expired(lot, now) or not lot.available:
            continue
        taken = min(wanted, lot.available)
        wanted -= taken
        parts.append(Part(lot.id, -taken, 0))
    return replace(
        line, available_delta=wanted - line.amount, owed_delta=wanted, parts=tuple(parts)
    )


def repayment(owed: int, lots: Sequence[Lot], now: datetime, key: str) -> Line | None:
    """What the account's unexpired ``lots`` pay of ``owed``, in draw order, as one ``repay``
    entry keyed ``key``; None if there is nothing owed or nothing to pay it with."""
    paying = min(owed, spendable(lots, now))
    if paying <= 0:
        return None
    line = Line(
        EntryKind.REPAY,
        paying,
        -paying,
        0,
        SYSTEM_ACTOR,
        "pays credits owed",
        key,
        owed_delta=-paying,
    )
    repaid = drawn(line, lots, now)
    assert repaid is not None, "spendable credits always cover what they pay"
    return repaid


def purchase_taken_back(credits: int, amount: int, amount_refunded: int, disputed: bool) -> int:
    """How many of a purchase's ``credits`` its payment's reversals take back: all of them
    while a dispute holds the payment, else the refunded share of ``amount``, rounded down
    (in the buyer's favour, as prices are)."""
    if disputed or amount_refunded >= amount:
        return credits
    return credits * amount_refunded // amount


def by_lot(
    settlement: Settlement, held_parts: Sequence[tuple[Lot, int]], now: datetime
) -> tuple[Line, ...]:
    """``settlement``'s lines split over the lots its hold drew from (``held_parts``: each lot
    and how much of the hold came from it).

    The charge is taken from the parts in draw order; the rest goes back to each part's
    lot, except to a lot that has expired meanwhile: that part expires at once, in an
    ``expire`` entry of its own. Raises ``InvalidTransition`` (``missing_hold``) if the
    parts do not add up to the hold, which never happens to a hold the ledger made.
    """
    running = settlement.running
    if sum(amount for _, amount in held_parts) != running.credits_held:
        raise missing_hold(running.id)
    to_charge = settlement.charged
    captured: list[Part] = []
    returned: list[Part] = []
    expired: list[Part] = []
    for lot, amount in sorted(held_parts, key=lambda part: draw_order(part[0])):
        charged = min(amount, to_charge)
        to_charge -= charged
        if charged:
            captured.append(Part(lot.id, 0, -charged))
        rest = amount - charged
        if rest and lot_expired(lot, now):
            expired.append(Part(lot.id, 0, -rest))
        elif rest:
            returned.append(Part(lot.id, rest, -rest))
    lines: list[Line] = []
    for line in settlement.lines:
        if line.kind == EntryKind.CAPTURE:
            lines.append(replace(line, parts=tuple(captured)))
        elif line.kind == EntryKind.RELEASE and returned:
            back = sum(part.available_delta for part in returned)
            lines.append(
                replace(
                    line, amount=back, available_delta=back, held_delta=-back, parts=tuple(returned)
                )
            )
    gone = -sum(part.held_delta for part in expired)
    if gone:
        lines.append(
            Line(
                EntryKind.EXPIRE,
                gone,
                0,
                -gone,
                SYSTEM_ACTOR,
                f"credits released to an expired lot from generation {running.id}",
                f"expire:{running.id}",
                tuple(expired),
            )
        )
    return tuple(lines)
