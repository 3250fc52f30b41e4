"""The imagine flow, the same for every platform: quote → confirm → generate → deliver → settle.

Adapters translate their platform's events into calls on ``ImagineService`` and
render what comes back; no credit or validation rule lives in an adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import partial
from typing import Any, Protocol, TypeVar

import ledger
from bot import messages
from bot.budgets import Budgets
from bot.catalog import ModelCatalog, ProviderPool
from bot.circuits import Circuits, judge_error, judge_result
from bot.credits import Credits
from bot.errors import (
    AccountReferencesFull,
    AlreadyHandled,
    CreditsOwed,
    ImagineError,
    InsufficientCredits,
    ModelUnavailable,
    ModelUnusable,
    NotYourRequest,
    ProviderCircuitOpen,
    QuoteExpired,
    QuoteNotFound,
    ReferenceStorageFull,
    RequestError,
    ShuttingDown,
    TooManyQuotes,
)
from bot.images import compare_grid
from bot.observability import HealthCheck, Metrics
from bot.parsing import (
    CompareOptions,
    CompareRequest,
    ImagineOptions,
    ImagineRequest,
    validate_compare,
    validate_request,
)
from bot.pricing import NO_PRICING, Price, Pricing, price
from bot.progress import Delivering, Generating, ProgressEvent, Queued
from bot.purchases import Purchases, StripeConfig
from bot.registry import ModelSpec
from bot.stats import Statistics
from bot.subjects import Subjects
from ledger import (
    Balance,
    Generation,
    GenerationStatus,
    NewGeneration,
    PriceOverride,
    QuoteLimits,
    QuoteReference,
)
from ledger.rules import delivered_charge
from ledger.values import PRICE_OPTION
from providers.base import GeneratedImage, ImageRequest, ReferenceImage
from providers.calls import AttemptLog, CallOutcome, recording_attempts
from providers.errors import ProviderError, ProviderTimeout, ProviderUnavailable

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
T = TypeVar("T")


class DeliveryFailed(Exception):
    """The adapter could not post (all) the images; its text says why, for the user.

    What had reached the user before the failure is in ``PostedImages``, and is charged.
    """


class PostedImages:
    """The images of one delivery that reached the user, counted by the adapter as each part lands.

    The flow reads it however ``deliver`` ends (returned, raised, cancelled by a
    shutdown), so images already in front of the user are charged, never given
    away, and the ones that never arrived are never charged.
    """

    def __init__(self, offered: Sequence[GeneratedImage]) -> None:
        self.offered = tuple(offered)
        self._landed = 0
        self.link: str | None = None
        """Where the images can be seen again (a message's URL, a file's path), for /history."""

    def landed(self, count: int, link: str | None = None) -> None:
        """``count`` more images are in front of the user (a message posted, a file shared);
        ``link``: where, if it is the first part known to have landed."""
        self._landed = min(self._landed + count, len(self.offered))
        if self.link is None and link is not None and len(link) <= LINK_MAX_CHARS:
            self.link = link

    @property
    def images(self) -> tuple[GeneratedImage, ...]:
        return self.offered[: self._landed]


LINK_MAX_CHARS = 500
"""As ``generations.posted_link`` holds; a longer link is not kept, since a cut one leads nowhere."""

COMPARE_GRID_SUFFIX = "-compare"
"""Ends the id a /compare's grid is delivered under: no generation of its own."""

AUTO_CONFIRM_OPTION = "auto_confirm_under"
"""The option under which a quote records the account's limit it was confirmed under, without
a button: the outcome, told maybe by another process, says so with the cost."""


class Delivery(Protocol):
    """What an adapter gives the flow so it can show progress and hand over images."""

    async def progress(self, event: ProgressEvent) -> None: ...

    async def deliver(
        self, images: Sequence[GeneratedImage], generation: Generation, posted: PostedImages
    ) -> None:
        """Post the images, calling ``posted.landed`` as each part reaches the user.

        Raises ``DeliveryFailed`` if some could not be posted. Where a step's
        outcome is unknown (a timeout or a reset after the request may have
        reached the platform, a cancellation mid-upload), the adapter asks the
        platform what arrived before it reports or raises.
        """
        ...

    async def conclude(self, report: str) -> None:
        """Show how the request ended (``Outcome.report``): the last thing the user is told."""
        ...


@dataclass(frozen=True)
class Quote:
    """A priced request waiting for its Generate button."""

    generation: Generation
    request: ImagineRequest
    balance: Balance
    breakdown: Price
    """How the price was made: list price, the account's own price, batch discount."""
    instead_of: str | None = None
    """The id of the model that could not be used now, when offered in its place
    (``ModelUnusable.alternative``)."""

    @property
    def id(self) -> str:
        return self.generation.id

    @property
    def button(self) -> str:
        """The label of its Generate button."""
        if self.instead_of is not None:
            return messages.try_button(self.request.model.display_name, self.price)
        return messages.generate_button(self.request.count, self.price)

    @property
    def question(self) -> str:
        """The Generate button as a question, where the answer is typed (the console)."""
        if self.instead_of is not None:
            return messages.try_question(self.request.model.display_name, self.price)
        return f"{self.button}?"

    @property
    def price(self) -> int:
        return self.generation.price

    @property
    def confirms_itself(self) -> bool:
        """At or under the account's auto-confirm limit: the adapter confirms it at once, as
        the Generate button would, instead of showing the button."""
        return AUTO_CONFIRM_OPTION in self.generation.options

    @property
    def summary(self) -> str:
        """What an adapter shows above the Generate button: the request, its price, the balance."""
        return messages.quote_summary(
            self.request.model.display_name,
            self.request.count,
            self.request.resolution,
            self.request.aspect_ratio,
            self.breakdown,
            self.balance.available,
        )


@dataclass(frozen=True)
class PriceSheet:
    """An account's prices and balance, read once, for pricing several choices while a
    command is typed (Discord's autocomplete): it holds and records nothing."""

    available: int
    overrides: tuple[PriceOverride, ...]
    pricing: Pricing
    now: datetime

    def price(self, model: ModelSpec, count: int, resolution: str) -> Price:
        return _price_of(model, count, resolution, self.pricing, self.overrides, self.now)


@dataclass(frozen=True)
class Estimate:
    """A request priced for an account as its quote would be, with no quote recorded:
    no button, nothing held (``/imagine price …``)."""

    request: ImagineRequest
    breakdown: Price
    available: int

    @property
    def summary(self) -> str:
        return messages.estimate_summary(
            messages.quote_summary(
                self.request.model.display_name,
                self.request.count,
                self.request.resolution,
                self.request.aspect_ratio,
                self.breakdown,
                self.available,
            )
        )


def _price_of(
    model: ModelSpec,
    count: int,
    resolution: str,
    pricing: Pricing,
    overrides: Sequence[PriceOverride],
    now: datetime,
) -> Price:
    return price(
        model.credits_for(resolution),
        count,
        batch=pricing.discounts_for(model.batch_discounts),
        overrides=overrides,
        model_id=model.id,
        now=now,
    )


def charged_for(generation: Generation, images: int) -> int:
    """What ``images`` of the generation's images cost, as its settlement will charge them."""
    return delivered_charge(generation.price, generation.images_requested, images)


@dataclass(frozen=True)
class HeldGeneration:
    """A confirmed request whose credits are held, ready to generate."""

    generation: Generation


@dataclass(frozen=True)
class Outcome:
    """How a confirmed generation ended: the settled record, the images delivered, the new balance."""

    generation: Generation
    """Settled, unless the database could not be reached to settle it (a background retry will)."""
    images: tuple[GeneratedImage, ...]
    balance: Balance | None
    """None when the database could not be reached to read it."""
    message: str
    """One sentence for the user: what happened and what it cost."""

    @property
    def report(self) -> str:
        """What an adapter shows when the generation ends: the sentence, then the balance."""
        return messages.outcome_report(self.message, self.balance)


COMPARE_SEPARATOR = ","
"""Joins the generation ids of a /compare into the one id its Generate button carries."""


