"""Admins' price overrides: set, list and clear an account's own price, checked once for every
surface (the CLI's ``price`` commands, chat's admin commands).

What an override does to a price is ``bot.pricing.price``; this module only
decides whether a change is allowed and well-formed, and words the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from bot import messages
from bot.accounts import parse_account
from bot.credits import Credits, parse_amount
from bot.errors import NotAdmin, ReasonTooLong, RequestError, UnknownModel
from bot.registry import Registry
from ledger import utc_now


class PriceAdmin:
    """Price overrides as admins change them; every refusal is one sentence, nothing changed."""

    def __init__(
        self, credits: Credits, registry: Registry, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.credits = credits
        self.ledger = credits.ledger
        self.registry = registry
        self._clock = clock

    async def set_price(
        self,
        actor: str,
        target: str,
        *,
        model: str | None,
        credits_per_image: str | None,
        percent_off: str | None,
        until: str | None,
        reason: str,
    ) -> str:
        """A fixed price per image for ``model``, or ``percent_off`` every model (not both),
        replacing the account's rule of the same scope; the sentence saying what changed."""
        self._require_admin(actor)
        account = parse_account(target)
        if len(reason) > messages.REASON_MAX_CHARS:
            raise ReasonTooLong(len(reason))
        if not reason.strip():
            raise RequestError(messages.PRICE_REASON_NEEDED)
        ends = None if until is None else parse_until(until, self._clock())
        if percent_off is not None:
            if model is not None or credits_per_image is not None:
                raise RequestError(messages.PRICE_ONE_RULE)
            percent = parse_percent(percent_off)
            await self.ledger.set_price_override(
                account, model_id=None, percent_off=percent, until=ends, actor=actor, reason=reason
            )
            return messages.percent_off_set(account, percent, ends)
        if model is None or credits_per_image is None:
            raise RequestError(messages.PRICE_ONE_RULE)
        model_id = self._model_id(model)
        price = parse_amount(credits_per_image)
        await self.ledger.set_price_override(
            account,
            model_id=model_id,
            credits_per_image=price,
            until=ends,
            actor=actor,
            reason=reason,
        )
        return messages.model_price_set(account, model_id, price, ends)

    async def list_prices(self, actor: str, target: str | None) -> str:
        """Every override of ``target`` (everyone's if None), expired ones marked."""
        self._require_admin(actor)
        account = None if target is None else parse_account(target)
        overrides = await self.ledger.price_overrides(account)
        if not overrides:
            return messages.no_price_overrides(account)
        now = self._clock()
        return "\n".join(messages.price_override_line(o, o.in_force(now)) for o in overrides)

    async def clear_prices(self, actor: str, target: str, model: str | None) -> str:
        """Remove the account's override for ``model``, or every override it has."""
        self._require_admin(actor)
        account = parse_account(target)
        # An id no longer in the registry may still have a rule to clear: only its form is checked.
        model_id = None if model is None else model.strip().lower()
        cleared = await self.ledger.clear_price_overrides(account, model_id)
        return messages.price_overrides_cleared(account, model_id, cleared)

    def _require_admin(self, actor: str) -> None:
        if not self.credits.is_admin(actor):
            raise NotAdmin()

    def _model_id(self, model: str) -> str:
        found = self.registry.get(model)
        if found is None:
            raise UnknownModel(model, self.registry.closest_ids(model))
        return found.id


def parse_percent(text: str) -> int:
    """A whole percent from 1 to 100."""
    stripped = text.strip().removesuffix("%")
    if not (stripped.isascii() and stripped.isdigit()) or not 1 <= int(stripped) <= 100:
        raise RequestError(messages.bad_percent(text))
    return int(stripped)


def parse_until(text: str, now: datetime) -> datetime:
    """An ISO 8601 date or time, UTC unless it gives an offset, that is still to come.

    A date alone is the start of that day, UTC.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RequestError(messages.bad_date(text)) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= now:
        raise RequestError(messages.date_in_the_past(when))
    return when.astimezone(UTC)
