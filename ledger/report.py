"""Analytics over the generation history: what was made, what it earned, what failed; and
over purchases: what packs sold for, what was refunded or disputed.

Every settled generation counts (quotes that were cancelled or expired never
cost anything and are left out), by the time it was settled: ``since`` and the
days are those of ``finished_at``, the day its credits were captured or
returned. A generation *failed* when it delivered no image; *partial* ones
delivered some. The database does the grouping, so a report reads a few dozen
rows whatever the history's size (``bench/report.py``). Purchases count by the
day they were paid.

A model's latency is from the click (``confirmed_at``) to its settlement
(``finished_at``), over the generations that delivered an image, as the
nearest-rank percentile computed by the database. ``build_report`` can be
asked for some tables only (``tables``): the dashboard's pages and
``imagine-bot report --table`` read just what they show. Each query runs on a
connection of its own, all at once, as PostgreSQL's read committed already had
each statement see its own moment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Date, Select, case, cast, desc, extract, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import SingletonThreadPool, StaticPool
from sqlalchemy.sql.elements import ColumnElement

from ledger.schema import generations, purchases
from ledger.values import GenerationStatus, PurchaseStatus, major_units


@dataclass(frozen=True)
class ModelUsage:
    model_id: str
    provider: str
    generations: int
    images_requested: int
    images_delivered: int
    credits_charged: int
    partial: int
    failed: int
    provider_cost_microusd: int = 0
    """What the provider charged for these generations, failed ones included."""
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    latency_p50_seconds: float | None = None
    """From the click to the settlement, over the generations that delivered an image."""
    latency_p95_seconds: float | None = None

    @property
    def failure_rate(self) -> float:
        return self.failed / self.generations if self.generations else 0.0


@dataclass(frozen=True)
class Summary:
    """Every settled generation of the period together."""

    generations: int = 0
    images_delivered: int = 0
    credits_charged: int = 0
    failed: int = 0
    active_users: int = 0
    """Accounts with at least one settled generation."""
    provider_cost_microusd: int = 0

    @property
    def failure_rate(self) -> float:
        return self.failed / self.generations if self.generations else 0.0


def usd(microusd: int) -> Decimal:
    return (Decimal(microusd) / 1_000_000).quantize(Decimal("0.0001"))


@dataclass(frozen=True)
class ProviderFailures:
    provider: str
    generations: int
    failed: int
    failures_by_reason: dict[str, int]
    calls: int
    """HTTP calls made to the provider for these generations, retries included, where recorded."""
    images_with_calls: int
    """Images asked for by the generations whose calls are recorded."""
    credits_charged: int = 0
    provider_cost_microusd: int = 0

    @property
    def failure_rate(self) -> float:
        return self.failed / self.generations if self.generations else 0.0

    @property
    def calls_per_image(self) -> float:
        """1.0 when no call was retried; more for each retry; 0 for a provider without calls."""
        return self.calls / self.images_with_calls if self.images_with_calls else 0.0


@dataclass(frozen=True)
class DailyCredits:
    day: date
    model_id: str
    generations: int
    credits_charged: int


@dataclass(frozen=True)
class TopUser:
    account: str
    generations: int
    images_delivered: int
    credits_charged: int


@dataclass(frozen=True)
class PackRevenue:
    """What one pack sold for on one day, in one currency, and what of it went back."""

    day: date
    pack: str
    currency: str
    purchases: int
    credits: int
    gross: Decimal
    refunded: Decimal
    disputed: int
    """Purchases whose payment a dispute holds back now."""

    @property
    def net(self) -> Decimal:
        return self.gross - self.refunded


TABLES = (
    "summary",
    "models",
    "providers",
    "daily",
    "top_users",
    "revenue",
    "revenue_totals",
)
"""Every table a report holds, in the order it shows them."""


def _failures(reasons: dict[str, int]) -> str:
    return ";".join(f"{reason}={count}" for reason, count in sorted(reasons.items()))


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass(frozen=True)
class Report:
    since: datetime | None
    models: list[ModelUsage]
    providers: list[ProviderFailures]
    daily: list[DailyCredits]
    top_users: list[TopUser]
    revenue: list[PackRevenue] = field(default_factory=list)
    credit_value_usd: Decimal = Decimal("0.02")
    """What one credit is worth (``CREDIT_VALUE_USD``): credits charged times it is the
    revenue the margin is counted from."""
    summary: Summary = field(default_factory=Summary)
    included: tuple[str, ...] = TABLES
    """The tables this report was built with (``build_report(tables=...)``)."""

    @property
    def revenue_totals(self) -> list[PackRevenue]:
        """The revenue of every pack and day together, one row per currency (``day`` and
        ``pack`` are those of the first row)."""
        totals: dict[str, PackRevenue] = {}
        for row in self.revenue:
            found = totals.get(row.currency)
            totals[row.currency] = (
                row
                if found is None
                else replace(
                    found,
                    purchases=found.purchases + row.purchases,
                    credits=found.credits + row.credits,
                    gross=found.gross + row.gross,
                    refunded=found.refunded + row.refunded,
                    disputed=found.disputed + row.disputed,
                )
            )
        return [totals[currency] for currency in sorted(totals)]

    def money(self, credits: int, cost_microusd: int) -> dict[str, str]:
        """Provider cost, revenue (credits at their value) and margin, in US dollars."""
        revenue = (self.credit_value_usd * credits).quantize(Decimal("0.0001"))
        cost = usd(cost_microusd)
        return {
            "provider_cost_usd": str(cost),
            "revenue_usd": str(revenue),
            "margin_usd": str(revenue - cost),
        }

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Every table the report was built with, as rows of plain values, for CSV and JSON."""
        summary = self.summary
        every = {
            "summary": [
                {
                    "since": None if self.since is None else self.since.isoformat(),
                    "generations": summary.generations,
                    "images_delivered": summary.images_delivered,
                    "credits_charged": summary.credits_charged,
                    "failed": summary.failed,
                    "failure_rate": round(summary.failure_rate, 4),
                    "active_users": summary.active_users,
                    **self.money(summary.credits_charged, summary.provider_cost_microusd),
                }
            ],
            "models": [
                {
                    **{
                        k: v
                        for k, v in asdict(m).items()
                        if k not in ("provider_cost_microusd", "failures_by_reason")
                        and not k.startswith("latency_")
                    },
                    "failure_rate": round(m.failure_rate, 4),
                    "failures_by_reason": _failures(m.failures_by_reason),
                    "latency_p50_seconds": _seconds(m.latency_p50_seconds),
                    "latency_p95_seconds": _seconds(m.latency_p95_seconds),
                    **self.money(m.credits_charged, m.provider_cost_microusd),
                }
                for m in self.models
            ],
            "providers": [
                {
                    "provider": p.provider,
                    "generations": p.generations,
                    "failed": p.failed,
                    "failure_rate": round(p.failure_rate, 4),
                    "failures_by_reason": _failures(p.failures_by_reason),
                    "calls": p.calls,
                    "calls_per_image": round(p.calls_per_image, 2),
                    **self.money(p.credits_charged, p.provider_cost_microusd),
                }
                for p in self.providers
            ],
            "daily": [asdict(d) | {"day": d.day.isoformat()} for d in self.daily],
            "top_users": [asdict(u) for u in self.top_users],
            "revenue": [
                {
                    "day": r.day.isoformat(),
                    "pack": r.pack,
                    "currency": r.currency,
                    "purchases": r.purchases,
                    "credits": r.credits,
                    "gross": str(r.gross),
                    "refunded": str(r.refunded),
                    "net": str(r.net),
                    "disputed": r.disputed,
                }
                for r in self.revenue
            ],
            "revenue_totals": [
                {
                    "currency": r.currency,
                    "purchases": r.purchases,
                    "credits": r.credits,
                    "gross": str(r.gross),
                    "refunded": str(r.refunded),
                    "net": str(r.net),
                    "disputed": r.disputed,
                }
                for r in self.revenue_totals
            ],
        }
        return {name: every[name] for name in TABLES if name in self.included}