@dataclass(frozen=True)
class CompareQuote:
    """A /compare waiting for its one Generate button: one quote per model, priced together."""

    quotes: tuple[Quote, ...]
    balance: Balance

    @property
    def id(self) -> str:
        return COMPARE_SEPARATOR.join(quote.id for quote in self.quotes)

    @property
    def price(self) -> int:
        return sum(quote.price for quote in self.quotes)

    @property
    def button(self) -> str:
        return messages.compare_button(len(self.quotes), self.price)

    @property
    def question(self) -> str:
        return f"{self.button}?"

    @property
    def summary(self) -> str:
        first = self.quotes[0].request
        return messages.compare_summary(
            [(quote.request.model.display_name, quote.breakdown) for quote in self.quotes],
            first.resolution,
            first.aspect_ratio,
            self.price,
            self.balance.available,
        )


@dataclass(frozen=True)
class CompareOutcome:
    """How a /compare ended: each model's own outcome, settled on its own."""

    outcomes: tuple[Outcome, ...]
    grid: GeneratedImage | None
    """The labelled grid posted before the originals; None when no model made an image."""
    labels: tuple[str, ...]
    """Each cell's label, as drawn on the grid."""
    balance: Balance | None
    """Read once every model had settled; None when the database could not be reached."""

    @property
    def charged(self) -> int:
        return sum(outcome.generation.credits_charged for outcome in self.outcomes)

    @property
    def report(self) -> str:
        return messages.compare_report(
            [
                (
                    str(outcome.generation.options.get("model_name", outcome.generation.model_id)),
                    outcome.message,
                )
                for outcome in self.outcomes
            ],
            self.charged,
            self.balance,
        )


@dataclass(frozen=True)
class Retry:
    """How long the flow keeps the user waiting while it records an outcome the database did not take.

    An outage, a dropped connection or a long wait for a pooled connection must
    not turn images already posted into images given away, nor leave the user
    without an outcome. Only such failures are tried again (``ledger.transient``),
    which is safe because settling twice returns the first settlement; a
    refusal or a bug fails at once. Past ``give_up_after_seconds`` the user is
    told, and the settlement goes on in the background with the same waits.
    """

    first_wait_seconds: float = 0.5
    longest_wait_seconds: float = 10.0
    give_up_after_seconds: float = 120.0

    async def run(
        self,
        operation: Callable[[], Awaitable[T]],
        what: str,
        on_retry: Callable[[], object] | None = None,
    ) -> T:
        give_up_at = time.monotonic() + self.give_up_after_seconds
        wait = self.first_wait_seconds
        while True:
            try:
                return await operation()
            except Exception as error:
                if not ledger.transient(error) or time.monotonic() + wait > give_up_at:
                    raise
                logger.warning("could not %s; trying again in %.1f s", what, wait, exc_info=True)
                if on_retry is not None:
                    on_retry()
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.longest_wait_seconds)


_ONE_TRY = Retry(give_up_after_seconds=0)


_PROVIDER_GRACE_SECONDS = 5.0
DELIVERY_ALLOWANCE_SECONDS = 60.0
"""What a generation keeps of its reply window, past the provider's time, to post its images."""
_CONCLUDE_WHEN_STOPPING_SECONDS = 5.0
"""How long a shutdown waits to tell the user of a generation it cut short."""
_LEASE_IN_HEARTBEATS = 3
"""A hold's lease lasts three renewals: a process that misses them has stopped answering for it."""
SLOT_POLL_SECONDS = 0.25
"""How often a process asks PostgreSQL again for a slot its first waiter is in line for: a slot
another process frees is noticed within this (one this process frees, at once)."""
MEGABYTE = 1_048_576
DEFAULT_QUOTE_LIMITS = QuoteLimits(
    reference_bytes_per_account=40 * MEGABYTE,
    reference_bytes_total=1000 * MEGABYTE,
    quotes_per_minute=10,
)
"""As the settings' defaults (``REFERENCE_STORAGE_MB_PER_ACCOUNT`` and the others)."""
DEFAULT_SUBJECT_BYTES = 50 * MEGABYTE
"""As the settings' default ``SUBJECT_STORAGE_MB``."""


