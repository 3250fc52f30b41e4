"""The values the ledger hands out: frozen snapshots, never live rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any


class EntryKind(StrEnum):
    GRANT = "grant"
    ADJUSTMENT = "adjustment"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    EXPIRE = "expire"
    TAKE_BACK = "take_back"
    """Credits taken back after a payment was refunded or disputed; what was already spent
    becomes owed (``owed_delta``)."""
    REPAY = "repay"
    """Credits that came in (a grant, a release) paying what the account owes."""


class LotKind(StrEnum):
    """Where a lot's credits came from; a hold draws them in this order."""

    ALLOWANCE = "allowance"
    """The free tier, renewed each period."""
    PROMO = "promo"
    """An admin's grant or starting credits; may expire."""
    PAID = "paid"
    """Bought; never expires."""


class GenerationStatus(StrEnum):
    """Where a generation is in its life.

    quoted ─┬─> cancelled
            ├─> expired
            └─> running ─┬─> completed   every image delivered and charged
                         ├─> partial     some delivered and charged, the rest released
                         └─> failed      nothing delivered, everything released
    """

    QUOTED = "quoted"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self not in (GenerationStatus.QUOTED, GenerationStatus.RUNNING)


@dataclass(frozen=True)
class Lot:
    """One lot of an account's credits, as a balance shows it."""

    id: int
    kind: LotKind
    available: int
    """What can still be spent: 0 once the lot has expired, even before its entry is written."""
    held: int
    expires_at: datetime | None


@dataclass(frozen=True)
class Balance:
    """What an account can spend (``available``) and has set aside (``held``), never counting
    a credit whose lot has expired.

    Two balances are equal when their totals are: ``lots`` is the detail behind them, in
    the order a hold draws from them (lots with nothing left out).
    """

    account: str
    available: int
    held: int
    lots: tuple[Lot, ...] = field(default=(), compare=False)
    owed: int = 0
    """Credits taken back after they were spent: no hold until they are paid."""


@dataclass(frozen=True)
class StatementLine:
    """One entry's change to one lot, or to what the account owes (``lot_id`` None), and the
    account's balance after it (``Ledger.statement``)."""

    entry_id: int
    at: datetime
    kind: EntryKind
    lot_id: int | None
    lot_kind: LotKind | None
    available_delta: int
    held_delta: int
    generation_id: str | None
    model_id: str | None
    reason: str
    available_after: int
    held_after: int
    owed_delta: int = 0
    owed_after: int = 0


@dataclass(frozen=True)
class Entry:
    id: int
    account_id: str
    kind: EntryKind
    amount: int
    available_delta: int
    held_delta: int
    actor: str
    reason: str
    idempotency_key: str
    generation_id: str | None
    created_at: datetime
    owed_delta: int = 0


@dataclass(frozen=True)
class NewGeneration:
    """A quote to record: what was asked and what it will cost."""

    id: str
    account_id: str
    model_id: str
    provider: str
    provider_model: str
    prompt: str
    options: dict[str, Any]
    images_requested: int
    credits_per_image: int
    expires_at: datetime
    channel: str | None = None
    cost_per_image_microusd: int | None = None
    """What the provider charges per image, in millionths of a US dollar, if known."""
    price_total: int | None = None
    """What the whole request costs when price rules (a discount, an account's own price)
    made it other than ``credits_per_image`` × ``images_requested``."""

    @property
    def price(self) -> int:
        if self.price_total is not None:
            return self.price_total
        return self.images_requested * self.credits_per_image


@dataclass(frozen=True)
class Generation:
    id: str
    account_id: str
    model_id: str
    provider: str
    provider_model: str
    prompt: str
    options: dict[str, Any]
    channel: str | None
    images_requested: int
    images_delivered: int
    credits_per_image: int
    credits_held: int
    credits_charged: int
    status: GenerationStatus
    error_code: str | None
    error_message: str | None
    created_at: datetime
    expires_at: datetime
    confirmed_at: datetime | None
    finished_at: datetime | None
    images_posted: int | None = None
    """Images the platform confirmed posted, recorded before the capture in case of a crash."""
    owner: str | None = None
    """The process running it (``Ledger.owner``), from the hold on."""
    lease_until: datetime | None = None
    """Until when, by the database's clock, only its owner may settle it; the owner renews it."""
    provider_attempts: Sequence[Mapping[str, Any]] | None = None
    """Each call made to the provider for it, in order, once it has run."""
    cost_per_image_microusd: int | None = None
    provider_cost_microusd: int | None = None
    """What the provider charged for it (millionths of a US dollar), once it has run."""
    posted_link: str | None = None
    """Where the delivery put the images (a message's URL, a file's path), once posted."""

    @property
    def price(self) -> int:
        """What the whole request was quoted at, and is held for on confirm."""
        # Quotes recorded before price rules existed cost exactly per image times count.
        return int(self.options.get(PRICE_OPTION, self.images_requested * self.credits_per_image))

    @property
    def reference_count(self) -> int:
        """How many reference images were stored with the quote (``Ledger.open_quote``)."""
        return int(self.options.get(REFERENCE_COUNT_OPTION, 0))


