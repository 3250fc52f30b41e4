"""Buying credit packs: Stripe Checkout links and Stripe's webhook, Discord's entitlements.

Every platform sells the packs of ``[packs]`` in ``pricing.toml``; whatever
the source, a payment reaches the ledger the same way: ``Ledger.fulfil_purchase``
grants the pack once per purchase, ``Ledger.reverse_purchase`` takes back what
a refund, dispute or revoked entitlement says. The credits always come from
the purchase row the bot wrote when the buyer asked (from the pricing file),
never from what an event carries. The buyer is told in the conversation where
they asked, through the notifier their platform registered.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import stripe

from bot import messages
from bot.errors import RequestError
from bot.observability import Metrics
from bot.pricing import Pack
from bot.settings import Settings
from ledger import (
    Ledger,
    NewPurchase,
    PaymentEvent,
    Purchase,
    PurchaseChange,
    PurchaseStatus,
    utc_now,
)

logger = logging.getLogger(__name__)

# Left on, the library writes an id under the home folder and reports the platform to Stripe.
stripe.enable_telemetry = False

CHECKOUT_LIFETIME = timedelta(minutes=30)
"""How long a Checkout link can be paid; Stripe's shortest."""
WEBHOOK_PATH = "/stripe/webhook"
SIGNATURE_TOLERANCE_SECONDS = 300
"""An event signed longer ago than this is refused (a replayed capture)."""

STRIPE = "stripe"
DISCORD = "discord"

_PAID_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
_CLOSING_EVENTS = {
    "checkout.session.async_payment_failed": PurchaseStatus.FAILED,
    "checkout.session.expired": PurchaseStatus.EXPIRED,
}
_DISPUTE_EVENTS = {"charge.dispute.created": True, "charge.dispute.funds_reinstated": False}


@dataclass(frozen=True)
class Notice:
    """A sentence for a buyer, to be said where they asked (``channel``, the platform's own)."""

    account: str
    channel: str | None
    text: str


Notify = Callable[[Notice], Awaitable[None]]