class ImagineService:
    """The service layer every adapter calls."""

    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        providers: ProviderPool,
        credits: Credits,
        pricing: Pricing = NO_PRICING,
        quote_ttl: timedelta = timedelta(minutes=10),
        generation_timeout: timedelta = timedelta(minutes=3),
        provider_concurrency: int = 4,
        provider_limits: Mapping[str, int] | None = None,
        user_concurrency: int = 2,
        heartbeat_interval: timedelta = timedelta(minutes=1),
        quote_limits: QuoteLimits = DEFAULT_QUOTE_LIMITS,
        subject_bytes_per_account: int = DEFAULT_SUBJECT_BYTES,
        settle_retry: Retry = Retry(),
        clock: Clock = ledger.utc_now,
        stripe_config: StripeConfig | None = None,
        allow_test_purchases: bool = False,
        credit_value_usd: Decimal = Decimal("0.02"),
        circuit_failures: int = 5,
        circuit_cooldown: timedelta = timedelta(seconds=60),
    ) -> None:
        self.catalog = catalog
        self.providers = providers
        self.credits = credits
        self.ledger = credits.ledger
        self.pricing = pricing
        self.quote_ttl = quote_ttl
        self.generation_timeout = generation_timeout
        self.heartbeat_interval = heartbeat_interval
        """How often this process renews the leases of its generations and sweeps abandoned ones."""
        self.quote_limits = quote_limits
        self.settle_retry = settle_retry
        self._clock = clock
        limits = provider_limits or {}
        self._slots = {
            name: self._new_slots(f"provider:{name}", limits.get(name, provider_concurrency))
            for name in providers.providers
        }
        # One heavy user must not take every provider slot: each has a few of their own.
        self._user_concurrency = user_concurrency
        self._user_slots: dict[str, Slots] = {}
        self._in_flight: set[str] = set()
        self._posted: dict[str, PostedImages] = {}
        """What each delivery under way has put in front of the user, until it is settled."""
        self._settling: dict[str, asyncio.Task[None]] = {}
        """Settlements the database did not take in time, retried in the background, by generation."""
        self._idle = asyncio.Event()
        self._idle.set()
        self.accepting = True
        self.metrics = Metrics()
        self.metrics.in_flight.set_function(lambda: len(self._in_flight))
        self.metrics.settlements_pending.set_function(lambda: len(self._settling))
        for name, slots in self._slots.items():
            self.metrics.queue_depth.labels(name).set_function(lambda slots=slots: slots.waiting)
        self.platform_checks: dict[str, HealthCheck] = {}
        """Adapters add ``name → is connected`` here for ``/readyz``."""
        self.budgets = Budgets(self.ledger, pricing.budgets, self.metrics, clock=clock)
        self.circuits = Circuits(
            providers.providers, failures=circuit_failures, cooldown=circuit_cooldown, clock=clock
        )
        """Each provider's circuit breaker; ``circuits.states()`` for the dashboard."""
        for name in providers.providers:
            self.metrics.circuit_open.labels(name).set_function(
                lambda name=name: 0 if self.circuits.closed(name) else 1
            )
        self.purchases = Purchases(
            self.ledger,
            pricing.packs,
            self.metrics,
            stripe_config=stripe_config,
            allow_test_purchases=allow_test_purchases,
            clock=clock,
        )
        self.stats = Statistics(credits, catalog.registry, credit_value_usd)
        """Admins' /stats: the last 30 days' figures and chart."""
        self.subjects = Subjects(self.ledger, subject_bytes_per_account)
        """Each account's saved sets of reference images (/subject)."""

    async def compare_request(self, account: str, options: CompareOptions) -> CompareRequest:
        """``options`` as ``account`` typed them for /compare, every model's request with their
        subject's images added, validated."""
        with_subject = await self.subjects.added_to(
            account, ImagineOptions(subject=options.subject)
        )
        return validate_compare(
            options.models,
            options.prompt,
            options.resolution,
            options.aspect,
            self.catalog,
            references=with_subject.reference_images,
        )

    async def request(self, account: str, options: ImagineOptions) -> ImagineRequest:
        """``options`` as ``account`` typed them, with their subject's images added, validated:
        every adapter's way from what was typed to a request ready to quote."""
        return validate_request(await self.subjects.added_to(account, options), self.catalog)

    async def quote(
        self,
        account: str,
        request: ImagineRequest,
        *,
        channel: str | None = None,
        roles: Collection[str] = (),
    ) -> Quote:
        """Price a validated request against the balance and record it with its reference images.

        Refuses before any button if it cannot be paid, or would pass ``quote_limits``.
        ``roles``: the member's Discord role ids, for the free allowance.

        A model that cannot be used now (no API key, its provider's circuit open,
        its provider's budget used up) raises ``ModelUnusable`` naming the cause.
        If another provider's model can make the same request, that model's quote
        is recorded, as any quote is, and carried as ``alternative``: its button
        is the ordinary confirm, and nothing is switched unless it is clicked.
        """
        if not self.accepting:
            raise ShuttingDown()
        try:
            await self._require_usable(request)
        except ModelUnusable as unusable:
            await self._offer_alternative(unusable, account, request, channel=channel, roles=roles)
            raise
        return await self._open_quote(account, request, channel=channel, roles=roles)

    async def _require_usable(self, request: ImagineRequest) -> None:
        """Raise why ``request``'s model cannot take it now.

        The circuit is asked last: past its cool-down, the request it lets
        through is the provider's one trial, and must not be refused after.
        """
        model = request.model
        reason = self.catalog.reason_unavailable(model)
        if reason is not None:
            raise ModelUnavailable(model.id, reason)
        cost_per_image = microusd(model.cost_for(request.resolution))
        await self.budgets.check(model.provider, request.count, cost_per_image)
        if not self.circuits.admit(model.provider):
            raise ProviderCircuitOpen(
                model.display_name, model.provider, self.circuits.failures_of(model.provider)
            )

    async def _offer_alternative(
        self,
        unusable: ModelUnusable,
        account: str,
        request: ImagineRequest,
        *,
        channel: str | None,
        roles: Collection[str],
    ) -> None:
        """Give ``unusable`` the quote of the model that can make ``request`` instead, if any."""
        alternative = await self._alternative(account, request)
        if alternative is None:
            return
        wanted, offered = request.model.display_name, alternative.model.display_name
        try:
            # Checked again as any quote is (the budget's 80 % alert included).
            await self._require_usable(alternative)
            quote = await self._open_quote(
                account, alternative, channel=channel, roles=roles, instead_of=request.model.id
            )
        except ImagineError as refusal:
            unusable.offer(
                messages.alternative_refused(wanted, unusable.reason, offered, refusal.message)
            )
            return
        sentence = messages.alternative_offered(wanted, unusable.reason, offered, quote.price)
        unusable.offer(f"{sentence}\n{quote.summary}", quote)

    async def _alternative(self, account: str, request: ImagineRequest) -> ImagineRequest | None:
        """``request`` made by the model of another provider that costs ``account`` least.

        Only a model usable now (a key, its circuit closed, its budget room for
        these images) that takes the request as it is: its resolution, aspect
        ratio, number of images and reference images. Ties go to the registry's
        order.
        """
        overrides = await self.ledger.price_overrides(account)
        best: tuple[int, ImagineRequest] | None = None
        for model in self.catalog.usable():
            if (
                model.provider == request.model.provider
                or not _can_make(model, request)
                or not self.circuits.closed(model.provider)
            ):
                continue
            cost_per_image = microusd(model.cost_for(request.resolution))
            if not await self.budgets.allows(model.provider, request.count, cost_per_image):
                continue
            candidate = replace(request, model=model)
            total = self._price(candidate, overrides).total
            if best is None or total < best[0]:
                best = (total, candidate)
        return None if best is None else best[1]

    async def _open_quote(
        self,
        account: str,
        request: ImagineRequest,
        *,
        channel: str | None,
        roles: Collection[str],
        instead_of: str | None = None,
    ) -> Quote:
        """Record ``request``'s quote (a ``quoted`` generation) with its reference images."""
        await self.credits.top_up_allowance(account, roles)
        terms = await self.ledger.quote_terms(account)
        priced = self._price(request, terms.overrides)
        auto_confirm = None
        # Another model in place of the one asked for is the user's choice to make.
        under = terms.auto_confirm_under
        if instead_of is None and under > 0 and priced.total <= under:
            auto_confirm = under
        try:
            balance, generation = await self.ledger.open_quote(
                self._new_generation(
                    account, request, priced, channel, instead_of, auto_confirm_under=auto_confirm
                ),
                starting_credits=self.credits.starting_credits,
                references=[
                    QuoteReference(image.mime_type, image.data)
                    for image in request.reference_images
                ],
                limits=self.quote_limits,
            )
        except ledger.LedgerError as refusal:
            raise _translate(refusal) from None
        return Quote(generation, request, balance, priced, instead_of)

    def _new_generation(
        self,
        account: str,
        request: ImagineRequest,
        priced: Price,
        channel: str | None,
        instead_of: str | None = None,
        compare: str | None = None,
        auto_confirm_under: int | None = None,
    ) -> NewGeneration:
        cost_per_image = microusd(request.model.cost_for(request.resolution))
        options: dict[str, Any] = {
            "resolution": request.resolution,
            "aspect_ratio": request.aspect_ratio,
            "model_name": request.model.display_name,
            # What was priced is what is made, whatever the registry says later.
            "provider_options": dict(request.model.provider_options),
            # The ledger records the price itself; these say how it was made,
            # so history and analytics stay true when prices change.
            "list_price": priced.list_price,
            "price_rules": priced.rules,
        }
        if instead_of is not None:
            # So a report can tell the requests a failover saved.
            options["instead_of"] = instead_of
        if auto_confirm_under is not None:
            options[AUTO_CONFIRM_OPTION] = auto_confirm_under
        if compare is not None:
            # So history and reports can tell the generations of one /compare.
            options["compare"] = compare
        return NewGeneration(
            id=new_request_id(),
            account_id=account,
            model_id=request.model.id,
            provider=request.model.provider,
            provider_model=request.model.provider_model,
            prompt=request.prompt,
            options=options,
            images_requested=request.count,
            credits_per_image=request.credits_per_image,
            cost_per_image_microusd=cost_per_image,
            price_total=priced.total,
            expires_at=self._clock() + self.quote_ttl,
            channel=channel,
        )

    async def price(self, account: str, request: ImagineRequest) -> Price:
        """What ``request`` costs ``account`` now (``bot.pricing.price``)."""
        return self._price(request, await self.ledger.price_overrides(account))

    def _price(self, request: ImagineRequest, overrides: Sequence[PriceOverride]) -> Price:
        return _price_of(
            request.model,
            request.count,
            request.resolution,
            self.pricing,
            overrides,
            self._clock(),
        )

    async def price_sheet(self, account: str, roles: Collection[str] = ()) -> PriceSheet:
        """``account``'s prices and available credits, in two reads and no write.

        An account not opened yet is shown what its first request opens it with:
        the starting credits and this period's allowance.
        """
        overrides = tuple(await self.ledger.price_overrides(account))
        try:
            available = (await self.ledger.balance(account)).available
        except ledger.AccountNotFound:
            available = self.credits.starting_credits + self.credits.allowance.credits_for(roles)
        return PriceSheet(available, overrides, self.pricing, self._clock())

    async def estimate(
        self, account: str, request: ImagineRequest, roles: Collection[str] = ()
    ) -> Estimate:
        """What ``request`` would cost ``account`` now, priced as its quote would be,
        with nothing held or recorded."""
        sheet = await self.price_sheet(account, roles)
        return Estimate(
            request,
            sheet.price(request.model, request.count, request.resolution),
            sheet.available,
        )

    async def own_prices(self, account: str) -> dict[str, dict[str, Fraction]]:
        """Per model id, per resolution: ``account``'s own price per image where an override
        makes it other than the list price (for /models)."""
        overrides = await self.ledger.price_overrides(account)
        now = self._clock()
        own: dict[str, dict[str, Fraction]] = {}
        for model in self.catalog.listed():
            for resolution in model.resolutions:
                per_image = _price_of(model, 1, resolution, self.pricing, overrides, now).per_image
                if per_image != model.credits_for(resolution):
                    own.setdefault(model.id, {})[resolution] = per_image
        return own

    async def again(
        self,
        generation_id: str,
        account: str,
        *,
        prompt: str | None = None,
        reference: ReferenceImage | None = None,
        channel: str | None = None,
        roles: Collection[str] = (),
    ) -> Quote:
        """A new quote, for ``account`` (whoever asked, not necessarily its owner), of the same
        request as generation ``generation_id``, validated and priced as of now.

        ``prompt``: an edited prompt in place of the generation's (Edit). ``reference``: one
        of its posted images, already checked as any attachment is (Vary); only for a
        model that takes reference images.
        """
        try:
            past = await self.ledger.generation(generation_id)
        except ledger.GenerationNotFound:
            raise RequestError(messages.AGAIN_NOT_FOUND) from None
        if reference is not None and not self.varies(past):
            raise RequestError(messages.VARY_UNSUPPORTED)
        if past.reference_count and reference is None:
            # Purged when it settled (``quote_references``), and not the clicker's to reuse.
            raise RequestError(messages.AGAIN_NEEDS_REFERENCES)
        options = ImagineOptions(
            prompt=past.prompt if prompt is None else prompt,
            model=past.model_id,
            count=past.images_requested,
            resolution=str(past.options["resolution"]),
            aspect=str(past.options["aspect_ratio"]),
            reference_images=() if reference is None else (reference,),
        )
        request = validate_request(options, self.catalog)
        return await self.quote(account, request, channel=channel, roles=roles)

    async def prompt_of(self, generation_id: str) -> str:
        """Generation ``generation_id``'s prompt, to edit into a new request."""
        try:
            return (await self.ledger.generation(generation_id)).prompt
        except ledger.GenerationNotFound:
            raise RequestError(messages.AGAIN_NOT_FOUND) from None

    def result_actions(self, generation: Generation) -> tuple[str, ...]:
        """What can be done with ``generation``'s posted result, as buttons under it: "again",
        "vary" (for a model that takes a reference image), "edit", "delete". None for a
        /compare's grid, which is no generation of its own."""
        if generation.id.endswith(COMPARE_GRID_SUFFIX):
            return ()
        if self.varies(generation):
            return ("again", "vary", "edit", "delete")
        return ("again", "edit", "delete")

    def varies(self, generation: Generation) -> bool:
        """Whether ``generation``'s results can be varied: its model takes a reference image."""
        model = self.catalog.registry.get(generation.model_id)
        return model is not None and model.accepts_reference_images

    async def delete_result(
        self, generation_id: str, account: str, remove: Callable[[], Awaitable[None]]
    ) -> None:
        """Let the requester or an admin ``remove`` a posted result, and record who did, when.

        Nothing is refunded: the images were made and seen. Anyone else is refused and
        ``remove`` is not called. The record is a ``bot_state`` entry (``deleted_key``):
        one fact per deleted result that nothing else reads, so it needs no column of
        its own on every generation.
        """
        try:
            past = await self.ledger.generation(generation_id)
        except ledger.GenerationNotFound:
            raise RequestError(messages.DELETE_NOT_FOUND) from None
        if account != past.account_id and not self.credits.is_admin(account):
            raise RequestError(messages.DELETE_NOT_YOURS)
        await remove()
        record = {"by": account, "at": self._clock().isoformat()}
        await self.ledger.write_state(deleted_key(generation_id), json.dumps(record))

    async def deleted(self, generation_id: str) -> tuple[str, datetime] | None:
        """Who deleted generation ``generation_id``'s posted result, and when; None if nobody."""
        raw = await self.ledger.read_state(deleted_key(generation_id))
        if raw is None:
            return None
        record = json.loads(raw)
        return str(record["by"]), datetime.fromisoformat(record["at"])

    async def cancel(self, generation_id: str, account: str) -> Generation:
        try:
            return await self.ledger.cancel(generation_id, account)
        except ledger.LedgerError as refusal:
            raise _translate(refusal) from None

    async def confirm(self, generation_id: str, account: str, delivery: Delivery) -> Outcome:
        """Hold the credits, generate, deliver and settle; exactly once per request.

        A second confirm of the same request (double click, redelivery) raises
        ``AlreadyHandled`` and changes nothing.
        """
        return await self.generate(await self.hold(generation_id, account), delivery)

    async def hold(self, generation_id: str, account: str) -> HeldGeneration:
        """The first half of ``confirm``: hold the credits, or raise why not. Takes milliseconds.

        For platforms that must answer a click within seconds: hold, answer,
        then call ``generate`` straight away (until then the hold is this
        process's and no sweep releases it).
        """
        if not self.accepting:
            raise ShuttingDown()
        try:
            generation = await self.ledger.hold(
                generation_id, account, lease=self.lease, accept=self._model_still_usable
            )
        except ledger.LedgerError as refusal:
            raise _translate(refusal) from None
        if not self.accepting:
            # The bot began stopping while the hold was taken: its drain may already
            # have found nothing running, so nothing would generate or settle this.
            await asyncio.shield(self._release(generation, "shutting_down", retry=_ONE_TRY))
            raise ShuttingDown()
        self._in_flight.add(generation_id)
        self._idle.clear()
        return HeldGeneration(generation)

    def _model_still_usable(self, quote: Generation) -> None:
        """The model may have been switched off, or lost its key, since the quote."""
        self.catalog.require(quote.model_id)

    async def generate(
        self, held: HeldGeneration, delivery: Delivery, *, reachable_for: float | None = None
    ) -> Outcome:
        """The second half of ``confirm``: generate, deliver, settle, and tell the user.

        The outcome's report goes to ``delivery.conclude``, even for a generation
        a shutdown cuts short (which is settled, then re-raises the cancellation).

        ``reachable_for``: how many seconds from now ``delivery`` can still reach
        the user (a platform's reply window). A request still queued when too
        little of it is left to generate and deliver is released instead, with
        a sentence saying why, rather than made for nobody.
        """
        generation = held.generation
        started = time.monotonic()
        start_by = (
            None
            if reachable_for is None
            else asyncio.get_running_loop().time()
            + reachable_for
            - self._longest_generation_seconds()
            - DELIVERY_ALLOWANCE_SECONDS
        )
        try:
            try:
                outcome = await self._run(generation, delivery, start_by)
            except Exception:
                logger.exception("generation %s failed unexpectedly", generation.id)
                outcome = await self._release(generation, "internal")
            except BaseException:
                # Cancelled at shutdown: the hold must not outlive the generation, and
                # the shutdown must not wait on an unreachable database (a background
                # retry, or else the next start-up, settles what this could not).
                # Images already posted, even mid-upload, are charged, not given away.
                posted = self._posted.get(generation.id)
                stopped = await asyncio.shield(
                    self._capture(
                        generation, posted.images, "interrupted", retry=_ONE_TRY, link=posted.link
                    )
                    if posted is not None and posted.images
                    else self._release(generation, "interrupted", retry=_ONE_TRY)
                )
                await asyncio.shield(_conclude(delivery, stopped, _CONCLUDE_WHEN_STOPPING_SECONDS))
                raise
            self._record(outcome, time.monotonic() - started)
            # Still in flight until the user is told, so a shutdown's drain waits for it.
            await _conclude(delivery, outcome)
        finally:
            self._posted.pop(generation.id, None)
            self._in_flight.discard(generation.id)
            if not self._in_flight:
                self._idle.set()
        return outcome

    async def quote_compare(
        self,
        account: str,
        compare: CompareRequest,
        *,
        channel: str | None = None,
        roles: Collection[str] = (),
    ) -> CompareQuote:
        """Price each model's request and record them together (``Ledger.open_quotes``).

        Refused before any button when a model cannot be used now (naming it; no
        alternative is offered, since the models are the point), or when the
        balance does not cover the total.
        """
        if not self.accepting:
            raise ShuttingDown()
        for request in compare.requests:
            await self._require_usable(request)
        await self.credits.top_up_allowance(account, roles)
        overrides = await self.ledger.price_overrides(account)
        priced = [self._price(request, overrides) for request in compare.requests]
        key = new_request_id()
        try:
            balance, generations = await self.ledger.open_quotes(
                [
                    self._new_generation(account, request, price, channel, compare=key)
                    for request, price in zip(compare.requests, priced, strict=True)
                ],
                starting_credits=self.credits.starting_credits,
                limits=self.quote_limits,
            )
        except ledger.LedgerError as refusal:
            raise _translate(refusal) from None
        return CompareQuote(
            tuple(
                Quote(generation, request, balance, price)
                for generation, request, price in zip(
                    generations, compare.requests, priced, strict=True
                )
            ),
            balance,
        )

    async def cancel_compare(self, compare_id: str, account: str) -> None:
        for generation_id in compare_id.split(COMPARE_SEPARATOR):
            await self.cancel(generation_id, account)

    async def confirm_compare(
        self, compare_id: str, account: str, delivery: Delivery
    ) -> CompareOutcome:
        """Hold every model's credits at once, then generate them in parallel and post the grid
        and the originals; exactly once per /compare (a second confirm: ``AlreadyHandled``)."""
        return await self.generate_compare(await self.hold_compare(compare_id, account), delivery)

    async def hold_compare(self, compare_id: str, account: str) -> list[HeldGeneration]:
        """``hold`` for a /compare: all its generations' credits in one transaction, or none."""
        if not self.accepting:
            raise ShuttingDown()
        try:
            generations = await self.ledger.hold_all(
                compare_id.split(COMPARE_SEPARATOR),
                account,
                lease=self.lease,
                accept=self._model_still_usable,
            )
        except ledger.LedgerError as refusal:
            raise _translate(refusal) from None
        if not self.accepting:
            for generation in generations:
                await asyncio.shield(self._release(generation, "shutting_down", retry=_ONE_TRY))
            raise ShuttingDown()
        self._in_flight.update(generation.id for generation in generations)
        self._idle.clear()
        return [HeldGeneration(generation) for generation in generations]

    async def generate_compare(
        self,
        held: Sequence[HeldGeneration],
        delivery: Delivery,
        *,
        reachable_for: float | None = None,
    ) -> CompareOutcome:
        """Each model's ``generate`` at once, each settled on its own (a failed model charges
        nothing); the grid is posted once every model has made its image or failed, then
        each model's original, in order. The user is told once, at the end."""
        board = _CompareBoard(delivery, [each.generation for each in held])
        outcomes = await asyncio.gather(
            *(
                self.generate(each, board.for_model(index), reachable_for=reachable_for)
                for index, each in enumerate(held)
            )
        )
        account = held[0].generation.account_id
        ended = CompareOutcome(
            tuple(outcomes),
            board.grid,
            board.labels,
            await self._balance(account, self.settle_retry),
        )
        try:
            await delivery.conclude(ended.report)
        except Exception:
            logger.warning("could not show the outcome of a compare", exc_info=True)
        return ended

    def _record(self, outcome: Outcome, seconds: float) -> None:
        settled = outcome.generation
        status = str(settled.status) if settled.status.is_final else "unsettled"
        self.metrics.generations.labels(settled.model_id, status).inc()
        self.metrics.credits_charged.labels(settled.model_id).inc(settled.credits_charged)
        logger.info(
            "generation %s %s",
            settled.id,
            status,
            extra={
                "event": "generation",
                "request_id": settled.id,
                "account": settled.account_id,
                "model": settled.model_id,
                "images_requested": settled.images_requested,
                "images_delivered": settled.images_delivered,
                "credits_charged": settled.credits_charged,
                "latency_ms": round(seconds * 1000),
                "outcome": status,
                "error_code": settled.error_code,
            },
        )

    def _new_slots(self, scope: str, limit: int) -> Slots:
        """A limit counted in PostgreSQL when processes may share it, else in this process."""
        if self.ledger.engine.dialect.name == "postgresql":
            return DatabaseSlots(self.ledger, scope, limit, self.lease)
        return ProviderSlots(limit)

    def _slots_of_user(self, account: str) -> Slots:
        slots = self._user_slots.get(account)
        if slots is None:
            slots = self._user_slots[account] = self._new_slots(
                f"user:{account}", self._user_concurrency
            )
        return slots

    @property
    def lease(self) -> timedelta:
        """How long a hold of this process's is its alone to settle without a renewal."""
        return _LEASE_IN_HEARTBEATS * self.heartbeat_interval

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def provider_load(self) -> list[ProviderLoad]:
        """Each provider's limit and what this process runs and queues for it now."""
        return [
            ProviderLoad(name, slots.limit, slots.running, slots.waiting)
            for name, slots in sorted(self._slots.items())
        ]

    def stop_accepting(self) -> None:
        """Refuse new quotes and clicks (with a sentence saying why); running generations go on."""
        self.accepting = False

    async def drain(self, grace_seconds: float) -> bool:
        """Wait up to ``grace_seconds`` for running generations to end, and for settlements
        still waiting for the database; True if they all did."""
        try:
            async with asyncio.timeout(grace_seconds):
                await self._idle.wait()
                # Settlements the database has not taken yet get what is left of the grace.
                if self._settling:
                    await asyncio.wait(list(self._settling.values()))
        except TimeoutError:
            return False
        return True

    def _longest_generation_seconds(self) -> float:
        """How long a provider may take: the time limit and the grace after it."""
        return self.generation_timeout.total_seconds() + self._grace_seconds()

    def _grace_seconds(self) -> float:
        """How long after its time limit a provider has to hand back the images it finished."""
        return min(_PROVIDER_GRACE_SECONDS, self.generation_timeout.total_seconds() / 10)

    async def _run(
        self, generation: Generation, delivery: Delivery, start_by: float | None
    ) -> Outcome:
        provider = self.providers.providers.get(generation.provider)
        if provider is None:
            return await self._release(generation, "not_configured")
        model_name = str(generation.options.get("model_name", generation.model_id))
        model = self.catalog.registry.get(generation.model_id)
        time_limit = self.generation_timeout.total_seconds()
        request = ImageRequest(
            provider_model=generation.provider_model,
            prompt=generation.prompt,
            count=generation.images_requested,
            resolution=str(generation.options["resolution"]),
            aspect_ratio=str(generation.options["aspect_ratio"]),
            options=generation.options.get(
                "provider_options", model.provider_options if model is not None else {}
            ),
            time_limit_seconds=time_limit,
        )

        async def queued(position: int) -> None:
            await _report(delivery, Queued(position))

        async def image_done(finished: int, total: int) -> None:
            # Reported inside the provider's call: a slow edit (a platform's rate
            # limit) at the time limit must leave the provider its grace to hand
            # back the finished images.
            await _report(
                delivery, Generating(model_name, finished, total), within=self._grace_seconds() / 2
            )

        try:
            async with (
                self._slots_of_user(generation.account_id).acquire(generation.id, queued, start_by),
                self._slots[generation.provider].acquire(generation.id, queued, start_by),
            ):
                # Read only now, so that generations waiting for a slot hold no image bytes.
                references = await self._references(generation)
                await _report(delivery, Generating(model_name, 0, generation.images_requested))
                provider_started = time.monotonic()
                returned = 0
                with recording_attempts() as calls:
                    try:
                        # The provider keeps the finished images at the time limit, which
                        # starts with this call; this only stops one that ignores it.
                        async with asyncio.timeout(self._longest_generation_seconds()):
                            result = await provider.generate(
                                replace(request, reference_images=references), image_done
                            )
                        returned = len(result.images)
                    except BaseException as error:
                        self.circuits.record(generation.provider, *judge_error(error))
                        raise
                    else:
                        self.circuits.record(generation.provider, *judge_result(result))
                    finally:
                        self.metrics.provider_latency.labels(generation.provider).observe(
                            time.monotonic() - provider_started
                        )
                        await self._record_attempts(generation, calls, returned)
                # Nor through the delivery, which can take a while.
                del references
        except QueuedTooLong:
            return await self._release(generation, "queued_too_long")
        except ReferencesLost:
            return await self._release(generation, "references_lost")
        except TimeoutError:
            return await self._release(generation, ProviderTimeout.code)
        except ProviderError as error:
            return await self._release(generation, error.code, error.detail)
        except Exception:
            logger.exception("provider %s failed unexpectedly on %s", provider.name, generation.id)
            return await self._release(generation, "internal")

        images = result.images[: generation.images_requested]
        partial_failure = result.failures[0] if result.failures else None
        if not images:
            failure = partial_failure or ProviderUnavailable("the provider returned no image")
            return await self._release(generation, failure.code, failure.detail)

        await _report(delivery, Delivering(len(images)))
        posted = self._posted[generation.id] = PostedImages(images)
        detail = ""
        try:
            await delivery.deliver(images, generation, posted)
        except DeliveryFailed as failure:
            detail = str(failure)
            logger.warning(
                "delivery of %s failed after %d of %d images: %s",
                generation.id,
                len(posted.images),
                len(images),
                failure,
            )
        except Exception:
            logger.exception(
                "delivery of %s failed unexpectedly after %d of %d images",
                generation.id,
                len(posted.images),
                len(images),
            )
        if not posted.images:
            return await self._release(generation, "delivery_failed", detail)
        if len(posted.images) < len(images):
            shortfall = "delivery_failed"
        else:
            shortfall = partial_failure.code if partial_failure is not None else ""
        return await self._capture(generation, posted.images, shortfall, link=posted.link)

    async def _references(self, generation: Generation) -> tuple[ReferenceImage, ...]:
        """The reference images stored with the quote, or ``ReferencesLost``."""
        if not generation.reference_count:
            return ()
        try:
            stored = await self.ledger.references(generation.id)
        except Exception:
            # Corrupt, or the database failed: either way the provider must not go without them.
            logger.exception("could not read the reference images of %s", generation.id)
            raise ReferencesLost() from None
        if len(stored) != generation.reference_count:
            logger.error(
                "generation %s has %d of its %d reference images",
                generation.id,
                len(stored),
                generation.reference_count,
            )
            raise ReferencesLost()
        return tuple(ReferenceImage(reference.data, reference.media_type) for reference in stored)

    async def _record_attempts(
        self, generation: Generation, calls: AttemptLog, returned: int
    ) -> None:
        """Keep the provider's calls on the generation, and what the provider charged for them,
        and count them, whatever they came to.

        The provider bills each image it made: the ``returned`` ones (posted or not),
        and each call that may have made one though no answer came back (timed out,
        connection lost, abandoned at the time limit), so a budget counts what the
        bill may hold. Only a record: if the database does not take it, the
        generation goes on.
        """
        for call in calls.attempts:
            self.metrics.provider_attempts.labels(generation.provider, str(call.outcome)).inc()
        cost = None
        if generation.cost_per_image_microusd is not None:
            unanswered = sum(1 for call in calls.attempts if call.outcome in _MAYBE_BILLED)
            cost = (returned + unanswered) * generation.cost_per_image_microusd
        try:
            await self.ledger.record_attempts(
                generation.id, [call.as_json() for call in calls.attempts], cost
            )
        except Exception:
            logger.warning(
                "could not record the provider calls of %s", generation.id, exc_info=True
            )

    async def _capture(
        self,
        generation: Generation,
        posted: tuple[GeneratedImage, ...],
        shortfall: str = "",
        *,
        retry: Retry | None = None,
        link: str | None = None,
    ) -> Outcome:
        """Charge for the images posted; ``shortfall`` is the code of why the others were not;
        ``link``, where they were posted, is kept for /history.

        If the database does not take it in time, it is tried again in the background.
        """
        retry = retry or self.settle_retry
        settle = partial(self._record_capture, generation.id, len(posted), link)
        try:
            settled = await retry.run(
                settle,
                f"capture the credits of {generation.id}",
                self.metrics.settlement_retries.inc,
            )
        except Exception as error:
            logger.exception("could not settle %s after posting its images", generation.id)
            self._settle_later(
                generation.id, settle, error, partial(self._count_late_capture, len(posted))
            )
            return Outcome(generation, posted, None, messages.CAPTURE_DELAYED)
        if self._count_capture(settled, len(posted)):
            sentence = messages.outcome(
                settled, shortfall, settled.options.get(AUTO_CONFIRM_OPTION)
            )
        else:
            sentence = messages.settled_before_capture(len(posted), settled)
        return Outcome(settled, posted, await self._balance(settled.account_id, retry), sentence)

    async def _record_capture(
        self, generation_id: str, posted: int, link: str | None = None
    ) -> Generation:
        # Recorded first, so that a sweep settling this later charges for what was posted.
        await self.ledger.mark_posted(generation_id, posted, link)
        return await self.ledger.capture(generation_id, posted)

    def _count_capture(self, settled: Generation, posted: int) -> bool:
        """Export a capture; False if another settlement had ended the generation differently."""
        if settled.images_delivered == posted:
            self.metrics.settlements.labels("capture", str(settled.status)).inc()
            return True
        self.metrics.settled_before_capture.labels(settled.model_id).inc()
        logger.warning(
            "generation %s posted %d images after it was settled for %d (charged %d)",
            settled.id,
            posted,
            settled.images_delivered,
            settled.credits_charged,
        )
        return False

    async def _record_release(self, generation_id: str, code: str, sentence: str) -> Generation:
        return await self.ledger.release(generation_id, error_code=code, error_message=sentence)

    def _count_late_capture(self, posted: int, settled: Generation) -> None:
        """Export a capture made in the background, after the generation was recorded unsettled."""
        self._count_capture(settled, posted)
        self.metrics.credits_charged.labels(settled.model_id).inc(settled.credits_charged)

    async def _release(
        self, generation: Generation, code: str, detail: str = "", *, retry: Retry | None = None
    ) -> Outcome:
        sentence = messages.failure(code, detail)
        retry = retry or self.settle_retry
        settle = partial(self._record_release, generation.id, code, sentence)
        try:
            settled = await retry.run(
                settle,
                f"release the credits of {generation.id}",
                self.metrics.settlement_retries.inc,
            )
        except Exception as error:
            logger.exception("could not release the hold of %s", generation.id)
            self._settle_later(
                generation.id,
                settle,
                error,
                lambda _: self.metrics.settlements.labels("release", code).inc(),
            )
            return Outcome(
                generation, (), None, messages.failure(code, detail, returned_later=True)
            )
        self.metrics.settlements.labels("release", code).inc()
        return Outcome(settled, (), await self._balance(settled.account_id, retry), sentence)

    def _settle_later(
        self,
        generation_id: str,
        settle: Callable[[], Awaitable[Generation]],
        error: Exception,
        settled: Callable[[Generation], object],
    ) -> None:
        """Keep trying, in the background, a settlement the database could not take now.

        Only failures that may pass (``ledger.transient``) are worth it; a refusal
        or a bug would fail the same way every time, and is left to the sweep.
        ``settled`` exports the settlement once made.
        """
        if not ledger.transient(error) or generation_id in self._settling:
            return
        task = asyncio.create_task(
            self._keep_settling(generation_id, settle, settled), name=f"settle {generation_id}"
        )
        self._settling[generation_id] = task
        task.add_done_callback(lambda _: self._settling.pop(generation_id, None))

    async def _keep_settling(
        self,
        generation_id: str,
        settle: Callable[[], Awaitable[Generation]],
        settled: Callable[[Generation], object],
    ) -> None:
        """Try ``settle`` until the database takes it; only the process stopping ends this sooner.

        Meanwhile the generation counts as this process's (its lease is renewed
        and no sweep here settles it as abandoned), and settling twice is safe:
        the ledger returns the first settlement, whoever made it.
        """
        wait = self.settle_retry.first_wait_seconds
        while True:
            await asyncio.sleep(wait)
            self.metrics.settlement_retries.inc()
            try:
                settlement = await settle()
            except Exception as error:
                if not ledger.transient(error):
                    logger.exception("gave up settling %s; the sweep will", generation_id)
                    return
                wait = min(wait * 2, self.settle_retry.longest_wait_seconds)
                logger.warning(
                    "still could not settle %s; trying again in %.2f s",
                    generation_id,
                    wait,
                    exc_info=True,
                )
                continue
            settled(settlement)
            logger.info(
                "settled %s once the database took it: %s, charged %d credits",
                generation_id,
                settlement.status,
                settlement.credits_charged,
            )
            return

    async def stop_settling(self) -> None:
        """At shutdown, after ``drain`` gave them the grace period: leave the settlements still
        waiting for the database to the next start-up.

        Such a generation keeps its hold; the next start-up's recovery (or
        another process's sweep) settles it once its lease runs out, charging
        for the images recorded as posted.
        """
        waiting = list(self._settling.values())
        for task in waiting:
            task.cancel()
            logger.warning("%s: left to the next start-up to settle", task.get_name())
        await asyncio.gather(*waiting, return_exceptions=True)

    async def _balance(self, account: str, retry: Retry) -> Balance | None:
        try:
            return await retry.run(
                partial(self.ledger.balance, account), f"read the balance of {account}"
            )
        except Exception:
            logger.exception("could not read the balance of %s", account)
            return None

    async def recover(self) -> list[Generation]:
        """Settle the generations no process answers for any more, and expire stale quotes.

        A hold's lease says until when, by the database's clock, its process
        answers for the generation; the process renews it every
        ``heartbeat_interval`` (``sweep_periodically``), so the lease runs out
        only when that process has died or stalled. Such a generation's hold is
        released, or captured for the images already posted, each decided on
        the row as locked then (``Ledger.settle_abandoned``). Run at start-up
        and by every sweep; this process's own running generations are never
        touched, and processes may sweep at intervals of their own.
        """
        settled = []
        for generation_id in await self.ledger.expired_leases():
            if generation_id in self._in_flight or generation_id in self._settling:
                continue
            abandoned = await self.ledger.settle_abandoned(
                generation_id,
                reason=messages.INTERRUPTED_RELEASED,
                posted_reason=messages.INTERRUPTED_AFTER_POSTING,
            )
            if abandoned is not None:
                self.metrics.settlements.labels("sweep", str(abandoned.status)).inc()
                settled.append(abandoned)
        await self.ledger.expire_quotes()
        await self.ledger.expire_lots()
        # Slots and places in line of processes that died (PostgreSQL; SQLite's table stays empty).
        await self.ledger.drop_expired_slots()
        return settled

    async def check_ledger(self) -> int:
        """Recompute every balance from its entries (``ledger verify``); how many disagree.

        The count is exported as ``imagine_ledger_discrepancies``; each account
        that disagrees is logged as an error, for an operator to look into.
        """
        discrepancies = await self.ledger.verify()
        self.metrics.ledger_discrepancies.set(len(discrepancies))
        self.metrics.ledger_checked.set_to_current_time()
        for found in discrepancies:
            logger.error(
                "ledger check: %s stores %d available / %d held, its entries add up to %d / %d",
                found.account,
                found.stored_available,
                found.stored_held,
                found.entries_available,
                found.entries_held,
                extra={"event": "ledger_discrepancy", "account": found.account},
            )
        if not discrepancies:
            logger.info("ledger check: every balance agrees with its entries")
        return len(discrepancies)

    async def check_ledger_periodically(self, interval: timedelta) -> None:
        """``check_ledger`` now and every ``interval``, forever, as a background task."""
        while True:
            try:
                await self.check_ledger()
            except Exception:
                logger.exception("the periodic ledger check failed; trying again later")
            await asyncio.sleep(interval.total_seconds())

    async def sweep_periodically(self) -> None:
        """Renew this process's leases, then ``recover``, forever, as a background task."""
        while True:
            await asyncio.sleep(self.heartbeat_interval.total_seconds())
            try:
                await self.ledger.renew_leases(
                    frozenset(self._in_flight) | self._settling.keys(), self.lease
                )
                settled = await self.recover()
            except Exception:
                logger.exception("the periodic sweep of abandoned holds failed; trying again later")
                continue
            for generation in settled:
                logger.warning(
                    "settled generation %s, abandoned by %s", generation.id, generation.owner
                )