REFERENCE_COUNT_OPTION = "reference_images"
"""The option under which ``Ledger.open_quote`` records how many references a quote stores."""
PRICE_OPTION = "price"
"""The option under which a quote records its price (``NewGeneration.price``): with discounts
it is no longer per image × count, and a column for it would be a migration."""


@dataclass(frozen=True)
class QuoteReference:
    """A reference image stored with its quote until the generation settles or the quote expires."""

    media_type: str
    data: bytes


@dataclass(frozen=True)
class QuoteLimits:
    """What a quote may add, checked in the quote's own transaction so that no two slip past together.

    Reference bytes count while their quote is pending (quoted and unexpired, or running).
    """

    reference_bytes_per_account: int
    reference_bytes_total: int
    quotes_per_minute: int


@dataclass(frozen=True)
class Discrepancy:
    """An account whose stored balance disagrees with what its entries add up to."""

    account: str
    stored_available: int
    stored_held: int
    entries_available: int
    entries_held: int
    running_holds: int
    lot_problems: tuple[str, ...] = ()
    stored_owed: int = 0
    entries_owed: int = 0
    """What disagrees among its lots, each said in a sentence."""


@dataclass(frozen=True)
class PriceOverride:
    """An admin's price for one account (table ``price_overrides``): a fixed
    ``credits_per_image`` for ``model_id``, or ``percent_off`` every model (``model_id`` None)."""

    id: int
    account_id: str
    model_id: str | None
    credits_per_image: int | None
    percent_off: int | None
    until: datetime | None
    actor: str
    reason: str
    created_at: datetime

    def in_force(self, now: datetime) -> bool:
        """An override whose ``until`` has passed is ignored (and kept, as a record)."""
        return self.until is None or self.until > now


ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
"""Currencies payments count in whole units, not hundredths (as Stripe does)."""


def major_units(amount: int, currency: str) -> Decimal:
    """An amount kept in the currency's smallest unit, in the currency itself (499 → 4.99)."""
    return Decimal(amount) if currency in ZERO_DECIMAL_CURRENCIES else Decimal(amount) / 100


@dataclass(frozen=True)
class QuoteTerms:
    """What an account's own choices make of its next quote (``Ledger.quote_terms``)."""

    overrides: tuple[PriceOverride, ...]
    auto_confirm_under: int
    """The price at or under which its quotes generate without a button (0: never)."""


class PurchaseStatus(StrEnum):
    """Where a purchase is.

    open ─┬─> paid ──> refunded   (all of its price paid back)
          ├─> failed              (a delayed payment did not go through)
          └─> expired             (the checkout was never paid)
    """

    OPEN = "open"
    PAID = "paid"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"


@dataclass(frozen=True)
class NewPurchase:
    """A pack someone started buying: the credits and price come from the pricing file."""

    id: str
    source: str
    """``stripe`` or ``discord``."""
    account_id: str
    pack: str
    credits: int
    amount: int
    """In the currency's smallest unit (cents)."""
    currency: str
    external_id: str | None = None
    """The Checkout Session's or the entitlement's id, once known."""
    channel: str | None = None
    """Where the buyer asked, to tell them there when it is paid."""


@dataclass(frozen=True)
class Purchase:
    id: str
    source: str
    external_id: str | None
    account_id: str
    pack: str
    credits: int
    amount: int
    currency: str
    status: PurchaseStatus
    payment_reference: str | None
    amount_refunded: int
    disputed: bool
    credits_taken_back: int
    channel: str | None
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None


@dataclass(frozen=True)
class PaymentEvent:
    """One notification from a payment provider: its id (once per event, however often it is
    delivered) and type."""

    id: str
    type: str


@dataclass(frozen=True)
class PurchaseChange:
    """What an event did to a purchase: nothing (``repeated``: the event was seen before), or
    credits granted, taken back or given back."""

    purchase: Purchase
    repeated: bool = False
    granted: int = 0
    taken_back: int = 0
    given_back: int = 0
    balance: Balance | None = None
