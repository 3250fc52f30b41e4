"""Monthly spending caps per provider (``[providers.<name>] monthly_budget_usd`` in
``pricing.toml``), counted from what generations committed this calendar month (UTC).

Committed spend is what the provider billed for the generations settled this
month, plus each running generation's images at the price quoted
(``Ledger.provider_spend``). A quote whose images would take it past the
budget is refused, naming the cause; running generations always finish. At
80 % admins are told once per provider and month: a log line, a metric, and a
message to ``ALERT_CHANNEL`` through whichever platform registered a sender.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from bot import messages
from bot.errors import ProviderOverBudget
from bot.observability import Metrics
from bot.pricing import period_bounds
from ledger import Ledger, utc_now

logger = logging.getLogger(__name__)

WARN_AT = Decimal("0.8")
"""The share of a budget at which admins are told."""

Alert = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class BudgetUse:
    """One provider's budget this month, and how much of it is committed."""

    provider: str
    budget_usd: Decimal
    committed_usd: Decimal

    @property
    def share(self) -> Decimal:
        return self.committed_usd / self.budget_usd

    @property
    def exhausted(self) -> bool:
        return self.committed_usd >= self.budget_usd


class Budgets:
    def __init__(
        self,
        ledger: Ledger,
        budgets: Mapping[str, Decimal],
        metrics: Metrics,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.ledger = ledger
        self.budgets = budgets
        self.metrics = metrics
        self._clock = clock
        self.alerts: dict[str, Alert] = {}
        """By platform: how to post a sentence to ``ALERT_CHANNEL``; registered by the adapter
        whose platform the channel is on."""

    async def use(self, provider: str) -> BudgetUse | None:
        """``provider``'s budget and committed spend this month; None without a budget."""
        budget = self.budgets.get(provider)
        if budget is None:
            return None
        month_start, _ = period_bounds("month", self._clock())
        committed = await self.ledger.provider_spend(provider, month_start)
        used = BudgetUse(provider, budget, Decimal(committed) / 1_000_000)
        self.metrics.budget_share.labels(provider).set(float(used.share))
        return used

    async def uses(self) -> list[BudgetUse]:
        """Every budgeted provider's use this month (the dashboard's live page)."""
        found = [await self.use(provider) for provider in sorted(self.budgets)]
        return [use for use in found if use is not None]

    async def check(self, provider: str, images: int, cost_per_image_microusd: int | None) -> None:
        """Refuse a quote (``ProviderOverBudget``) whose images would take ``provider`` past its
        budget this month; tell admins once the month's spend passes 80 %."""
        used = await self.use(provider)
        if used is None:
            return
        if used.share >= WARN_AT:
            await self._warn(used)
        if not _fits(used, images, cost_per_image_microusd):
            raise ProviderOverBudget(provider, used.budget_usd)

    async def allows(self, provider: str, images: int, cost_per_image_microusd: int | None) -> bool:
        """Whether ``check`` would let these images through, telling no one anything."""
        used = await self.use(provider)
        return used is None or _fits(used, images, cost_per_image_microusd)

    async def _warn(self, used: BudgetUse) -> None:
        month = f"{self._clock():%Y-%m}"
        if not await self.ledger.claim_state(f"budget-warned:{used.provider}:{month}", "80%"):
            return
        text = messages.budget_warning(used.provider, used.committed_usd, used.budget_usd)
        logger.warning("%s", text)
        self.metrics.budget_alerts.labels(used.provider).inc()
        for platform, alert in self.alerts.items():
            try:
                await alert(text)
            except Exception:
                # The quote goes on: the log line and the metric have told admins already.
                logger.exception("could not post the budget alert on %s", platform)


def _fits(used: BudgetUse, images: int, cost_per_image_microusd: int | None) -> bool:
    adding = Decimal(images * (cost_per_image_microusd or 0)) / 1_000_000
    return used.committed_usd + adding <= used.budget_usd