@dataclass(frozen=True)
class ProviderLoad:
    provider: str
    limit: int
    """Generations run at once for the provider (PROVIDER_LIMITS): by every process together
    on PostgreSQL, by this one process on SQLite. ``running`` and ``queued`` are this process's."""
    running: int
    queued: int


class QueuedTooLong(Exception):
    """No slot came free while enough of the reply window was left to use one."""


class ReferencesLost(Exception):
    """The quote's stored reference images are missing or corrupt."""


class Slots(Protocol):
    """A concurrency limit (a provider's, or one user's); callers that must wait are told their place."""

    limit: int

    @property
    def waiting(self) -> int:
        """Generations of this process waiting for a slot."""
        ...

    @property
    def running(self) -> int:
        """Generations of this process holding a slot."""
        ...

    def acquire(
        self,
        generation_id: str,
        on_queued: Callable[[int], Awaitable[None]],
        start_by: float | None = None,
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """A slot for ``generation_id``; raises ``QueuedTooLong`` if none came free by
        ``start_by`` (the loop's time). ``on_queued`` is told each place in line."""
        ...


class ProviderSlots:
    """A concurrency limit kept in this process's memory: the one process on SQLite."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._semaphore = asyncio.Semaphore(limit)
        self._waiting = 0
        self._running = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        generation_id: str,
        on_queued: Callable[[int], Awaitable[None]],
        start_by: float | None = None,
    ) -> AsyncIterator[None]:
        """A slot; raises ``QueuedTooLong`` if none came free by ``start_by`` (the loop's time).

        ``generation_id`` is not needed here: in one process the semaphore's line is the line.
        """
        if self._semaphore.locked():
            self._waiting += 1
            try:
                await on_queued(self._waiting)
                async with asyncio.timeout_at(start_by):
                    await self._semaphore.acquire()
            except TimeoutError:
                raise QueuedTooLong() from None
            finally:
                self._waiting -= 1
        else:
            await self._semaphore.acquire()
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._semaphore.release()


@dataclass
class _Waiter:
    """One of this process's generations in line for a ``DatabaseSlots`` slot (state, not a value:
    the poller updates it)."""

    claim_id: int
    """Its row's id, the line's order across every process."""
    position: int
    """Its place in line as last read; 0 once it holds a slot."""
    changed: asyncio.Event


class DatabaseSlots:
    """A concurrency limit counted in PostgreSQL, so it holds across every process sharing it.

    Each generation running or waiting under the limit (``scope``) is a leased row
    (``ledger/slots.py``), renewed with the generation's own lease by ``sweep_periodically``
    (the generation is in flight meanwhile): a killed process's slots come free within a lease.
    A generation that cannot start at once waits in this process's line; one poller per
    scope asks the database for the waiter with the smallest claim id only. The line is kept
    in claim order, not arrival order: a process asking for a waiter behind one of its own
    ahead in the database's line would be refused every time, while the one ahead is never
    asked for, and two processes could each wait on the other that way for ever.
    """

    def __init__(
        self,
        database: ledger.Ledger,
        scope: str,
        limit: int,
        lease: timedelta,
        poll_seconds: float = SLOT_POLL_SECONDS,
    ) -> None:
        self.limit = limit
        self.scope = scope
        self._ledger = database
        self._lease = lease
        self._poll_seconds = poll_seconds
        self._line: dict[str, _Waiter] = {}
        self._running = 0
        self._wake = asyncio.Event()
        """Set when a slot of this process's comes free, so the poller asks at once."""
        self._claiming = asyncio.Lock()
        """Held while the poller asks for a waiter's slot, so a waiter that gives up frees its
        row after that answer, not before it (the claim would queue it again)."""
        self._poller: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._line)

    @property
    def running(self) -> int:
        return self._running

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        generation_id: str,
        on_queued: Callable[[int], Awaitable[None]],
        start_by: float | None = None,
    ) -> AsyncIterator[None]:
        """A slot for ``generation_id``; raises ``QueuedTooLong`` if none came free by
        ``start_by`` (the loop's time). ``on_queued`` is told its place, and each new one.

        However it ends (done, refused, cancelled), its row is deleted.
        """
        try:
            place = await self._ledger.claim_slot(
                generation_id, self.scope, self.limit, self._lease
            )
            if place.position:
                await self._wait_in_line(generation_id, place, on_queued, start_by)
            self._running += 1
            try:
                yield
            finally:
                self._running -= 1
        finally:
            await asyncio.shield(self._free(generation_id))

    async def _wait_in_line(
        self,
        generation_id: str,
        place: ledger.SlotPlace,
        on_queued: Callable[[int], Awaitable[None]],
        start_by: float | None,
    ) -> None:
        waiter = _Waiter(place.claim_id, place.position, asyncio.Event())
        self._line[generation_id] = waiter
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name=f"slots {self.scope}")
        told = place.position
        try:
            await on_queued(told)
            async with asyncio.timeout_at(start_by):
                while waiter.position:
                    await waiter.changed.wait()
                    waiter.changed.clear()
                    if waiter.position and waiter.position != told:
                        told = waiter.position
                        await on_queued(told)
        except TimeoutError:
            raise QueuedTooLong() from None
        finally:
            self._line.pop(generation_id, None)

    async def _poll(self) -> None:
        """Ask for the first waiter's slot until the line is empty; after each refusal wait a
        poll interval, or until a slot of this process comes free."""
        while self._line:
            generation_id, waiter = min(self._line.items(), key=lambda item: item[1].claim_id)
            self._wake.clear()
            place: ledger.SlotPlace | None = None
            async with self._claiming:
                if self._line.get(generation_id) is waiter:
                    try:
                        place = await self._ledger.claim_slot(
                            generation_id, self.scope, self.limit, self._lease
                        )
                    except Exception:
                        logger.warning(
                            "could not ask for a slot of %s; asking again",
                            self.scope,
                            exc_info=True,
                        )
            if place is not None:
                waiter.claim_id, waiter.position = place.claim_id, place.position
                waiter.changed.set()
                if not place.position:
                    # Its own task may not run before the next turn of this loop.
                    self._line.pop(generation_id, None)
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._wake.wait()

    async def _free(self, generation_id: str) -> None:
        """Delete ``generation_id``'s row, once no claim for it is under way."""
        self._line.pop(generation_id, None)
        try:
            async with self._claiming:
                await self._ledger.free_slot(generation_id, self.scope)
        except Exception:
            # Its lease runs out unrenewed once the generation ends; the row goes then.
            logger.warning("could not free a slot of %s", self.scope, exc_info=True)
        self._wake.set()


