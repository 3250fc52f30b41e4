"""Prices: ``config/pricing.toml`` loaded and validated, and the one rule that prices a request.

Every money rule about what a request costs lives in ``price``: an account's
override, else the list price at the resolution, times the count, less the
batch discount, rounded down once, never below 1 credit. Arithmetic is exact
(fractions) so that a percent off per image and a batch discount round once,
at the end, in the user's favour.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ledger import ZERO_DECIMAL_CURRENCIES, PriceOverride

MAX_ALLOWANCE = 1_000_000_000
"""The most credits an allowance may give per period (as the most one grant may)."""
MAX_BATCH_THRESHOLD = 10
"""No request asks for more images than this (the registry's limit on ``max_images``)."""

Period = Literal["day", "week", "month"]


class PricingError(Exception):
    """The pricing file cannot be used; ``problems`` lists every fault found."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class BatchDiscounts:
    """Percent off a request of at least so many images: ``{4: 10, 8: 20}``."""

    percents: Mapping[int, int] = field(default_factory=dict)

    def percent_for(self, count: int) -> int:
        """The discount of the largest threshold ``count`` reaches; 0 below every threshold."""
        reached = [threshold for threshold in self.percents if threshold <= count]
        return self.percents[max(reached)] if reached else 0


@dataclass(frozen=True)
class Allowance:
    """Free credits per period, per account: an ``allowance`` lot granted at the account's first
    command of the period, expiring at its end (``Credits.top_up_allowance``)."""

    credits: int = 0
    """0: no free tier."""
    period: Period = "day"
    """In UTC."""
    discord_roles: Mapping[str, int] = field(default_factory=dict)
    """Members of the Discord role with this id get this many instead."""

    def credits_for(self, roles: Collection[str] = ()) -> int:
        """What one account gets per period: the most any of its Discord roles gives, else
        ``credits``."""
        by_role = [self.discord_roles[role] for role in roles if role in self.discord_roles]
        return max(by_role) if by_role else self.credits


def period_bounds(period: Period, now: datetime) -> tuple[datetime, datetime]:
    """The UTC period holding ``now``: its first moment, and the first moment of the next.

    A week starts on Monday (ISO 8601).
    """
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    following = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, following


@dataclass(frozen=True)
class Pack:
    """A credit pack for sale (``[packs.<id>]``): ``credits`` for ``price`` in ``currency``."""

    id: str
    credits: int
    price: Decimal
    currency: str
    """Lower case, ISO 4217 (``usd``), as Stripe writes it."""
    stripe_price: str | None = None
    """A Stripe Price to charge; else Checkout is given ``price`` itself."""
    discord_sku: str | None = None
    """The id of a consumable SKU of this Discord application selling the same pack."""

    @property
    def amount(self) -> int:
        """``price`` in the currency's smallest unit (cents), as payments count it."""
        return int(self.price if self.currency in ZERO_DECIMAL_CURRENCIES else self.price * 100)

    @property
    def shown_price(self) -> str:
        return f"{self.price} {self.currency.upper()}"


@dataclass(frozen=True)
class Pricing:
    """The pricing file's rules; ``path`` None when there is no file (no allowance, no discounts,
    no packs)."""

    path: Path | None = None
    allowance: Allowance = Allowance()
    batch: BatchDiscounts = BatchDiscounts()
    packs: Mapping[str, Pack] = field(default_factory=dict)
    """By id, in the file's order."""
    budgets: Mapping[str, Decimal] = field(default_factory=dict)
    """Each provider's monthly spending cap in US dollars (``[providers.<name>]``)."""

    def discounts_for(self, model_discounts: BatchDiscounts | None) -> BatchDiscounts:
        """A model's own ``batch_discounts`` (models.toml) replace the file's, whole."""
        return self.batch if model_discounts is None else model_discounts


NO_ALLOWANCE = Allowance()
"""No free tier."""
NO_PRICING = Pricing()
"""No pricing file: no allowance, no batch discounts."""


@dataclass(frozen=True)
class Price:
    """What one request costs and why: the breakdown a quote shows and a generation records."""

    list_per_image: int
    count: int
    per_image: Fraction
    """After the account's override, before the batch discount."""
    override: PriceOverride | None
    batch_percent: int
    total: int

    @property
    def list_price(self) -> int:
        return self.list_per_image * self.count

    @property
    def subtotal(self) -> Fraction:
        return self.per_image * self.count

    @property
    def discounted(self) -> Fraction:
        """The subtotal less the batch discount, before rounding down."""
        return self.subtotal * (100 - self.batch_percent) / 100

    @property
    def at_minimum(self) -> bool:
        """Discounts took it below 1 credit, so it costs the least a request may."""
        return self.total > math.floor(self.discounted)

    @property
    def rules(self) -> list[dict[str, Any]]:
        """The rules that made it other than the list price, as a generation records them."""
        applied: list[dict[str, Any]] = []
        if self.override is not None:
            rule: dict[str, Any] = {
                "rule": "account_price" if self.override.model_id else "account_percent_off",
                "override_id": self.override.id,
                "actor": self.override.actor,
                "reason": self.override.reason,
            }
            if self.override.credits_per_image is not None:
                rule["credits_per_image"] = self.override.credits_per_image
            else:
                rule["percent_off"] = self.override.percent_off
            applied.append(rule)
        if self.batch_percent:
            applied.append({"rule": "batch", "percent_off": self.batch_percent})
        if self.at_minimum:
            applied.append({"rule": "minimum", "credits": self.total})
        return applied


def price(
    list_per_image: int,
    count: int,
    *,
    batch: BatchDiscounts,
    overrides: Sequence[PriceOverride] = (),
    model_id: str,
    now: datetime,
) -> Price:
    """What ``count`` images of ``model_id`` at ``list_per_image`` cost an account with
    ``overrides``, at ``now``.

    The account's fixed price for this model wins over its percent off every
    model; an override past its ``until`` is ignored. The total is rounded
    down once, and never below 1 credit for a model that is not free.
    """
    override = _override_for(overrides, model_id, now)
    per_image = Fraction(list_per_image)
    if override is not None and override.credits_per_image is not None:
        per_image = Fraction(override.credits_per_image)
    elif override is not None and override.percent_off is not None:
        per_image = Fraction(list_per_image * (100 - override.percent_off), 100)
    batch_percent = batch.percent_for(count)
    total = math.floor(per_image * count * (100 - batch_percent) / 100)
    if list_per_image > 0:
        # A discount may make a paid model cheaper, never free: the free tier is the allowance.
        total = max(total, 1)
    return Price(list_per_image, count, per_image, override, batch_percent, total)


def _override_for(
    overrides: Sequence[PriceOverride], model_id: str, now: datetime
) -> PriceOverride | None:
    in_force = [override for override in overrides if override.in_force(now)]
    for_model = [override for override in in_force if override.model_id == model_id]
    every_model = [override for override in in_force if override.model_id is None]
    return next(iter(for_model or every_model), None)


# -- the pricing file -----------------------------------------------------------

Percent = Annotated[int, Field(ge=1, le=99)]


class _AllowanceSection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    credits: int = Field(default=0, ge=0, le=MAX_ALLOWANCE)
    period: Period = "day"
    discord_roles: dict[str, Annotated[int, Field(ge=0, le=MAX_ALLOWANCE)]] = Field(
        default_factory=dict
    )


class _BatchSection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    discounts: dict[str, Percent] = Field(default_factory=dict)


class _PackSection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    credits: int = Field(ge=1, le=MAX_ALLOWANCE)
    price: str
    currency: str = "usd"
    stripe_price: str | None = None
    discord_sku: str | None = None


class _ProviderSection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    monthly_budget_usd: Annotated[float, Field(gt=0, le=10_000_000, allow_inf_nan=False)]


class _PricingDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    allowance: _AllowanceSection = _AllowanceSection()
    batch: _BatchSection = _BatchSection()
    packs: dict[str, _PackSection] = Field(default_factory=dict)
    providers: dict[str, _ProviderSection] = Field(default_factory=dict)


def load_pricing(
    path: Path, *, required: bool, providers: Collection[str] | None = None
) -> Pricing:
    """Read and validate a pricing file, raising ``PricingError`` with every problem found.

    A missing file is no allowance and no discounts, unless ``required`` (the
    file was named explicitly, so its absence is a mistake).
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not required:
            return Pricing()
        raise PricingError(
            path, [f"{path}: file not found (set PRICING_FILE to use another)"]
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise PricingError(path, [f"{path}: cannot be read: {error}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise PricingError(path, [f"{path}: not valid TOML: {error}"]) from None
    try:
        parsed = _PricingDocument.model_validate(document)
    except ValidationError as error:
        raise PricingError(
            path, [f"{path}: {_describe(problem)}" for problem in error.errors()]
        ) from None
    problems = [
        f"{path}: key 'batch.discounts': {p}" for p in batch_problems(parsed.batch.discounts)
    ]
    problems += [
        f"{path}: key 'allowance.discord_roles.{role}': not a Discord role id (digits only)"
        for role in parsed.allowance.discord_roles
        if not (role.isascii() and role.isdigit())
    ]
    packs: dict[str, Pack] = {}
    for pack_id, section in parsed.packs.items():
        pack, pack_problems = _pack(pack_id, section)
        problems += [
            f"{path}: key 'packs.{pack_id}{where}': {problem}" for where, problem in pack_problems
        ]
        if pack is not None:
            packs[pack_id] = pack
    if providers is not None:
        problems += [
            f"{path}: key 'providers.{name}': no such provider (known: {', '.join(sorted(providers))})"
            for name in parsed.providers
            if name not in providers
        ]
    if problems:
        raise PricingError(path, problems)
    return Pricing(
        packs=packs,
        budgets={
            name: Decimal(str(section.monthly_budget_usd))
            for name, section in parsed.providers.items()
        },
        path=path,
        allowance=Allowance(
            credits=parsed.allowance.credits,
            period=parsed.allowance.period,
            discord_roles=dict(parsed.allowance.discord_roles),
        ),
        batch=batch_discounts(parsed.batch.discounts),
    )


_PACK_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_CURRENCY = re.compile(r"[a-z]{3}")
_PRICE = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?")


def _pack(pack_id: str, section: _PackSection) -> tuple[Pack | None, list[tuple[str, str]]]:
    """The pack a ``[packs.<id>]`` section describes, or what is wrong with it, each problem
    with the key it is under (relative to the section)."""
    problems: list[tuple[str, str]] = []
    if not _PACK_ID.fullmatch(pack_id):
        problems.append(("", "a pack id is lower-case letters, digits, '-' and '_' (e.g. starter)"))
    currency = section.currency
    if not _CURRENCY.fullmatch(currency):
        problems.append((".currency", f'{currency!r} is not a currency code such as "usd"'))
    price: Decimal | None = None
    try:
        price = Decimal(section.price) if _PRICE.fullmatch(section.price) else None
    except InvalidOperation:
        price = None
    whole = currency in ZERO_DECIMAL_CURRENCIES
    if price is None or price <= 0 or (whole and price != price.to_integral_value()):
        unit = "a whole number" if whole else "a number with at most 2 decimals"
        problems.append((".price", f'{section.price!r} is not a price: write {unit}, e.g. "4.99"'))
    if section.stripe_price is not None and not section.stripe_price.startswith("price_"):
        problems.append((".stripe_price", "a Stripe Price id starts with price_"))
    sku = section.discord_sku
    if sku is not None and not (sku.isascii() and sku.isdigit()):
        problems.append((".discord_sku", "a Discord SKU id is digits only"))
    if problems or price is None:
        return None, problems
    return Pack(pack_id, section.credits, price, currency, section.stripe_price, sku), []


def batch_problems(table: Mapping[str, int], max_images: int = MAX_BATCH_THRESHOLD) -> list[str]:
    """What is wrong with a ``{ 4 = 10, 8 = 20 }`` table whose percents are already 1-99.

    Thresholds are whole numbers from 2 (one image is no batch) to ``max_images``
    (a larger one could never apply); a larger batch must get a larger discount.
    """
    problems: list[str] = []
    thresholds: dict[int, int] = {}
    for key, percent in table.items():
        if not (key.isascii() and key.isdigit()) or not 2 <= int(key) <= max_images:
            problems.append(
                f"'{key}' is not a number of images from 2 to {max_images} "
                "(write { 4 = 10 } for 10% off 4 images or more)"
            )
        else:
            thresholds[int(key)] = percent
    ordered = sorted(thresholds.items())
    problems.extend(
        f"{larger} images get {more}% off, no more than the {less}% of {smaller}; "
        "a larger batch must get a larger discount"
        for (smaller, less), (larger, more) in pairwise(ordered)
        if more <= less
    )
    return problems


def batch_discounts(table: Mapping[str, int]) -> BatchDiscounts:
    """A table ``batch_problems`` accepted, as the value prices are made with."""
    return BatchDiscounts(dict(sorted((int(key), percent) for key, percent in table.items())))


def _describe(problem: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "extra_forbidden":
        return f"key '{location}': unknown key"
    return f"key '{location}': {str(problem['msg']).removeprefix('Value error, ')}"