@dataclass(frozen=True)
class StripeConfig:
    """What selling through Stripe takes: a secret key, the webhook's signing secret, and the
    public address Checkout sends buyers back to."""

    api_key: str
    webhook_secret: str
    public_url: str
    api_base: str | None = None
    """Another Stripe-compatible API (tests)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeConfig | None:
        """None unless all three are set: half a setup would take money it never hears about."""
        if not (settings.stripe_api_key and settings.stripe_webhook_secret and settings.public_url):
            return None
        return cls(
            settings.stripe_api_key,
            settings.stripe_webhook_secret,
            settings.public_url.rstrip("/"),
            settings.stripe_api_base,
        )


@dataclass(frozen=True)
class CheckoutLink:
    pack: Pack
    url: str
    expires_at: datetime


class PurchaseRefused(Exception):
    """A payment event the bot will not act on; admins are alerted with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Purchases:
    """The packs for sale, and every payment event turned into ledger changes, once."""

    def __init__(
        self,
        ledger: Ledger,
        packs: Mapping[str, Pack],
        metrics: Metrics,
        *,
        stripe_config: StripeConfig | None = None,
        allow_test_purchases: bool = False,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.ledger = ledger
        self.packs = packs
        self.metrics = metrics
        self.stripe_config = stripe_config
        self.allow_test_purchases = allow_test_purchases
        self._clock = clock
        self.notifiers: dict[str, Notify] = {}
        """By platform (an account's prefix, ``discord``, ``slack``, ``console``): how to tell
        a buyer something; registered by each adapter as it starts."""
        self._stripe: stripe.StripeClient | None = None
        self._stripe_http: stripe.AIOHTTPClient | None = None
        if stripe_config is not None:
            # Named, not left to the library, which would pick httpx whenever it is importable.
            self._stripe_http = stripe.AIOHTTPClient()
            self._stripe = stripe.StripeClient(
                stripe_config.api_key,
                base_addresses={"api": stripe_config.api_base} if stripe_config.api_base else {},
                http_client=self._stripe_http,
            )

    async def aclose(self) -> None:
        """Close the connections to Stripe (the client has no close of its own)."""
        if self._stripe_http is not None:
            await self._stripe_http.close_async()

    # -- what is for sale -----------------------------------------------------------

    @property
    def sells_through_stripe(self) -> bool:
        return self._stripe is not None and bool(self.packs)

    def discord_packs(self) -> list[Pack]:
        """The packs Discord users can buy: those with a Discord SKU. Discord's price-parity
        rule forbids selling a pack there only another way."""
        return [pack for pack in self.packs.values() if pack.discord_sku]

    def hidden_on_discord(self) -> list[Pack]:
        return [pack for pack in self.packs.values() if not pack.discord_sku]

    def pack(self, pack_id: str) -> Pack:
        found = self.packs.get(pack_id.strip().lower())
        if found is None:
            raise RequestError(messages.unknown_pack(pack_id, list(self.packs)))
        return found

    def pack_for_sku(self, sku_id: str) -> Pack | None:
        return next((pack for pack in self.packs.values() if pack.discord_sku == sku_id), None)

    # -- Stripe Checkout ------------------------------------------------------------

    async def checkout(self, account: str, pack_id: str, channel: str | None) -> CheckoutLink:
        """A Checkout Session for one pack, bought by ``account``, paid within 30 minutes.

        The purchase is recorded first, so the webhook can check that a session
        is one the bot created for that account.
        """
        pack = self.pack(pack_id)
        if self._stripe is None or self.stripe_config is None:
            raise RequestError(messages.STRIPE_NOT_SET_UP)
        purchase_id = f"pur_{uuid.uuid4().hex}"
        await self.ledger.open_purchase(
            NewPurchase(
                id=purchase_id,
                source=STRIPE,
                account_id=account,
                pack=pack.id,
                credits=pack.credits,
                amount=pack.amount,
                currency=pack.currency,
                channel=channel,
            )
        )
        # A little over Stripe's shortest, so the time the call takes cannot bring it under.
        expires_at = self._clock() + CHECKOUT_LIFETIME + timedelta(seconds=30)
        public_url = self.stripe_config.public_url
        line_item: dict[str, Any] = (
            {"price": pack.stripe_price, "quantity": 1}
            if pack.stripe_price
            else {
                "price_data": {
                    "currency": pack.currency,
                    "unit_amount": pack.amount,
                    "product_data": {"name": messages.pack_product_name(pack.id, pack.credits)},
                },
                "quantity": 1,
            }
        )
        session = await self._stripe.v1.checkout.sessions.create_async(
            {
                "mode": "payment",
                "client_reference_id": account,
                "metadata": {"purchase_id": purchase_id, "pack": pack.id},
                "line_items": [line_item],
                "success_url": f"{public_url}/stripe/paid",
                "cancel_url": f"{public_url}/stripe/cancelled",
                "expires_at": int(expires_at.timestamp()),
            },
            # The same purchase asked twice (a retried call) makes one session.
            {"idempotency_key": purchase_id},
        )
        await self.ledger.set_purchase_external_id(purchase_id, session.id)
        if session.url is None:
            raise RuntimeError(f"Stripe returned Checkout Session {session.id} without a URL")
        return CheckoutLink(pack, session.url, expires_at)

    async def offer(self, account: str, channel: str | None) -> str:
        """What ``/buy`` answers on Slack and in the console: every pack with a Checkout link
        of its own, for this buyer only."""
        if not self.packs:
            return messages.NO_PACKS
        links = await asyncio.gather(
            *(self.checkout(account, pack_id, channel) for pack_id in self.packs)
        )
        return messages.buy_links(
            [
                messages.checkout_line(
                    link.pack.id, link.pack.credits, link.pack.shown_price, link.url
                )
                for link in links
            ],
            int(CHECKOUT_LIFETIME.total_seconds() // 60),
        )

    async def stripe_webhook(self, payload: bytes, signature: str | None) -> int:
        """Handle one delivery to ``/stripe/webhook``; the HTTP status to answer.

        400 for a body whose signature does not check (nothing is done); 200
        once the event is handled, or recorded as refused for admins to look
        at (Stripe would only send it again); 500 when the ledger failed, so
        Stripe retries later.
        """
        if self.stripe_config is None:
            return 404
        secret = self.stripe_config.webhook_secret
        try:
            event = stripe.Webhook.construct_event(
                payload, signature, secret, tolerance=SIGNATURE_TOLERANCE_SECONDS
            )
        except (ValueError, stripe.SignatureVerificationError) as refusal:
            self._alert(STRIPE, "bad_signature", str(refusal))
            return 400
        try:
            outcome = await self._stripe_event(event)
        except PurchaseRefused as refusal:
            self._alert(STRIPE, refusal.reason, f"event {event.id}: {refusal.detail}")
            await self.ledger.record_payment_event(PaymentEvent(event.id, event.type))
            return 200
        except Exception:
            logger.exception(
                "Stripe event %s (%s) failed; Stripe will send it again", event.id, event.type
            )
            return 500
        self.metrics.purchases.labels(STRIPE, outcome).inc()
        return 200

    async def _stripe_event(self, event: stripe.Event) -> str:
        """Act on one verified event; what it did, for the metrics."""
        paid_event = PaymentEvent(event.id, event.type)
        found = event.data.object.to_dict()
        if event.type in _PAID_EVENTS or event.type in _CLOSING_EVENTS:
            purchase = await self._session_purchase(found)
            if event.type in _CLOSING_EVENTS:
                change = await self.ledger.close_purchase(
                    purchase.id, paid_event, _CLOSING_EVENTS[event.type]
                )
                return "repeated" if change.repeated else "closed"
            if found.get("payment_status") != "paid":
                # A delayed payment (a bank debit): async_payment_succeeded says when it is paid.
                return "ignored"
            change = await self.ledger.fulfil_purchase(
                purchase.id, paid_event, payment_reference=found.get("payment_intent")
            )
        elif event.type == "charge.refunded":
            purchase = await self._payment_purchase(found.get("payment_intent"))
            change = await self.ledger.reverse_purchase(
                purchase.id,
                paid_event,
                amount_refunded=int(found.get("amount_refunded") or 0),
                payment_reference=found.get("payment_intent"),
            )
        elif event.type in _DISPUTE_EVENTS:
            purchase = await self._payment_purchase(found.get("payment_intent"))
            change = await self.ledger.reverse_purchase(
                purchase.id,
                paid_event,
                disputed=_DISPUTE_EVENTS[event.type],
                payment_reference=found.get("payment_intent"),
            )
        else:
            return "ignored"
        await self._tell_buyer(change, event.type)
        return _outcome(change)

    async def _session_purchase(self, session: Mapping[str, Any]) -> Purchase:
        """The purchase a Checkout Session (as a plain dict) concerns, checked against what the
        bot recorded when it created the session; ``PurchaseRefused`` for anything else."""
        session_id = session.get("id")
        purchase_id = (session.get("metadata") or {}).get("purchase_id")
        purchase = await self.ledger.purchase(purchase_id) if purchase_id else None
        if purchase is None or purchase.source != STRIPE or purchase.external_id != session_id:
            raise PurchaseRefused(
                "unknown_session", f"Checkout Session {session_id} was not created by this bot"
            )
        if purchase.account_id != session.get("client_reference_id"):
            raise PurchaseRefused(
                "wrong_account",
                f"Checkout Session {session_id} names {session.get('client_reference_id')!r},"
                f" but was created for {purchase.account_id}",
            )
        if (session.get("amount_total"), session.get("currency")) != (
            purchase.amount,
            purchase.currency,
        ):
            raise PurchaseRefused(
                "amount_mismatch",
                f"Checkout Session {session_id} is for {session.get('amount_total')}"
                f" {session.get('currency')}, the {purchase.pack} pack for"
                f" {purchase.amount} {purchase.currency}",
            )
        return purchase

    async def _payment_purchase(self, payment_intent: str | None) -> Purchase:
        """The purchase a refund or dispute names by its PaymentIntent. One that arrives
        before the session's completion is found by asking Stripe for the session."""
        if not payment_intent:
            raise PurchaseRefused("unknown_payment", "the event names no PaymentIntent")
        purchase = await self.ledger.purchase_by_payment(payment_intent)
        if purchase is None and self._stripe is not None:
            sessions = await self._stripe.v1.checkout.sessions.list_async(
                {"payment_intent": payment_intent, "limit": 1}
            )
            for session in sessions.data:
                purchase = await self._session_purchase(session.to_dict())
        if purchase is None:
            raise PurchaseRefused(
                "unknown_payment", f"PaymentIntent {payment_intent} is not a purchase of this bot"
            )
        return purchase

    # -- Discord's purchases --------------------------------------------------------

    def discord_purchase_allowed(self, test_mode: bool) -> bool:
        return not test_mode or self.allow_test_purchases

    async def entitlement_created(
        self,
        entitlement_id: str,
        account: str,
        sku_id: str,
        *,
        test_mode: bool,
        channel: str | None = None,
    ) -> PurchaseChange | None:
        """Grant the pack a consumable SKU's entitlement bought, once per entitlement (the
        caller consumes it afterwards). None, and nothing granted, for a SKU that sells no
        pack or a test purchase while those are not allowed."""
        pack = self.pack_for_sku(sku_id)
        if pack is None:
            self._alert(DISCORD, "unknown_sku", f"entitlement {entitlement_id} is for SKU {sku_id}")
            return None
        if not self.discord_purchase_allowed(test_mode):
            logger.info(
                "Discord test purchase %s not granted: DISCORD_ALLOW_TEST_PURCHASES is off",
                entitlement_id,
            )
            return None
        purchase = await self.ledger.open_purchase(
            NewPurchase(
                id=f"discord-{entitlement_id}",
                source=DISCORD,
                account_id=account,
                pack=pack.id,
                credits=pack.credits,
                amount=pack.amount,
                currency=pack.currency,
                external_id=entitlement_id,
                channel=channel,
            )
        )
        change = await self.ledger.fulfil_purchase(
            purchase.id, PaymentEvent(f"discord:entitlement:{entitlement_id}", "entitlement_create")
        )
        self.metrics.purchases.labels(DISCORD, _outcome(change)).inc()
        await self._tell_buyer(change, "entitlement_create")
        return change

    async def entitlement_deleted(self, entitlement_id: str) -> PurchaseChange | None:
        """Discord refunded or revoked an entitlement: its pack is taken back."""
        purchase = await self.ledger.purchase_by_external_id(DISCORD, entitlement_id)
        if purchase is None:
            return None
        change = await self.ledger.reverse_purchase(
            purchase.id,
            PaymentEvent(f"discord:entitlement_delete:{entitlement_id}", "entitlement_delete"),
            amount_refunded=purchase.amount,
        )
        self.metrics.purchases.labels(DISCORD, _outcome(change)).inc()
        await self._tell_buyer(change, "entitlement_delete")
        return change

    # -- telling people -------------------------------------------------------------

    async def _tell_buyer(self, change: PurchaseChange, event_type: str) -> None:
        purchase = change.purchase
        balance = change.balance
        if change.repeated or balance is None:
            return
        if change.granted:
            text = messages.purchase_paid(
                purchase.pack, purchase.credits, balance.available, balance.owed
            )
        elif change.taken_back:
            text = messages.purchase_taken_back(
                purchase.pack, change.taken_back, event_type, balance.available, balance.owed
            )
        elif change.given_back:
            text = messages.purchase_given_back(purchase.pack, change.given_back, balance.available)
        else:
            return
        notify = self.notifiers.get(purchase.account_id.split(":", 1)[0])
        if notify is None:
            return
        try:
            await notify(Notice(purchase.account_id, purchase.channel, text))
        except Exception:
            # The credits are right whatever happens to the message.
            logger.exception(
                "could not tell %s about purchase %s", purchase.account_id, purchase.id
            )

    def _alert(self, source: str, reason: str, detail: str) -> None:
        """For admins: a log line at error level and a metric they can alert on."""
        logger.error("payment event refused (%s): %s", reason, detail)
        self.metrics.purchase_alerts.labels(source, reason).inc()


def _outcome(change: PurchaseChange) -> str:
    if change.repeated:
        return "repeated"
    if change.granted:
        return "granted"
    if change.taken_back:
        return "taken_back"
    if change.given_back:
        return "given_back"
    return "recorded"
