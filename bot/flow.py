"""The imagine flow, the same for every platform: quote → confirm → generate → deliver → settle.

Adapters translate their platform's events into calls on ``ImagineService`` and
render what comes back; no credit or validation rule lives in an adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol, TypeVar

import ledger
from bot import messages
from bot.catalog import ModelCatalog, ProviderPool
from bot.credits import Credits
from bot.errors import (
    AlreadyHandled,
    ImagineError,
    InsufficientCredits,
    NotYourRequest,
    QuoteExpired,
    QuoteNotFound,
    ShuttingDown,
)
from bot.observability import HealthCheck, Metrics
from bot.parsing import ImagineRequest
from bot.progress import Delivering, Generating, ProgressEvent, Queued
from ledger import Balance, Generation, GenerationStatus, NewGeneration
from providers.base import GeneratedImage, ImageRequest, ReferenceImage
from providers.calls import AttemptLog, recording_attempts
from providers.errors import ProviderError, ProviderTimeout, ProviderUnavailable

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
T = TypeVar("T")


class DeliveryFailed(Exception):
    """The adapter could not post the images; the hold is released."""


class Delivery(Protocol):
    """What an adapter gives the flow so it can show progress and hand over images."""

    async def progress(self, event: ProgressEvent) -> None: ...

    async def deliver(self, images: Sequence[GeneratedImage], generation: Generation) -> int:
        """Post the images; return how many reached the user, or raise ``DeliveryFailed``."""
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

    @property
    def id(self) -> str:
        return self.generation.id

    @property
    def price(self) -> int:
        return self.generation.price

    @property
    def summary(self) -> str:
        """What an adapter shows above the Generate button: the request, its price, the balance."""
        return messages.quote_summary(
            self.request.model.display_name,
            self.request.count,
            self.request.resolution,
            self.request.aspect_ratio,
            self.price,
            self.balance.available,
        )


@dataclass(frozen=True)
class HeldGeneration:
    """A confirmed request whose credits are held, ready to generate."""

    generation: Generation
    reference_images: tuple[ReferenceImage, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How a confirmed generation ended: the settled record, the images delivered, the new balance."""

    generation: Generation
    """Settled, unless the database could not be reached to settle it (the sweep will)."""
    images: tuple[GeneratedImage, ...]
    balance: Balance | None
    """None when the database could not be reached to read it."""
    message: str
    """One sentence for the user: what happened and what it cost."""

    @property
    def report(self) -> str:
        """What an adapter shows when the generation ends: the sentence, then the balance."""
        return messages.outcome_report(self.message, self.balance)


