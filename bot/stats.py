"""Admins' ``/stats``: the last 30 days as headline figures and a chart of the credits spent
each day by model, the same on every platform.

The figures are ``ledger.report.build_report``'s over the same window, so chat and
``imagine-bot report`` agree to the credit. The window is the last 30 UTC days, today
included, counting each generation by the day it was settled, as the report does.

The chart is drawn with matplotlib's object-oriented API alone: a ``Figure`` on an Agg
canvas of its own. pyplot keeps every figure in a global registry and picks a GUI
backend, neither of which a server wants. Drawing takes a tenth of a second or more,
so it runs in a worker thread and the event loop goes on answering meanwhile.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from bot import messages
from bot.credits import Credits
from bot.errors import NotAdmin, RequestError, UnknownModel
from bot.options import take_option
from bot.registry import Registry
from ledger.report import ModelUsage, Report, build_report

STATS_DAYS = 30
CHART_INCHES = (8.0, 4.5)
CHART_DPI = 100
CHART_PIXELS = (800, 450)
"""What ``CHART_INCHES`` at ``CHART_DPI`` make: small enough to draw in about 0.1 s and to
read on a phone, large enough for 30 labelled days."""

_RENDERING = threading.Lock()
"""matplotlib documents itself as not thread-safe: its font and text caches are shared by
every figure. Two admins asking at once get their charts drawn one after the other."""


@dataclass(frozen=True)
class Headline:
    """The window's totals, over one model or all of them."""

    generations: int
    images: int
    """Images delivered."""
    credits: int
    """Credits charged."""
    failed: int
    """Generations that delivered no image."""
    provider_cost_usd: Decimal
    revenue_usd: Decimal
    """The credits charged at ``CREDIT_VALUE_USD`` each, as the report counts revenue."""
    margin_usd: Decimal

    @property
    def failure_rate(self) -> float:
        return self.failed / self.generations if self.generations else 0.0


@dataclass(frozen=True)
class Window:
    """What ``/stats`` shows, before it is drawn."""

    days: tuple[date, ...]
    """Every day of the window, oldest first."""
    model_id: str | None
    """The one model asked about, or None for all."""
    headline: Headline
    credits_by_model: Mapping[str, tuple[int, ...]]
    """Credits charged on each of ``days`` (0 on a day without any), by model, the model
    that charged the most first."""
    credit_value_usd: Decimal


@dataclass(frozen=True)
class Chart:
    png: bytes
    filename: str


@dataclass(frozen=True)
class StatsAnswer:
    """The sentence to show and, when there is anything to draw, the chart."""

    text: str
    chart: Chart | None


def parse_stats_arguments(text: str) -> str | None:
    """The model asked about in ``/stats``'s text form (``model:<id>``, or the id alone), if any."""
    model, rest = take_option(text.split(), "model")
    if model is None and len(rest) == 1:
        model, rest = rest[0], []
    if rest:
        raise RequestError(messages.STATS_USAGE)
    return model


class Statistics:
    """``/stats`` for every platform: who may, the figures, and the chart."""

    def __init__(
        self, credits: Credits, registry: Registry, credit_value_usd: Decimal = Decimal("0.02")
    ) -> None:
        self.credits = credits
        self.ledger = credits.ledger
        self.registry = registry
        self.credit_value_usd = credit_value_usd

    async def answer(self, actor: str, model: str | None = None) -> StatsAnswer:
        """The headline and chart of the last ``STATS_DAYS`` days, of one model or all.

        Refused with one sentence for anyone but an admin, and for a model that neither
        the registry nor the window's history knows.
        """
        window = await self.window(actor, model)
        if not window.headline.generations:
            return StatsAnswer(messages.no_stats(STATS_DAYS, window.model_id), None)
        png = await asyncio.to_thread(render_chart, window)
        return StatsAnswer(
            messages.stats_headline(
                STATS_DAYS,
                window.days[0],
                window.days[-1],
                window.model_id,
                window.headline,
                window.credit_value_usd,
            ),
            Chart(png, _chart_filename(window)),
        )

    async def window(self, actor: str, model: str | None = None) -> Window:
        """The figures of the last ``STATS_DAYS`` days, without drawing them."""
        if not self.credits.is_admin(actor):
            raise NotAdmin(messages.STATS_NOT_ADMIN)
        today = self.ledger.now().astimezone(UTC).date()
        days = tuple(today - timedelta(days=back) for back in range(STATS_DAYS - 1, -1, -1))
        report = await build_report(
            self.ledger.engine,
            since=datetime.combine(days[0], time.min, UTC),
            credit_value_usd=self.credit_value_usd,
        )
        model_id = None if model is None else self._model_id(model, report)
        usages = [usage for usage in report.models if model_id in (None, usage.model_id)]
        return Window(
            days=days,
            model_id=model_id,
            headline=_headline(report, usages),
            credits_by_model=_credits_by_day(report, usages, days),
            credit_value_usd=self.credit_value_usd,
        )

    def _model_id(self, typed: str, report: Report) -> str:
        """The registry's id for ``typed``; or one no longer in the registry that the window's
        history has, since its generations still count."""
        found = self.registry.get(typed)
        if found is not None:
            return found.id
        wanted = typed.strip().lower()
        if any(usage.model_id == wanted for usage in report.models):
            return wanted
        raise UnknownModel(typed, self.registry.closest_ids(typed))


