"""Every error the bot shows a user, in one hierarchy.

Each carries the one sentence an adapter shows (``message``, written in
``bot.messages``). ``RequestError`` and its subclasses mean the input was bad
and nothing changed.

    ImagineError
    ├── RequestError            bad input: unknown model, bad option, empty prompt, bad account…
    ├── ModelUnusable           the model cannot take requests now; may carry an alternative's quote
    │   ├── ModelUnavailable    its provider has no key (or it is switched off); also a RequestError
    │   ├── ProviderOverBudget  the provider's monthly budget would be passed
    │   └── ProviderCircuitOpen the provider failed its last CIRCUIT_FAILURES generations
    ├── InsufficientCredits     the price is more than the available balance
    ├── CreditsOwed             the account owes credits taken back after a refund or dispute
    ├── TooManyQuotes           QUOTES_PER_MINUTE requests in the last minute already
    ├── AccountReferencesFull   the account's pending reference images would pass their limit
    ├── ReferenceStorageFull    everyone's pending reference images would pass their limit
    ├── QuoteNotFound           no such request id
    ├── QuoteExpired            the Generate button was pressed too late
    ├── NotYourRequest          someone else pressed the button
    ├── AlreadyHandled          the request was already confirmed or cancelled
    ├── ShuttingDown            the bot is stopping and takes no new requests
    ├── NotAdmin                an admin command by an account not in ADMIN_ACCOUNTS
    ├── UnknownAccount          an admin command named an account that never used the bot
    ├── RevokeExceedsBalance    a revoke of more than the account has available
    ├── IdempotencyKeyReused    a grant or revoke's key was used for a different change
    ├── RegistryUnusable        the models file failed validation
    ├── PricingUnusable         the pricing file failed validation
    └── DatabaseUnavailable     the database at DATABASE_URL could not be opened
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, ClassVar

from bot import messages

if TYPE_CHECKING:
    from bot.flow import Quote


class ImagineError(Exception):
    """Something the user must be told, in one sentence."""

    ends_the_request: ClassVar[bool] = False
    """When it refuses a button's click: True if the request itself is over (expired,
    unknown), so its message says so in place of the buttons. Otherwise only the clicker
    is told and the request stays as it was, for its owner to click again (after a grant
    that covers it, say)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestError(ImagineError, ValueError):
    """The input was not valid; nothing was changed."""


class InvalidAccount(RequestError):
    def __init__(self, text: str) -> None:
        super().__init__(messages.invalid_account(text))
        self.text = text


class InvalidAmount(RequestError):
    def __init__(self, text: str) -> None:
        super().__init__(messages.invalid_amount(text))


class ReasonTooLong(RequestError):
    def __init__(self, length: int) -> None:
        super().__init__(messages.reason_too_long(length))


class UnknownModel(RequestError):
    def __init__(self, model_id: str, suggestions: Sequence[str]) -> None:
        super().__init__(messages.unknown_model(model_id, suggestions))
        self.model_id = model_id
        self.suggestions = tuple(suggestions)


class ModelUnusable(ImagineError):
    """The model asked for cannot take a request now; ``reason`` says why, in a phrase.

    When another model can make the same request, the quote refused with this
    carries that model's quote, recorded and ready for its button, as
    ``alternative``, and ``message`` offers it. Nothing is switched: the
    alternative is generated only if its owner confirms it.
    """

    reason: str
    alternative: Quote | None = None

    def offer(self, sentence: str, alternative: Quote | None = None) -> None:
        """Say ``sentence`` instead, offering ``alternative`` (when it could be quoted)."""
        self.alternative = alternative
        self.message = sentence
        self.args = (sentence,)


class ModelUnavailable(RequestError, ModelUnusable):
    def __init__(self, model_id: str, reason: str) -> None:
        super().__init__(messages.model_unavailable(model_id, reason))
        self.model_id = model_id
        self.reason = reason


class InsufficientCredits(ImagineError):
    def __init__(self, need: int, have: int) -> None:
        super().__init__(messages.insufficient_credits(need, have))
        self.need = need
        self.have = have


class CreditsOwed(ImagineError):
    def __init__(self, owed: int) -> None:
        super().__init__(messages.credits_owed(owed))
        self.owed = owed


class ProviderOverBudget(ModelUnusable):
    def __init__(self, provider: str, budget: Decimal) -> None:
        super().__init__(messages.over_budget(provider, budget))
        self.provider = provider
        self.budget = budget
        self.reason = messages.over_budget_reason(provider, budget)


class ProviderCircuitOpen(ModelUnusable):
    def __init__(self, model_name: str, provider: str, failures: int) -> None:
        super().__init__(messages.circuit_open(model_name, failures))
        self.provider = provider
        self.failures = failures
        self.reason = messages.circuit_open_reason(failures)


class TooManyQuotes(ImagineError):
    def __init__(self, limit: int) -> None:
        super().__init__(messages.too_many_quotes(limit))
        self.limit = limit


class AccountReferencesFull(ImagineError):
    def __init__(self, pending_bytes: int, adding_bytes: int, limit_bytes: int) -> None:
        super().__init__(messages.account_references_full(pending_bytes, adding_bytes, limit_bytes))
        self.pending_bytes = pending_bytes
        self.adding_bytes = adding_bytes
        self.limit_bytes = limit_bytes


class ReferenceStorageFull(ImagineError):
    def __init__(self) -> None:
        super().__init__(messages.REFERENCE_STORAGE_FULL)


class QuoteNotFound(ImagineError):
    ends_the_request = True

    def __init__(self) -> None:
        super().__init__(messages.QUOTE_NOT_FOUND)


class QuoteExpired(ImagineError):
    ends_the_request = True

    def __init__(self) -> None:
        super().__init__(messages.QUOTE_EXPIRED)


class NotYourRequest(ImagineError):
    def __init__(self) -> None:
        super().__init__(messages.NOT_YOUR_REQUEST)


class AlreadyHandled(ImagineError):
    def __init__(self, status: str) -> None:
        super().__init__(messages.already_handled(status))
        self.status = status


class ShuttingDown(ImagineError):
    def __init__(self) -> None:
        super().__init__(messages.SHUTTING_DOWN)


class NotAdmin(ImagineError):
    def __init__(self, message: str = messages.NOT_ADMIN) -> None:
        super().__init__(message)


class UnknownAccount(ImagineError):
    def __init__(self, account: str) -> None:
        super().__init__(messages.unknown_account(account))
        self.account = account


class RevokeExceedsBalance(ImagineError):
    def __init__(self, amount: int, available: int) -> None:
        super().__init__(messages.revoke_exceeds_balance(amount, available))
        self.amount = amount
        self.available = available


class IdempotencyKeyReused(ImagineError):
    def __init__(self) -> None:
        super().__init__(messages.IDEMPOTENCY_KEY_REUSED)


class RegistryUnusable(ImagineError):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(messages.registry_unusable(problems))
        self.problems = tuple(problems)


class PricingUnusable(ImagineError):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(messages.pricing_unusable(problems))
        self.problems = tuple(problems)


class DatabaseUnavailable(ImagineError):
    def __init__(self, shown_url: str, error: BaseException) -> None:
        super().__init__(messages.database_unreachable(shown_url, error))


class DatabaseOutdated(ImagineError):
    def __init__(self, shown_url: str, current: str) -> None:
        super().__init__(messages.database_outdated(shown_url, current))


class DatabaseTooNew(ImagineError):
    def __init__(self, shown_url: str, current: str) -> None:
        super().__init__(messages.database_too_new(shown_url, current))