class _CompareBoard:
    """Where the models of one /compare meet before anything is posted.

    Each model runs the ordinary ``generate`` with a ``Delivery`` of its own
    (``for_model``): its images wait until every model has made its image or
    ended without one, then the grid is posted once, then each model posts its
    original in the order the models were named, through the platform's
    delivery, so each is charged for exactly what reached the user.
    """

    def __init__(self, delivery: Delivery, generations: Sequence[Generation]) -> None:
        self.delivery = delivery
        self.generations = tuple(generations)
        self.grid: GeneratedImage | None = None
        self.labels: tuple[str, ...] = ()
        self._started = time.monotonic()
        self._made: dict[int, tuple[GeneratedImage, float]] = {}
        self._ended: set[int] = set()
        """Models done with the board: posted, or ended without an image."""
        self._changed = asyncio.Condition()
        self._grid_posted: asyncio.Task[None] | None = None

    def for_model(self, index: int) -> _CompareModelDelivery:
        return _CompareModelDelivery(self, index)

    async def _note(self, change: Callable[[], None]) -> None:
        async with self._changed:
            change()
            self._changed.notify_all()

    async def made(self, index: int, image: GeneratedImage) -> None:
        await self._note(lambda: self._made.setdefault(index, (image, self._elapsed())))

    async def ended(self, index: int) -> None:
        await self._note(lambda: self._ended.add(index))

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    async def wait_for_turn(self, index: int) -> None:
        """Until every model has an image or has ended, the grid is posted, and the models
        named before this one have posted theirs."""
        everyone = range(len(self.generations))
        async with self._changed:
            await self._changed.wait_for(
                lambda: all(each in self._made or each in self._ended for each in everyone)
            )
        if self._grid_posted is None:
            self._grid_posted = asyncio.create_task(self._post_grid())
        # Shielded: one model cancelled must not take the grid from the others.
        await asyncio.shield(self._grid_posted)
        async with self._changed:
            await self._changed.wait_for(lambda: all(each in self._ended for each in range(index)))

    async def _post_grid(self) -> None:
        cells = []
        for index, generation in enumerate(self.generations):
            name = str(generation.options.get("model_name", generation.model_id))
            made = self._made.get(index)
            if made is None:
                cells.append((None, messages.compare_cell_failed(name)))
            else:
                image, seconds = made
                cells.append((image, messages.compare_cell(name, generation.price, seconds)))
        self.labels = tuple(label for _, label in cells)
        try:
            self.grid = await compare_grid(cells)
            first = self.generations[min(self._made)]
            # Not any model's generation, so an adapter names and files it apart from theirs.
            # Its caption's price: what the models shown in it cost together.
            shown = replace(
                first,
                id=f"{first.id}{COMPARE_GRID_SUFFIX}",
                options={
                    **first.options,
                    "model_name": messages.COMPARE_GRID_NAME,
                    PRICE_OPTION: sum(self.generations[index].price for index in self._made),
                },
            )
            await self.delivery.deliver([self.grid], shown, PostedImages([self.grid]))
        except Exception:
            # The originals are what is charged for; they are posted all the same.
            logger.warning("could not post the compare grid", exc_info=True)


