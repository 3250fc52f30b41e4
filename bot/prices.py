"""Admins' price overrides: set, list and clear an account's own price, checked once for every
surface (the CLI's ``price`` commands, chat's admin commands).

What an override does to a price is ``bot.pricing.price``; this module only
decides whether a change is allowed and well-formed, and words the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bot import messages
from bot.accounts import parse_account
from bot.credits import Credits, parse_amount
from bot.errors import NotAdmin, ReasonTooLong, RequestError, UnknownModel
from bot.options import take_option
from bot.registry import Registry
from bot.when import parse_until
from ledger import utc_now


@dataclass(frozen=True)
class PriceCommand:
    """One price command, its values as the admin gave them: checking them is ``PriceAdmin``'s.

    ``account`` is None only for a ``list`` of everyone's overrides.
    """

    action: str
    """``set``, ``list`` or ``clear``."""
    account: str | None
    model: str | None = None
    credits_per_image: str | None = None
    percent_off: str | None = None
    until: str | None = None
    reason: str = ""


def parse_price_command(text: str, usage: str) -> PriceCommand:
    """The text form the console's ``/price`` and Slack's ``/credits price`` share:

        set ACCOUNT MODEL CREDITS [until:DATE] REASON…
        set ACCOUNT N% [until:DATE] REASON…
        list [ACCOUNT]
        clear ACCOUNT [MODEL]

    A command of another shape is refused with ``usage``. The account word is
    left as typed, for the adapter to translate (a Slack mention, say).
    """
    action, *rest = text.split() or [""]
    action = action.lower()
    if action == "list" and len(rest) <= 1:
        return PriceCommand("list", rest[0] if rest else None)
    if action == "clear" and 1 <= len(rest) <= 2:
        return PriceCommand("clear", rest[0], model=rest[1] if len(rest) == 2 else None)
    if action != "set" or len(rest) < 2:
        raise RequestError(usage)
    account, *terms = rest
    until, terms = take_option(terms, "until")
    if terms and terms[0].endswith("%"):
        return PriceCommand(
            "set", account, percent_off=terms[0], until=until, reason=" ".join(terms[1:])
        )
    if len(terms) < 2:
        raise RequestError(usage)
    model, credits_per_image, *reason = terms
    return PriceCommand(
        "set",
        account,
        model=model,
        credits_per_image=credits_per_image,
        until=until,
        reason=" ".join(reason),
    )


def _as_is(account: str) -> str:
    """An account shown as its id: how the CLI and the console name people."""
    return account


class PriceAdmin:
    """Price overrides as admins change them; every refusal is one sentence, nothing changed."""

    def __init__(
        self, credits: Credits, registry: Registry, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.credits = credits
        self.ledger = credits.ledger
        self.registry = registry
        self._clock = clock

    async def run(
        self, actor: str, command: PriceCommand, *, name: Callable[[str], str] = _as_is
    ) -> str:
        """Carry out a command from chat; the sentence saying what changed or what is there.

        ``name`` shows an account the way the platform shows the person (a mention);
        by default, as its id.
        """
        if command.action == "list":
            return await self.list_prices(actor, command.account, name=name)
        # Only a list may leave the account out: an empty one is refused as no account.
        target = command.account or ""
        if command.action == "clear":
            return await self.clear_prices(actor, target, command.model, name=name)
        return await self.set_price(
            actor,
            target,
            model=command.model,
            credits_per_image=command.credits_per_image,
            percent_off=command.percent_off,
            until=command.until,
            reason=command.reason,
            name=name,
        )

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
        name: Callable[[str], str] = _as_is,
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
            return messages.percent_off_set(name(account), percent, ends)
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
        return messages.model_price_set(name(account), model_id, price, ends)

    async def list_prices(
        self, actor: str, target: str | None, *, name: Callable[[str], str] = _as_is
    ) -> str:
        """Every override of ``target`` (everyone's if None), expired ones marked."""
        self._require_admin(actor)
        account = None if target is None else parse_account(target)
        overrides = await self.ledger.price_overrides(account)
        if not overrides:
            return messages.no_price_overrides(None if account is None else name(account))
        now = self._clock()
        return "\n".join(
            messages.price_override_line(o, o.in_force(now), name=name) for o in overrides
        )

    async def clear_prices(
        self,
        actor: str,
        target: str,
        model: str | None,
        *,
        name: Callable[[str], str] = _as_is,
    ) -> str:
        """Remove the account's override for ``model``, or every override it has."""
        self._require_admin(actor)
        account = parse_account(target)
        # An id no longer in the registry may still have a rule to clear: only its form is checked.
        model_id = None if model is None else model.strip().lower()
        cleared = await self.ledger.clear_price_overrides(account, model_id)
        return messages.price_overrides_cleared(name(account), model_id, cleared)

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