T = TypeVar("T")

_SETTLED = (GenerationStatus.COMPLETED, GenerationStatus.PARTIAL, GenerationStatus.FAILED)
_UNSETTLED = [str(status) for status in GenerationStatus if status not in _SETTLED]
_COLUMNS = generations.c


async def build_report(
    engine: AsyncEngine,
    *,
    since: datetime | None,
    top: int = 10,
    credit_value_usd: Decimal = Decimal("0.02"),
    tables: Collection[str] = TABLES,
) -> Report:
    """Aggregate the generations settled at or after ``since`` (all of them when None), into
    ``tables`` only (names from ``TABLES``); the others are left empty and out of ``tables()``."""
    unknown = set(tables) - set(TABLES)
    if unknown:
        raise ValueError(f"no such report tables: {', '.join(sorted(unknown))}")
    wanted = set(tables)
    by_model = bool(wanted & {"models", "providers"})
    # A pool of one shared connection (SQLite in memory) cannot run two at once.
    one_at_a_time = (
        asyncio.Lock() if isinstance(engine.pool, StaticPool | SingletonThreadPool) else None
    )

    async def read(needed: object, query: Callable[[AsyncConnection], Awaitable[T]], empty: T) -> T:
        if not needed:
            return empty
        async with one_at_a_time or contextlib.nullcontext(), engine.connect() as connection:
            return await query(connection)

    # Each query on a connection of its own, at once: the database works on them side by
    # side (SQLite on a thread each), so a page waits for the slowest, not for their sum.
    summary, models, reasons, latency, daily, top_users, revenue = await asyncio.gather(
        read("summary" in wanted, lambda c: _summary(c, since), Summary()),
        read(by_model, lambda c: _models(c, since), []),
        read(by_model, lambda c: _reasons(c, since), []),
        read("models" in wanted, lambda c: _latency(c, since), {}),
        read("daily" in wanted, lambda c: _daily(c, since), []),
        read("top_users" in wanted, lambda c: _top_users(c, since, top), []),
        read(wanted & {"revenue", "revenue_totals"}, lambda c: _revenue(c, since), []),
    )
    model_reasons: dict[str, dict[str, int]] = defaultdict(dict)
    for model_id, _, reason, count in reasons:
        model_reasons[model_id][reason] = count
    return Report(
        revenue=revenue,
        since=since,
        models=sorted(
            (
                replace(
                    usage,
                    failures_by_reason=model_reasons.get(usage.model_id, {}),
                    latency_p50_seconds=latency.get(usage.model_id, (None, None))[0],
                    latency_p95_seconds=latency.get(usage.model_id, (None, None))[1],
                )
                for usage, _, _ in models
            ),
            key=lambda usage: (-usage.credits_charged, usage.model_id),
        ),
        providers=_providers(models, reasons),
        daily=daily,
        top_users=top_users,
        credit_value_usd=credit_value_usd,
        summary=summary,
        included=tuple(name for name in TABLES if name in wanted),
    )