@dataclass(frozen=True)
class Retry:
    """How long the flow keeps trying to record an outcome the database did not take.

    An outage, a dropped connection or a long wait for a pooled connection must
    not turn images already posted into images given away, nor leave the user
    without an outcome. Only such failures are tried again (``ledger.transient``),
    which is safe because settling twice returns the first settlement; a
    refusal or a bug fails at once.
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


class ImagineService:
    """The service layer every adapter calls."""

    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        providers: ProviderPool,
        credits: Credits,
        quote_ttl: timedelta = timedelta(minutes=10),
        generation_timeout: timedelta = timedelta(minutes=3),
        provider_concurrency: int = 4,
        provider_limits: Mapping[str, int] | None = None,
        user_concurrency: int = 2,
        heartbeat_interval: timedelta = timedelta(minutes=1),
        settle_retry: Retry = Retry(),
        clock: Clock = ledger.utc_now,
    ) -> None:
        self.catalog = catalog
        self.providers = providers
        self.credits = credits
        self.ledger = credits.ledger
        self.quote_ttl = quote_ttl
        self.generation_timeout = generation_timeout
        self.heartbeat_interval = heartbeat_interval
        """How often this process renews the leases of its generations and sweeps abandoned ones."""
        self.settle_retry = settle_retry
        self._clock = clock
        limits = provider_limits or {}
        self._slots = {
            name: ProviderSlots(limits.get(name, provider_concurrency))
            for name in providers.providers
        }
        # One heavy user must not take every provider slot: each has a few of their own.
        self._user_slots: defaultdict[str, ProviderSlots] = defaultdict(
            lambda: ProviderSlots(user_concurrency)
        )
        # Reference images are too large for the quote row; they wait here for the click,
        # until their quote expires.
        self._reference_images: dict[str, tuple[datetime, tuple[ReferenceImage, ...]]] = {}
        self._in_flight: set[str] = set()
        self._posted: dict[str, tuple[GeneratedImage, ...]] = {}
        """Images already in the channel, by generation, until it is settled."""
        self._idle = asyncio.Event()
        self._idle.set()
        self.accepting = True
        self.metrics = Metrics()
        self.metrics.in_flight.set_function(lambda: len(self._in_flight))
        for name, slots in self._slots.items():
            self.metrics.queue_depth.labels(name).set_function(lambda slots=slots: slots.waiting)
        self.platform_checks: dict[str, HealthCheck] = {}
        """Adapters add ``name → is connected`` here for ``/readyz``."""

    async def quote(
        self, account: str, request: ImagineRequest, *, channel: str | None = None
    ) -> Quote:
        """Price a validated request against the balance; refuses before any button if it cannot be paid."""
        if not self.accepting:
            raise ShuttingDown()
        try:
            balance, generation = await self.ledger.open_quote(
                NewGeneration(
                    id=new_request_id(),
                    account_id=account,
                    model_id=request.model.id,
                    provider=request.model.provider,
                    provider_model=request.model.provider_model,
                    prompt=request.prompt,
                    options={
                        "resolution": request.resolution,
                        "aspect_ratio": request.aspect_ratio,
                        "reference_images": len(request.reference_images),
                        "model_name": request.model.display_name,
                        # What was priced is what is made, whatever the registry says later.
                        "provider_options": dict(request.model.provider_options),
                    },
                    images_requested=request.count,
                    credits_per_image=request.credits_per_image,
                    expires_at=self._clock() + self.quote_ttl,
                    channel=channel,
                ),
                starting_credits=self.credits.starting_credits,
            )
        except ledger.LedgerError as refusal:
            raise _translate(refusal) from None
        now = self._clock()
        for expired in [key for key, (until, _) in self._reference_images.items() if until <= now]:
            del self._reference_images[expired]
        if request.reference_images:
            self._reference_images[generation.id] = (
                generation.expires_at,
                request.reference_images,
            )
        return Quote(generation, request, balance)

    async def cancel(self, generation_id: str, account: str) -> Generation:
        try:
            generation = await self.ledger.cancel(generation_id, account)
        except ledger.LedgerError as refusal:
            raise _translate(refusal) from None
        self._reference_images.pop(generation_id, None)
        return generation

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
        _, references = self._reference_images.get(generation_id, (None, ()))
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
        self._reference_images.pop(generation_id, None)
        self._in_flight.add(generation_id)
        self._idle.clear()
        return HeldGeneration(generation, references)

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
                outcome = await self._run(generation, held.reference_images, delivery, start_by)
            except Exception:
                logger.exception("generation %s failed unexpectedly", generation.id)
                outcome = await self._release(generation, "internal")
            except BaseException:
                # Cancelled at shutdown: the hold must not outlive the generation, and
                # the shutdown must not wait on an unreachable database (the next
                # start-up settles what this could not). Images already posted are
                # charged, not given away.
                posted = self._posted.get(generation.id)
                stopped = await asyncio.shield(
                    self._capture(generation, posted, None, retry=_ONE_TRY)
                    if posted
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

    @property
    def lease(self) -> timedelta:
        """How long a hold of this process's is its alone to settle without a renewal."""
        return _LEASE_IN_HEARTBEATS * self.heartbeat_interval

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def stop_accepting(self) -> None:
        """Refuse new quotes and clicks (with a sentence saying why); running generations go on."""
        self.accepting = False

    async def drain(self, grace_seconds: float) -> bool:
        """Wait up to ``grace_seconds`` for running generations to end; True if they all did."""
        try:
            async with asyncio.timeout(grace_seconds):
                await self._idle.wait()
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
        self,
        generation: Generation,
        references: tuple[ReferenceImage, ...],
        delivery: Delivery,
        start_by: float | None,
    ) -> Outcome:
        provider = self.providers.providers.get(generation.provider)
        if provider is None:
            return await self._release(generation, "not_configured")
        if generation.options.get("reference_images", 0) > len(references):
            return await self._release(generation, "references_lost")
        model_name = str(generation.options.get("model_name", generation.model_id))
        model = self.catalog.registry.get(generation.model_id)
        time_limit = self.generation_timeout.total_seconds()
        request = ImageRequest(
            provider_model=generation.provider_model,
            prompt=generation.prompt,
            count=generation.images_requested,
            resolution=str(generation.options["resolution"]),
            aspect_ratio=str(generation.options["aspect_ratio"]),
            reference_images=references,
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
                self._user_slots[generation.account_id].acquire(queued, start_by),
                self._slots[generation.provider].acquire(queued, start_by),
            ):
                await _report(delivery, Generating(model_name, 0, generation.images_requested))
                provider_started = time.monotonic()
                with recording_attempts() as calls:
                    try:
                        # The provider keeps the finished images at the time limit, which
                        # starts with this call; this only stops one that ignores it.
                        async with asyncio.timeout(self._longest_generation_seconds()):
                            result = await provider.generate(request, image_done)
                    finally:
                        self.metrics.provider_latency.labels(generation.provider).observe(
                            time.monotonic() - provider_started
                        )
                        await self._record_attempts(generation, calls)
        except QueuedTooLong:
            return await self._release(generation, "queued_too_long")
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
        try:
            delivered = min(await delivery.deliver(images, generation), len(images))
        except DeliveryFailed as failure:
            logger.warning("delivery of %s failed: %s", generation.id, failure)
            return await self._release(generation, "delivery_failed", str(failure))
        except Exception:
            logger.exception("delivery of %s failed unexpectedly", generation.id)
            return await self._release(generation, "delivery_failed")
        if delivered <= 0:
            return await self._release(generation, "delivery_failed")
        posted = self._posted[generation.id] = tuple(images[:delivered])
        return await self._capture(generation, posted, partial_failure)

    async def _record_attempts(self, generation: Generation, calls: AttemptLog) -> None:
        """Keep the provider's calls on the generation and count them, whatever they came to.

        Only a record: if the database does not take it, the generation goes on.
        """
        for call in calls.attempts:
            self.metrics.provider_attempts.labels(generation.provider, str(call.outcome)).inc()
        try:
            await self.ledger.record_attempts(
                generation.id, [call.as_json() for call in calls.attempts]
            )
        except Exception:
            logger.warning(
                "could not record the provider calls of %s", generation.id, exc_info=True
            )

    async def _capture(
        self,
        generation: Generation,
        posted: tuple[GeneratedImage, ...],
        partial_failure: ProviderError | None,
        *,
        retry: Retry | None = None,
    ) -> Outcome:
        """Charge for the images posted; if the database stays unreachable, the sweep will."""
        retry = retry or self.settle_retry
        try:
            # Recorded first, so that a sweep settling this later charges for what was posted.
            await retry.run(
                partial(self.ledger.mark_posted, generation.id, len(posted)),
                f"record the images posted for {generation.id}",
                self.metrics.settlement_retries.inc,
            )
            settled = await retry.run(
                partial(self.ledger.capture, generation.id, len(posted)),
                f"capture the credits of {generation.id}",
                self.metrics.settlement_retries.inc,
            )
        except Exception:
            logger.exception("could not settle %s after posting its images", generation.id)
            return Outcome(generation, posted, None, messages.CAPTURE_DELAYED)
        if settled.images_delivered != len(posted):
            sentence = messages.settled_before_capture(len(posted), settled)
            self.metrics.settled_before_capture.labels(settled.model_id).inc()
            logger.warning(
                "generation %s posted %d images after it was settled for %d (charged %d)",
                settled.id,
                len(posted),
                settled.images_delivered,
                settled.credits_charged,
            )
        else:
            sentence = messages.outcome(settled, partial_failure)
            self.metrics.settlements.labels("capture", str(settled.status)).inc()
        return Outcome(settled, posted, await self._balance(settled.account_id, retry), sentence)

    async def _release(
        self, generation: Generation, code: str, detail: str = "", *, retry: Retry | None = None
    ) -> Outcome:
        sentence = messages.failure(code, detail)
        retry = retry or self.settle_retry
        try:
            settled = await retry.run(
                partial(
                    self.ledger.release,
                    generation.id,
                    error_code=code,
                    error_message=sentence,
                ),
                f"release the credits of {generation.id}",
                self.metrics.settlement_retries.inc,
            )
        except Exception:
            logger.exception("could not release the hold of %s", generation.id)
            return Outcome(
                generation, (), None, messages.failure(code, detail, returned_later=True)
            )
        self.metrics.settlements.labels("release", code).inc()
        return Outcome(settled, (), await self._balance(settled.account_id, retry), sentence)

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
            if generation_id in self._in_flight:
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
                await self.ledger.renew_leases(frozenset(self._in_flight), self.lease)
                settled = await self.recover()
            except Exception:
                logger.exception("the periodic sweep of abandoned holds failed; trying again later")
                continue
            for generation in settled:
                logger.warning(
                    "settled generation %s, abandoned by %s", generation.id, generation.owner
                )


class QueuedTooLong(Exception):
    """No slot came free while enough of the reply window was left to use one."""


class ProviderSlots:
    """A concurrency limit (a provider's, or one user's); callers that must wait are told their place."""

    def __init__(self, limit: int) -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextlib.asynccontextmanager
    async def acquire(
        self, on_queued: Callable[[int], Awaitable[None]], start_by: float | None = None
    ) -> AsyncIterator[None]:
        """A slot; raises ``QueuedTooLong`` if none came free by ``start_by`` (the loop's time)."""
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
        try:
            yield
        finally:
            self._semaphore.release()


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
    raise refusal
