"""Analytics over the generation history: what was made, what it earned, what failed.

Every confirmed generation counts (quotes that were cancelled or expired never
cost anything and are left out). A generation *failed* when it delivered no
image; *partial* ones delivered some.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.schema import generations
from ledger.values import GenerationStatus


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

    @property
    def failure_rate(self) -> float:
        return self.failed / self.generations if self.generations else 0.0


@dataclass(frozen=True)
class ProviderFailures:
    provider: str
    generations: int
    failed: int
    failures_by_reason: dict[str, int]

    @property
    def failure_rate(self) -> float:
        return self.failed / self.generations if self.generations else 0.0


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
class Report:
    since: datetime | None
    models: list[ModelUsage]
    providers: list[ProviderFailures]
    daily: list[DailyCredits]
    top_users: list[TopUser]

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Every table as rows of plain values, for CSV and JSON."""
        return {
            "models": [asdict(m) | {"failure_rate": round(m.failure_rate, 4)} for m in self.models],
            "providers": [
                {
                    "provider": p.provider,
                    "generations": p.generations,
                    "failed": p.failed,
                    "failure_rate": round(p.failure_rate, 4),
                    "failures_by_reason": ";".join(
                        f"{reason}={count}"
                        for reason, count in sorted(p.failures_by_reason.items())
                    ),
                }
                for p in self.providers
            ],
            "daily": [asdict(d) | {"day": d.day.isoformat()} for d in self.daily],
            "top_users": [asdict(u) for u in self.top_users],
        }


_SETTLED = (GenerationStatus.COMPLETED, GenerationStatus.PARTIAL, GenerationStatus.FAILED)


async def build_report(engine: AsyncEngine, *, since: datetime | None, top: int = 10) -> Report:
    """Aggregate settled generations confirmed at or after ``since`` (all of them when None)."""
    query = select(
        generations.c.account_id,
        generations.c.model_id,
        generations.c.provider,
        generations.c.status,
        generations.c.error_code,
        generations.c.images_requested,
        generations.c.images_delivered,
        generations.c.credits_charged,
        generations.c.confirmed_at,
    ).where(generations.c.status.in_([str(status) for status in _SETTLED]))
    if since is not None:
        query = query.where(generations.c.confirmed_at >= since)
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()

    # Grouped here rather than in SQL: days need no dialect-specific date functions,
    # and a report reads each generation once.
    models: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    providers: dict[str, Counter[str]] = defaultdict(Counter)
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    daily: dict[tuple[date, str], Counter[str]] = defaultdict(Counter)
    users: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        failed = row.status == GenerationStatus.FAILED
        model = models[(row.model_id, row.provider)]
        model.update(
            generations=1,
            images_requested=row.images_requested,
            images_delivered=row.images_delivered,
            credits_charged=row.credits_charged,
            partial=int(row.status == GenerationStatus.PARTIAL),
            failed=int(failed),
        )
        providers[row.provider].update(generations=1, failed=int(failed))
        if failed:
            reasons[row.provider][row.error_code or "unknown"] += 1
        day = daily[(row.confirmed_at.date(), row.model_id)]
        day.update(generations=1, credits_charged=row.credits_charged)
        users[row.account_id].update(
            generations=1,
            images_delivered=row.images_delivered,
            credits_charged=row.credits_charged,
        )

    return Report(
        since=since,
        models=sorted(
            (
                ModelUsage(
                    model_id,
                    provider,
                    counts["generations"],
                    counts["images_requested"],
                    counts["images_delivered"],
                    counts["credits_charged"],
                    counts["partial"],
                    counts["failed"],
                )
                for (model_id, provider), counts in models.items()
            ),
            key=lambda usage: (-usage.credits_charged, usage.model_id),
        ),
        providers=sorted(
            (
                ProviderFailures(name, counts["generations"], counts["failed"], dict(reasons[name]))
                for name, counts in providers.items()
            ),
            key=lambda failures: failures.provider,
        ),
        daily=sorted(
            (
                DailyCredits(day, model_id, counts["generations"], counts["credits_charged"])
                for (day, model_id), counts in daily.items()
            ),
            key=lambda entry: (entry.day, entry.model_id),
        ),
        top_users=sorted(
            (
                TopUser(
                    account,
                    counts["generations"],
                    counts["images_delivered"],
                    counts["credits_charged"],
                )
                for account, counts in users.items()
            ),
            key=lambda user: (-user.credits_charged, user.account),
        )[:top],
    )
