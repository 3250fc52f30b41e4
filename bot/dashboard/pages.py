"""What each dashboard page shows, as tables of plain values, whatever serves them (HTML or CSV).

The figures come from ``ledger.report.build_report``, asked for the tables a
page shows, so they are those of ``imagine-bot report`` for the same period;
an account's lots, statement, generations, purchases and prices come from the
ledger as the CLI reads them.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from bot import messages, statements
from bot.flow import ImagineService
from bot.settings import Settings
from ledger import Generation, PriceOverride
from ledger.report import build_report

PERIODS = {"1": 1, "7": 7, "30": 30, "90": 90, "all": None}
"""The periods a page can be asked for (``?days=``), in days; ``all``: the whole history."""
DEFAULT_PERIOD = "30"
ROWS_SHOWN = 100
"""Rows a long table shows on the page; its CSV has them all."""
CHART_DAYS = 30


@dataclass(frozen=True)
class Table:
    """One table of a page: every row for its CSV, the last ``ROWS_SHOWN`` on the page."""

    name: str
    title: str
    rows: list[dict[str, Any]]
    headings: Mapping[str, str] = field(default_factory=dict)
    """Column → heading, where the column's name is not heading enough."""
    empty: str = messages.DASHBOARD_NOTHING_YET
    link_column: str | None = None
    """A column of account ids, each shown as a link to the account's page."""

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []

    def heading(self, column: str) -> str:
        return self.headings.get(column, column.replace("_", " "))

    @property
    def shown(self) -> list[dict[str, Any]]:
        return self.rows[-ROWS_SHOWN:]

    @property
    def note(self) -> str:
        if len(self.rows) <= ROWS_SHOWN:
            return ""
        return messages.dashboard_last_rows(ROWS_SHOWN, len(self.rows))


@dataclass(frozen=True)
class Page:
    template: str
    title: str
    tables: list[Table]
    context: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> Table | None:
        return next((table for table in self.tables if table.name == name), None)


_MONEY_HEADINGS = {
    "revenue_usd": "credits' worth (USD)",
    "provider_cost_usd": "provider cost (USD)",
    "margin_usd": "margin (USD)",
    "images_delivered": "images",
    "credits_charged": "credits spent",
    "latency_p50_seconds": "latency p50 (s)",
    "latency_p95_seconds": "latency p95 (s)",
}