class _CompareModelDelivery:
    """One model's ``Delivery`` within a /compare (``_CompareBoard``)."""

    def __init__(self, board: _CompareBoard, index: int) -> None:
        self.board = board
        self.index = index

    async def progress(self, event: ProgressEvent) -> None:
        # Only the model at work is worth showing; queue places and posting of N models would
        # overwrite each other.
        if isinstance(event, Generating) and event.finished == 0:
            await self.board.delivery.progress(event)

    async def deliver(
        self, images: Sequence[GeneratedImage], generation: Generation, posted: PostedImages
    ) -> None:
        try:
            await self.board.made(self.index, images[0])
            await self.board.wait_for_turn(self.index)
            await self.board.delivery.deliver(images, generation, posted)
        finally:
            await self.board.ended(self.index)

    async def conclude(self, report: str) -> None:
        # Told once for the whole compare (``generate_compare``); this model is done either way.
        await self.board.ended(self.index)


def deleted_key(generation_id: str) -> str:
    """The ``bot_state`` key recording who deleted a generation's posted result."""
    return f"deleted:{generation_id}"


def new_request_id() -> str:
    return secrets.token_hex(8)


async def _report(delivery: Delivery, event: ProgressEvent, within: float | None = None) -> None:
    """Show progress; a message that fails (or takes over ``within`` s) must not stop anything."""
    try:
        async with asyncio.timeout(within):
            await delivery.progress(event)
    except Exception:
        logger.warning("progress update %s failed", event, exc_info=True)


