"""Accounts and credits as chat sees them: balances, history, and admin grants and revokes."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import ledger
from bot import messages
from bot.accounts import parse_account
from bot.errors import (
    IdempotencyKeyReused,
    InvalidAmount,
    NotAdmin,
    ReasonTooLong,
    RequestError,
    RevokeExceedsBalance,
    UnknownAccount,
)
from bot.options import take_option
from bot.pricing import NO_ALLOWANCE, Allowance, period_bounds
from bot.when import parse_expiry
from ledger import Balance, Generation, Ledger, LotKind, StatementLine

MAX_GRANT = 1_000_000_000
_WHOLE_NUMBER = re.compile(r"[0-9]+|[0-9]{1,3}(?:,[0-9]{3})+|[0-9]{1,3}(?:_[0-9]{3})+")
"""Plain ASCII digits, or grouped in thousands by commas or underscores: never "1,5"."""


class Credits:
    """Every credit rule that is not part of generating: who may grant, and what a grant is."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        admins: frozenset[str] = frozenset(),
        starting_credits: int = 0,
        allowance: Allowance = NO_ALLOWANCE,
    ) -> None:
        self.ledger = ledger
        self.admins = admins
        self.starting_credits = starting_credits
        self.allowance = allowance
        self._topped_up: tuple[datetime | None, set[str]] = (None, set())
        """The period this process last topped up in, and the accounts it has seen get that
        period's allowance: a command then needs no write to learn it. Another process's grant
        is found by its idempotency key."""

    def is_admin(self, account: str) -> bool:
        return account in self.admins

    async def open_account(self, account: str, *, welcome_credits: int = 0) -> Balance:
        """Make sure the account exists (with its starting credits); grant a one-time welcome."""
        balance = await self.ledger.ensure_account(account, starting_credits=self.starting_credits)
        if welcome_credits > 0:
            try:
                balance = await self.ledger.grant(
                    account,
                    welcome_credits,
                    actor="system",
                    reason="welcome credits",
                    idempotency_key=f"welcome:{account}",
                )
            except ledger.IdempotencyConflict:
                # Welcomed already, with another amount: the setting changed since.
                balance = await self.ledger.balance(account)
        return balance

    async def top_up_allowance(self, account: str, roles: Collection[str] = ()) -> None:
        """Grant this period's free credits if the account has not had them yet.

        One ``allowance`` lot per account and period, whichever process grants it (the key
        names both), expiring at the period's end, so allowances never accumulate.
        ``roles``: the member's Discord role ids, for ``[allowance.discord_roles]``.
        """
        amount = self.allowance.credits_for(roles)
        if amount <= 0:
            return
        start, end = period_bounds(self.allowance.period, self.ledger.now())
        period, accounts = self._topped_up
        if period != start:
            accounts = set()
            self._topped_up = (start, accounts)
        if account in accounts:
            return
        await self.ledger.ensure_account(account, starting_credits=self.starting_credits)
        # Granted already with another amount (a role changed): the first one stands.
        with contextlib.suppress(ledger.IdempotencyConflict):
            await self.ledger.grant(
                account,
                amount,
                actor="system",
                reason=f"free credits for the {self.allowance.period} from {start:%Y-%m-%d}",
                idempotency_key=f"allowance:{account}:{start:%Y-%m-%d}",
                kind=LotKind.ALLOWANCE,
                expires_at=end,
            )
        accounts.add(account)

    async def balance(self, account: str, roles: Collection[str] = ()) -> Balance:
        await self.top_up_allowance(account, roles)
        return await self.open_account(account)

    async def own_statement(self, account: str, *, last: int | None = None) -> list[StatementLine]:
        """The account's statement (``Ledger.statement``), its ``last`` lines if given."""
        await self.open_account(account)
        lines = await self.ledger.statement(account)
        return lines if last is None else lines[-last:]

    async def history(self, account: str, limit: int = 5) -> list[Generation]:
        return await self.ledger.history(account, limit=limit)

    async def history_entries(self, account: str) -> list[Generation]:
        """``/history``: the account's last generations, each with where it was posted."""
        return await self.history(account, limit=messages.HISTORY_LENGTH)

    async def auto_confirm_under(self, account: str) -> int:
        """The price at or under which the account's quotes generate without a button (0: never)."""
        return await self.ledger.auto_confirm_under(account)

    async def settings(self, account: str, auto_confirm_under: int | str | None = None) -> str:
        """``/settings``: change what was given (checked first, so a bad value changes
        nothing), then say what the settings are."""
        if auto_confirm_under is not None:
            await self.ledger.set_auto_confirm_under(
                account, parse_auto_confirm(auto_confirm_under)
            )
        return messages.auto_confirm_setting(await self.auto_confirm_under(account))

    async def statement(self, account: str, roles: Collection[str] = ()) -> str:
        """The balance and recent generations, as the one message every platform shows."""
        balance = await self.balance(account, roles)
        recent = await self.history(account)
        amount = self.allowance.credits_for(roles)
        renewal = None
        if amount > 0:
            renews = period_bounds(self.allowance.period, self.ledger.now())[1]
            renewal = messages.allowance_renewal(amount, self.allowance.period, renews)
        return messages.credits_statement(balance, recent, renewal)

    async def adjust(
        self,
        action: str,
        actor: str,
        target: str,
        amount: int | str,
        reason: str = "",
        *,
        expires: str | None = None,
        shown_as: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """``grant`` or ``revoke``, and the sentence reporting the target's new balance.

        ``expires``: when granted credits expire, as the admin typed it
        (``parse_expiry``); a revoke takes none. ``shown_as`` names the target
        the way the platform does (a mention); by default, its account id.
        ``idempotency_key``: the platform's id of the command, so that the same
        command delivered twice changes the balance once; by default, a new key
        each time.
        """
        # Who may, and what was typed, before the expiry: a stranger's typo gets NOT_ADMIN.
        self._admin_arguments(actor, target, amount, reason)
        if action != "grant":
            if expires is not None:
                raise RequestError(messages.EXPIRY_ON_REVOKE)
            balance = await self.revoke(actor, target, amount, reason, idempotency_key)
            return messages.revoked(
                shown_as or balance.account, parse_amount(amount), balance.available
            )
        expires_at = None if expires is None else parse_expiry(expires, self.ledger.now())
        balance = await self.grant(
            actor, target, amount, reason, idempotency_key, expires_at=expires_at
        )
        return messages.granted(
            shown_as or balance.account, parse_amount(amount), balance.available, expires_at
        )

    async def existing_balance(self, account: str) -> Balance:
        """The balance of an account that must already exist (admin look-ups)."""
        try:
            return await self.ledger.balance(parse_account(account))
        except ledger.AccountNotFound:
            raise UnknownAccount(account) from None

    async def grant(
        self,
        actor: str,
        target: str,
        amount: int | str,
        reason: str = "",
        idempotency_key: str | None = None,
        *,
        expires_at: datetime | None = None,
    ) -> Balance:
        """Add credits to ``target`` (creating the account if new) as a ``promo`` lot, expiring
        at ``expires_at`` if given; only admins may."""
        account, credits = self._admin_arguments(actor, target, amount, reason)
        await self.open_account(account)
        try:
            return await self.ledger.grant(
                account,
                credits,
                actor=actor,
                reason=reason or "granted by an admin",
                idempotency_key=idempotency_key or f"grant:{uuid.uuid4()}",
                kind=LotKind.PROMO,
                expires_at=expires_at,
            )
        except ledger.IdempotencyConflict:
            raise IdempotencyKeyReused() from None

    async def revoke(
        self,
        actor: str,
        target: str,
        amount: int | str,
        reason: str = "",
        idempotency_key: str | None = None,
    ) -> Balance:
        """Take available credits back from ``target``; only admins may."""
        account, credits = self._admin_arguments(actor, target, amount, reason)
        try:
            return await self.ledger.revoke(
                account,
                credits,
                actor=actor,
                reason=reason or "revoked by an admin",
                idempotency_key=idempotency_key or f"revoke:{uuid.uuid4()}",
            )
        except ledger.AccountNotFound:
            raise UnknownAccount(account) from None
        except ledger.InsufficientFunds as refusal:
            raise RevokeExceedsBalance(credits, refusal.available) from None
        except ledger.IdempotencyConflict:
            raise IdempotencyKeyReused() from None

    def _admin_arguments(
        self, actor: str, target: str, amount: int | str, reason: str
    ) -> tuple[str, int]:
        if not self.is_admin(actor):
            raise NotAdmin()
        if len(reason) > messages.REASON_MAX_CHARS:
            raise ReasonTooLong(len(reason))
        return parse_account(target), parse_amount(amount)


def parse_amount(amount: int | str) -> int:
    """A positive whole number of credits, from what a user typed."""
    text = str(amount).strip()
    if not _WHOLE_NUMBER.fullmatch(text):
        raise InvalidAmount(str(amount))
    credits = int(text.replace(",", "").replace("_", ""))
    if not 0 < credits <= MAX_GRANT:
        raise InvalidAmount(str(amount))
    return credits


def parse_auto_confirm(value: int | str) -> int:
    """A limit for auto-confirm: a whole number of credits from 0 (always ask) up."""
    text = str(value).strip()
    if not _WHOLE_NUMBER.fullmatch(text):
        raise RequestError(messages.bad_auto_confirm(str(value)))
    under = int(text.replace(",", "").replace("_", ""))
    if under > messages.AUTO_CONFIRM_MAX:
        raise RequestError(messages.bad_auto_confirm(str(value)))
    return under


def parse_settings(text: str) -> int | str | None:
    """The value of ``auto_confirm_under:N`` in the text form (console, Slack); None if not
    given; any other word is refused with the usage."""
    value, rest = take_option(text.split(), "auto_confirm_under")
    if rest:
        raise RequestError(messages.AUTO_CONFIRM_USAGE)
    return value


@dataclass(frozen=True)
class Adjustment:
    """A grant or revoke as an admin typed it; checking it is ``Credits.adjust``'s."""

    target: str
    amount: str
    expires: str | None
    reason: str


def parse_adjustment(words: Sequence[str], usage: str) -> Adjustment:
    """The words after ``grant`` or ``revoke`` in the text form the console and Slack share:

        ACCOUNT AMOUNT [expires:7d|expires:2027-01-01] [REASON…]

    ``expires:`` may come anywhere after the amount. Fewer words are refused with
    ``usage``; the account word is left as typed, for the adapter to translate (a
    Slack mention, say).
    """
    if len(words) < 2:
        raise RequestError(usage)
    target, amount, *rest = words
    expires, reason = take_option(rest, "expires")
    return Adjustment(target, amount, expires, " ".join(reason))