def _headline(report: Report, usages: Sequence[ModelUsage]) -> Headline:
    credits = sum(usage.credits_charged for usage in usages)
    money = report.money(credits, sum(usage.provider_cost_microusd for usage in usages))
    return Headline(
        generations=sum(usage.generations for usage in usages),
        images=sum(usage.images_delivered for usage in usages),
        credits=credits,
        failed=sum(usage.failed for usage in usages),
        provider_cost_usd=Decimal(money["provider_cost_usd"]),
        revenue_usd=Decimal(money["revenue_usd"]),
        margin_usd=Decimal(money["margin_usd"]),
    )


def _credits_by_day(
    report: Report, usages: Sequence[ModelUsage], days: Sequence[date]
) -> dict[str, tuple[int, ...]]:
    # The report lists only the days a model charged on (or failed on); the chart wants all.
    index = {day: number for number, day in enumerate(days)}
    series = {usage.model_id: [0] * len(days) for usage in usages}
    for entry in report.daily:
        if entry.model_id in series and entry.day in index:
            series[entry.model_id][index[entry.day]] += entry.credits_charged
    return {model_id: tuple(credits) for model_id, credits in series.items()}


def _chart_filename(window: Window) -> str:
    scope = "" if window.model_id is None else f"-{window.model_id}"
    return f"stats-{window.days[-1]:%Y-%m-%d}{scope}.png"


def render_chart(window: Window) -> bytes:
    """The window's credits per day as stacked bars, one colour per model, as a PNG of
    ``CHART_PIXELS``. Blocks for a tenth of a second or more: call it in a worker thread."""
    # Imported here, in the worker thread: matplotlib and numpy take most of a second to
    # import, which neither the event loop nor every other CLI command should wait for.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with _RENDERING:
        figure = Figure(figsize=CHART_INCHES, dpi=CHART_DPI, layout="constrained")
        canvas = FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        positions = range(len(window.days))
        below = [0] * len(window.days)
        for model_id, credits in window.credits_by_model.items():
            axes.bar(
                positions,
                credits,
                bottom=below,
                label=model_id,
                width=0.8,
            )
            below = [base + added for base, added in zip(below, credits, strict=True)]
        # Every third day, counted back from today so that today is labelled.
        ticks = list(positions)[:: -max(1, len(window.days) // 10)][::-1]
        axes.set_xticks(ticks, [f"{window.days[tick]:%m-%d}" for tick in ticks])
        axes.set_xlim(-0.6, len(window.days) - 0.4)
        axes.set_ylabel(messages.STATS_CHART_AXIS)
        axes.yaxis.get_major_locator().set_params(integer=True)
        axes.grid(axis="y", alpha=0.3)
        axes.set_axisbelow(True)
        axes.set_title(messages.stats_chart_title(window.model_id, window.days[0], window.days[-1]))
        if window.model_id is None:
            figure.legend(loc="outside right upper", fontsize="small")
        buffer = io.BytesIO()
        canvas.print_png(buffer)
    return buffer.getvalue()