async def _conclude(delivery: Delivery, outcome: Outcome, within: float | None = None) -> None:
    """Tell the user how it ended; a message that cannot be shown changes nothing settled."""
    try:
        async with asyncio.timeout(within):
            await delivery.conclude(outcome.report)
    except Exception:
        logger.warning("could not show the outcome of %s", outcome.generation.id, exc_info=True)


_MAYBE_BILLED = frozenset({CallOutcome.TIMEOUT, CallOutcome.CONNECTION_LOST, CallOutcome.ABANDONED})
"""Calls sent whose answer never came: the provider may have made, and billed, the image."""


def _can_make(model: ModelSpec, request: ImagineRequest) -> bool:
    """Whether ``model`` takes ``request`` as it was asked, with nothing changed or left out."""
    return (
        request.resolution in model.resolutions
        and request.aspect_ratio in model.aspect_ratios
        and request.count <= model.max_images
        and len(request.reference_images) <= model.max_reference_images
    )


def microusd(usd: float | None) -> int | None:
    """Dollars as millionths of a dollar, which add up exactly."""
    return None if usd is None else round(usd * 1_000_000)


def _translate(refusal: ledger.LedgerError) -> ImagineError:
    if isinstance(refusal, ledger.GenerationNotFound):
        return QuoteNotFound()
    if isinstance(refusal, ledger.WrongAccount):
        return NotYourRequest()
    if isinstance(refusal, ledger.QuoteExpired):
        return QuoteExpired()
    if isinstance(refusal, ledger.InvalidTransition):
        # Expired by the sweep before the click: the same as an expiry the click finds.
        if refusal.status == GenerationStatus.EXPIRED:
            return QuoteExpired()
        return AlreadyHandled(refusal.status)
    if isinstance(refusal, ledger.InsufficientFunds):
        return InsufficientCredits(refusal.need, refusal.available)
    if isinstance(refusal, ledger.CreditsOwed):
        return CreditsOwed(refusal.owed)
    if isinstance(refusal, ledger.TooManyQuotes):
        return TooManyQuotes(refusal.limit)
    if isinstance(refusal, ledger.AccountReferencesFull):
        return AccountReferencesFull(refusal.pending, refusal.adding, refusal.limit)
    if isinstance(refusal, ledger.ReferenceStorageFull):
        return ReferenceStorageFull()
    raise refusal