def _settled(query: Select[Any], since: datetime | None) -> Select[Any]:
    """``query`` over the settled generations, from ``since`` on (``ix_generations_finished_at``)."""
    # Spelled NOT IN, which no index serves: nearly every row is settled, and SQLite,
    # which has no statistics unless ANALYZE ran, would otherwise walk the status
    # index and fetch each row from it (twice as slow as reading the table), and
    # leave the finished_at index unused (bench/report.py).
    query = query.where(_COLUMNS.status.not_in(_UNSETTLED))
    return query if since is None else query.where(_COLUMNS.finished_at >= since)


def _count_where(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.sum(case((condition, 1), else_=0))


async def _models(
    connection: AsyncConnection, since: datetime | None
) -> list[tuple[ModelUsage, int, int]]:
    """Each model's usage, with the provider calls recorded and the images they were for."""
    recorded = _COLUMNS.provider_attempts.is_not(None)
    query = _settled(
        select(
            _COLUMNS.model_id,
            _COLUMNS.provider,
            func.count(),
            func.sum(_COLUMNS.images_requested),
            func.sum(_COLUMNS.images_delivered),
            func.sum(_COLUMNS.credits_charged),
            _count_where(_COLUMNS.status == GenerationStatus.PARTIAL),
            _count_where(_COLUMNS.status == GenerationStatus.FAILED),
            func.coalesce(func.sum(_COLUMNS.provider_cost_microusd), 0),
            # One function on SQLite and PostgreSQL's json alike; NULL (not recorded) adds nothing.
            func.coalesce(func.sum(func.json_array_length(_COLUMNS.provider_attempts)), 0),
            func.sum(case((recorded, _COLUMNS.images_requested), else_=0)),
        ).group_by(_COLUMNS.model_id, _COLUMNS.provider),
        since,
    )
    rows = []
    for model_id, provider, *sums in await connection.execute(query):
        # PostgreSQL sums bigints as numeric; every figure here is a whole number.
        figures = [int(value) for value in sums]
        rows.append((ModelUsage(model_id, provider, *figures[:7]), figures[7], figures[8]))
    return rows


async def _reasons(
    connection: AsyncConnection, since: datetime | None
) -> list[tuple[str, str, str, int]]:
    """Failed generations by model, provider and reason (``error_code``)."""
    query = _settled(
        select(
            _COLUMNS.model_id,
            _COLUMNS.provider,
            func.coalesce(_COLUMNS.error_code, "unknown"),
            func.count(),
        )
        .where(_COLUMNS.status == GenerationStatus.FAILED)
        .group_by(_COLUMNS.model_id, _COLUMNS.provider, _COLUMNS.error_code),
        since,
    )
    return [
        (model_id, provider, reason, count)
        for model_id, provider, reason, count in await connection.execute(query)
    ]


async def _summary(connection: AsyncConnection, since: datetime | None) -> Summary:
    query = _settled(
        select(
            func.count(),
            func.coalesce(func.sum(_COLUMNS.images_delivered), 0),
            func.coalesce(func.sum(_COLUMNS.credits_charged), 0),
            func.coalesce(_count_where(_COLUMNS.status == GenerationStatus.FAILED), 0),
            func.count(func.distinct(_COLUMNS.account_id)),
            func.coalesce(func.sum(_COLUMNS.provider_cost_microusd), 0),
        ),
        since,
    )
    # PostgreSQL sums bigints as numeric; every figure here is a whole number.
    return Summary(*(int(value) for value in (await connection.execute(query)).one()))


def _elapsed_seconds(connection: AsyncConnection) -> ColumnElement[Any]:
    """Seconds from a generation's click to its settlement, as each database spells it."""
    if connection.dialect.name == "postgresql":
        return extract("epoch", _COLUMNS.finished_at - _COLUMNS.confirmed_at)
    # SQLite keeps the UTC times as text, which julianday reads (to about 10 µs).
    return (func.julianday(_COLUMNS.finished_at) - func.julianday(_COLUMNS.confirmed_at)) * 86_400.0


async def _latency(
    connection: AsyncConnection, since: datetime | None
) -> dict[str, tuple[float | None, float | None]]:
    """Each model's p50 and p95 latency (nearest rank) over its generations that delivered."""
    # The seconds in a subquery of their own: SQLite then works them out once per row, not
    # again for the window's ordering (a third faster over 30 days of 100,000 generations).
    timed = _settled(
        select(_COLUMNS.model_id, _elapsed_seconds(connection).label("seconds")).where(
            _COLUMNS.images_delivered > 0, _COLUMNS.confirmed_at.is_not(None)
        ),
        since,
    ).subquery()
    ranked = select(
        timed.c.model_id,
        timed.c.seconds,
        func.row_number()
        .over(partition_by=timed.c.model_id, order_by=timed.c.seconds)
        .label("place"),
        func.count().over(partition_by=timed.c.model_id).label("total"),
    ).subquery()

    def percentile(percent: int) -> ColumnElement[Any]:
        # The ceil(percent% of total)-th fastest, in whole numbers on both databases.
        place = (ranked.c.total * percent + 99) // 100
        return func.max(case((ranked.c.place == place, ranked.c.seconds)))

    query = select(ranked.c.model_id, percentile(50), percentile(95)).group_by(ranked.c.model_id)
    return {
        model_id: (_as_float(p50), _as_float(p95))
        for model_id, p50, p95 in await connection.execute(query)
    }


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _providers(
    models: list[tuple[ModelUsage, int, int]], reasons: list[tuple[str, str, str, int]]
) -> list[ProviderFailures]:
    """Each provider's figures: the sums of its models' rows, already grouped by the database."""
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    for usage, calls, images in models:
        totals[usage.provider].update(
            generations=usage.generations,
            failed=usage.failed,
            calls=calls,
            images=images,
            credits=usage.credits_charged,
            cost=usage.provider_cost_microusd,
        )
    by_reason: dict[str, Counter[str]] = defaultdict(Counter)
    for _, provider, reason, count in reasons:
        by_reason[provider][reason] += count
    return [
        ProviderFailures(
            name,
            counts["generations"],
            counts["failed"],
            dict(by_reason[name]),
            counts["calls"],
            counts["images"],
            counts["credits"],
            counts["cost"],
        )
        for name, counts in sorted(totals.items())
    ]


def _day(connection: AsyncConnection, moment: Any = _COLUMNS.finished_at) -> ColumnElement[date]:
    """The UTC day of ``moment`` (when a generation was settled), as each database spells it."""
    if connection.dialect.name == "postgresql":
        return cast(func.timezone("UTC", moment), Date)
    # SQLite keeps the UTC time as text ("2026-11-24 09:30:00.000000"); Date reads the result back.
    return func.date(moment, type_=Date)


async def _daily(connection: AsyncConnection, since: datetime | None) -> list[DailyCredits]:
    day = _day(connection).label("day")
    query = _settled(
        select(day, _COLUMNS.model_id, func.count(), func.sum(_COLUMNS.credits_charged))
        .group_by(day, _COLUMNS.model_id)
        .order_by(day, _COLUMNS.model_id),
        since,
    )
    return [
        DailyCredits(day_value, model_id, count, int(credits))
        for day_value, model_id, count, credits in await connection.execute(query)
    ]


async def _top_users(
    connection: AsyncConnection, since: datetime | None, top: int
) -> list[TopUser]:
    credits = func.sum(_COLUMNS.credits_charged)
    query = _settled(
        select(_COLUMNS.account_id, func.count(), func.sum(_COLUMNS.images_delivered), credits)
        .group_by(_COLUMNS.account_id)
        .order_by(desc(credits), _COLUMNS.account_id)
        .limit(top),
        since,
    )
    return [
        TopUser(account, count, int(images), int(spent))
        for account, count, images, spent in await connection.execute(query)
    ]


async def _revenue(connection: AsyncConnection, since: datetime | None) -> list[PackRevenue]:
    """Paid purchases by the day they were paid, pack and currency (``ix_purchases_paid_at``)."""
    day = _day(connection, purchases.c.paid_at).label("day")
    query = (
        select(
            day,
            purchases.c.pack,
            purchases.c.currency,
            func.count(),
            func.sum(purchases.c.credits),
            func.sum(purchases.c.amount),
            func.sum(purchases.c.amount_refunded),
            func.sum(purchases.c.disputed),
        )
        .where(purchases.c.status.in_([PurchaseStatus.PAID, PurchaseStatus.REFUNDED]))
        .group_by(day, purchases.c.pack, purchases.c.currency)
        .order_by(day, purchases.c.pack, purchases.c.currency)
    )
    if since is not None:
        query = query.where(purchases.c.paid_at >= since)
    return [
        PackRevenue(
            day_value,
            pack,
            currency,
            count,
            int(credits),
            major_units(int(gross), currency),
            major_units(int(refunded), currency),
            int(disputed),
        )
        for day_value, pack, currency, count, credits, gross, refunded, disputed in (
            await connection.execute(query)
        )
    ]