class DashboardPages:
    def __init__(self, service: ImagineService, settings: Settings) -> None:
        self.service = service
        self.ledger = service.ledger
        self.credit_value = Decimal(str(settings.credit_value_usd))

    async def _report(self, since: datetime | None, tables: Sequence[str]) -> dict[str, Any]:
        built = await build_report(
            self.ledger.engine, since=since, credit_value_usd=self.credit_value, tables=tables
        )
        return built.tables()

    def since(self, period: str) -> datetime | None:
        days = PERIODS[period]
        return None if days is None else self.ledger.now() - timedelta(days=days)

    # -- overview -----------------------------------------------------------------

    async def overview(self) -> Page:
        # To the second: each period's start is shown, and may be given to `report --since`.
        now = self.ledger.now().replace(microsecond=0)
        windows = (
            ("today", now.replace(hour=0, minute=0, second=0, microsecond=0)),
            ("7 days", now - timedelta(days=7)),
            ("30 days", now - timedelta(days=30)),
        )
        chart_since = (now - timedelta(days=CHART_DAYS - 1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        # All at once: the page waits for the slowest report, not for their sum.
        *periods, chart = await asyncio.gather(
            *(self._report(since, ["summary", "revenue_totals"]) for _, since in windows),
            self._report(chart_since, ["daily"]),
        )
        summary: list[dict[str, Any]] = []
        revenue: list[dict[str, Any]] = []
        for (label, _), tables in zip(windows, periods, strict=True):
            summary.extend({"period": label, **row} for row in tables["summary"])
            revenue.extend({"period": label, **row} for row in tables["revenue_totals"])
        daily = chart["daily"]
        return Page(
            "overview.html",
            "Overview",
            [
                Table("summary", "Generations", summary, _MONEY_HEADINGS),
                Table("revenue", "Purchase revenue", revenue, {"net": "net revenue"}),
                Table("daily", f"Per day and model, last {CHART_DAYS} days", daily),
            ],
            {"chart": _chart(daily, chart_since.date(), now.date())},
        )

    # -- models ---------------------------------------------------------------------

    async def models(self, period: str) -> Page:
        tables = await self._report(self.since(period), ["models", "providers"])
        return Page(
            "models.html",
            "Models",
            [
                Table("models", "Models", tables["models"], _MONEY_HEADINGS),
                Table("providers", "Providers", tables["providers"], _MONEY_HEADINGS),
            ],
            {"period": period, "periods": list(PERIODS)},
        )

    # -- users ----------------------------------------------------------------------

    async def users(self, search: str) -> Page:
        found = await self.ledger.find_accounts(search, limit=ROWS_SHOWN)
        rows = [
            {
                "account": balance.account,
                "available": balance.available,
                "held": balance.held,
                "owed": balance.owed,
            }
            for balance in found
        ]
        return Page(
            "users.html",
            "Users",
            [
                Table(
                    "users",
                    "Accounts",
                    rows,
                    empty=messages.DASHBOARD_NO_ACCOUNT_MATCHES,
                    link_column="account",
                )
            ],
            {"search": search},
        )

    async def account(self, account: str) -> Page:
        exists = await self.ledger.account_exists(account)
        balance = await self.ledger.balance(account) if exists else None
        lines = await self.ledger.statement(account) if exists else []
        generations = await self.ledger.history(account, limit=ROWS_SHOWN) if exists else []
        bought = await self.ledger.purchases(account, limit=ROWS_SHOWN) if exists else []
        overrides = await self.ledger.price_overrides(account)
        now = self.ledger.now()
        lots = [
            {
                "lot": lot.id,
                "kind": str(lot.kind),
                "available": lot.available,
                "held": lot.held,
                "expires": _time(lot.expires_at),
            }
            for lot in (balance.lots if balance is not None else ())
        ]
        return Page(
            "account.html",
            account,
            [
                Table("lots", "Lots, in the order holds spend them", lots),
                Table("statement", "Statement", statements.rows(lines)),
                Table(
                    "generations",
                    "Generations, newest first",
                    [_generation_row(generation) for generation in generations],
                ),
                Table(
                    "purchases",
                    "Purchases, newest first",
                    [messages.purchase_row(purchase) for purchase in bought],
                ),
                Table(
                    "prices",
                    "Own prices",
                    [_override_row(override, now) for override in overrides],
                    empty=messages.DASHBOARD_LIST_PRICES,
                ),
            ],
            {
                "account": account,
                "balance": balance,
                "new_account": None if exists else messages.dashboard_new_account(account),
                "models": [model.id for model in self.service.catalog.registry],
            },
        )

    # -- purchases ------------------------------------------------------------------

    async def purchases(self, period: str) -> Page:
        tables = await self._report(self.since(period), ["revenue_totals", "revenue"])
        newest = await self.ledger.purchases(limit=ROWS_SHOWN)
        reversed_ = await self.ledger.purchases(limit=ROWS_SHOWN, reversed_only=True)
        return Page(
            "purchases.html",
            "Purchases",
            [
                Table("revenue_totals", "Revenue", tables["revenue_totals"]),
                Table("revenue", "Revenue per day and pack", tables["revenue"]),
                Table(
                    "purchases",
                    f"The {ROWS_SHOWN} newest purchases",
                    [messages.purchase_row(purchase) for purchase in newest],
                    link_column="account",
                ),
                Table(
                    "refunds",
                    "Refunded, disputed or taken back",
                    [messages.purchase_row(purchase) for purchase in reversed_],
                    empty=messages.DASHBOARD_NO_REFUNDS,
                    link_column="account",
                ),
            ],
            {"period": period, "periods": list(PERIODS)},
        )

    # -- live -----------------------------------------------------------------------

    async def live(self) -> Page:
        service = self.service
        everywhere = await self.ledger.running_by_provider()
        load = []
        for each in service.provider_load():
            circuit = service.circuits.state(each.provider)
            load.append(
                {
                    "provider": each.provider,
                    "limit": each.limit,
                    "running_here": each.running,
                    "queued_here": each.queued,
                    "running_everywhere": everywhere.get(each.provider, 0),
                    "circuit": str(circuit.state),
                    "failures_in_a_row": circuit.failures,
                    "last_error": circuit.last_error or "",
                    "retry_at": _time(circuit.retry_at),
                }
            )
        budgets = [
            {
                "provider": use.provider,
                "budget_usd": str(use.budget_usd),
                "committed_usd": str(use.committed_usd.quantize(Decimal("0.0001"))),
                "used_percent": str((use.share * 100).quantize(Decimal("0.1"))),
                "exhausted": "yes" if use.exhausted else "",
            }
            for use in await service.budgets.uses()
        ]
        return Page(
            "live.html",
            "Live",
            [
                Table(
                    "providers",
                    "Providers",
                    load,
                    {
                        "limit": "limit (this process)",
                        "running_here": "running (this process)",
                        "queued_here": "queued (this process)",
                        "running_everywhere": "running (every process)",
                    },
                    empty=messages.DASHBOARD_NO_PROVIDERS,
                ),
                Table(
                    "budgets",
                    "Monthly budgets (this UTC month)",
                    budgets,
                    {"used_percent": "used (%)"},
                    empty=messages.DASHBOARD_NO_BUDGETS,
                ),
            ],
            {"in_flight": service.in_flight, "accepting": service.accepting},
        )


def _time(when: datetime | None) -> str:
    return "" if when is None else when.isoformat(timespec="seconds")


def _generation_row(generation: Generation) -> dict[str, Any]:
    return {
        "created": _time(generation.created_at),
        "generation": generation.id,
        "model": generation.model_id,
        "status": str(generation.status),
        "images": f"{generation.images_delivered}/{generation.images_requested}",
        "credits_charged": generation.credits_charged,
        "error": generation.error_code or "",
    }


def _override_row(override: PriceOverride, now: datetime) -> dict[str, Any]:
    return {
        "model": override.model_id or "every model",
        "credits_per_image": ""
        if override.credits_per_image is None
        else override.credits_per_image,
        "percent_off": "" if override.percent_off is None else override.percent_off,
        "until": _time(override.until),
        "in_force": "yes" if override.in_force(now) else "expired",
        "reason": override.reason,
        "set_by": override.actor,
    }


def _chart(daily: list[dict[str, Any]], first: date, last: date) -> dict[str, Any]:
    """Credits spent per day, one series per model, every day of the range (0 where none)."""
    days = [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
    by_model: dict[str, dict[str, int]] = defaultdict(dict)
    for row in daily:
        by_model[row["model_id"]][row["day"]] = row["credits_charged"]
    return {
        "labels": [day.isoformat() for day in days],
        "series": [
            {"label": model, "data": [credits.get(day.isoformat(), 0) for day in days]}
            for model, credits in sorted(by_model.items())
        ],
    }
