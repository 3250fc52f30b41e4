"""A loopback fake of the parts of Stripe's API that credit-pack purchases use, with state.

The real ``stripe`` library talks to it: point a ``StripeClient`` at ``api_base``
(``base_addresses={"api": fake.api_base}``) with an ``AIOHTTPClient`` and call the
``*_async`` methods. It serves Checkout Sessions in ``mode=payment`` (create,
retrieve, list, expire, line items), reads of the objects a purchase makes
(PaymentIntent, Charge, Dispute, Price, Event), and a stand-in for the hosted
payment page at each session's ``url``. Requests arrive form-encoded as
stripe-python sends them (``line_items[0][price_data][currency]=usd``); answers and
errors have Stripe's shapes, so the library raises its own exception classes.

Unlike stripe-mock it keeps state, and tests move that state as a buyer, a bank or
a card network would (``complete``, ``async_payment``, ``expire``, ``refund``,
``dispute``, ``reinstate``). Each of those returns the webhook event Stripe would
send, which ``deliver`` posts to the bot signed with Stripe's scheme (or forged,
unsigned or stale, as a test chooses). Nothing is delivered by itself: Stripe's
deliveries are at least once, late and unordered, so a test sends each event when,
as often and in the order it wants.

The fake refuses parameters it does not model ("Received unknown parameter"), so a
typo in the bot fails here as it would at Stripe; a real parameter the bot comes to
need is one to add here.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import html
import json
import re
import secrets
import string
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import stripe
from aiohttp import web

Json = dict[str, Any]

API_KEY = "sk_test_loopback"
WEBHOOK_SECRET = "whsec_loopback"
API_VERSION: str = stripe.api_version
"""The version events are rendered in by default: the one the installed library pins,
as for a webhook endpoint created with it."""

MIN_EXPIRY_SECONDS = 30 * 60
MAX_EXPIRY_SECONDS = 24 * 60 * 60
DEFAULT_EXPIRY_SECONDS = MAX_EXPIRY_SECONDS
METADATA_KEYS = 50
METADATA_KEY_LENGTH = 40
METADATA_VALUE_LENGTH = 500
CLIENT_REFERENCE_ID_LENGTH = 200
MAX_QUANTITY = 999_999
MAX_AMOUNT = 99_999_999
MINIMUM_CHARGE = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "chf": 50, "jpy": 50}
"""Smallest non-zero total Checkout takes, in minor units, for the currencies a pack is likely sold in."""
ZERO_DECIMAL = frozenset({"jpy", "krw", "vnd", "clp", "isk", "ugx", "xaf", "xof"})
"""Currencies whose amounts are whole units, not hundredths."""
_DELIVERY_PATIENCE_SECONDS = 30
_V0_SECRET = "whsec_not_a_real_secret"
"""Test-mode deliveries carry a ``v0`` signature made with a fake secret; receivers must ignore it."""
_BASE62 = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Call:
    """One API request as the fake received it."""

    method: str
    path: str
    params: Json
    """Query or form parameters, nested as Stripe reads them; values are strings as sent."""
    api_key: str | None
    idempotency_key: str | None
    stripe_version: str | None


@dataclass(frozen=True)
class Request:
    """An API request as a handler sees it: parsed, authenticated, not a replay."""

    http: web.Request
    params: Json
    id: str


Handler = Callable[[Request], Awaitable[tuple[int, Json]]]


@dataclass(frozen=True)
class _Scripted:
    status: int
    message: str
    type: str
    should_retry: bool | None


class StripeError(Exception):
    """An error answer in Stripe's shape; raised inside handlers, turned into JSON at the edge."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: Json = {"message": message, "type": type}
        if param is not None:
            self.body["param"] = param
        if code is not None:
            self.body["code"] = code
            self.body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"


def _missing(param: str) -> StripeError:
    return StripeError(
        400, f"Missing required param: {param}.", param=param, code="parameter_missing"
    )


def _invalid(param: str, message: str) -> StripeError:
    return StripeError(400, message, param=param, code="parameter_invalid")


def _no_such(kind: str, object_id: str, param: str) -> StripeError:
    return StripeError(404, f"No such {kind}: '{object_id}'", param=param, code="resource_missing")


class _Any:
    """In a parameter spec: any keys below this one (metadata)."""


class _Each:
    """In a parameter spec: an array whose every element follows ``spec``."""

    def __init__(self, spec: Mapping[str, object]) -> None:
        self.spec = spec


_LEAF = "leaf"
_ANY = _Any()
_PRODUCT_DATA = {"name": _LEAF, "description": _LEAF, "metadata": _ANY}
_LINE_ITEM = {
    "price": _LEAF,
    "quantity": _LEAF,
    "price_data": {
        "currency": _LEAF,
        "unit_amount": _LEAF,
        "product": _LEAF,
        "product_data": _PRODUCT_DATA,
    },
}
_CREATE_SESSION: Mapping[str, object] = {
    "mode": _LEAF,
    "line_items": _Each(_LINE_ITEM),
    "client_reference_id": _LEAF,
    "metadata": _ANY,
    "success_url": _LEAF,
    "cancel_url": _LEAF,
    "expires_at": _LEAF,
    "customer_email": _LEAF,
    "locale": _LEAF,
    "submit_type": _LEAF,
    "payment_intent_data": {"metadata": _ANY, "description": _LEAF},
    "expand": _Each({}),
}
_LIST_SESSIONS: Mapping[str, object] = {
    "payment_intent": _LEAF,
    "status": _LEAF,
    "limit": _LEAF,
    "starting_after": _LEAF,
    "ending_before": _LEAF,
    "expand": _Each({}),
}
_RETRIEVE: Mapping[str, object] = {"expand": _Each({})}
_LIST_LINE_ITEMS: Mapping[str, object] = {
    "limit": _LEAF,
    "starting_after": _LEAF,
    "ending_before": _LEAF,
    "expand": _Each({}),
}


class LoopbackStripe:
    """The fake; ``async with LoopbackStripe() as fake`` serves it on a free loopback port.

    State is public for tests to read: ``sessions``, ``payment_intents``, ``charges``,
    ``disputes``, ``prices``, ``products`` (by id), ``events`` (in the order made) and
    ``calls``. ``clock`` gives "now" for ``created`` stamps and the ``expires_at``
    check, in Unix seconds.
    """

    def __init__(
        self,
        api_key: str = API_KEY,
        *,
        api_version: str = API_VERSION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.api_version = api_version
        self.clock = clock
        self.api_base = ""
        """The address to give ``StripeClient(base_addresses={"api": ...})``."""
        self.calls: list[Call] = []
        self.sessions: dict[str, Json] = {}
        self.payment_intents: dict[str, Json] = {}
        self.charges: dict[str, Json] = {}
        self.disputes: dict[str, Json] = {}
        self.prices: dict[str, Json] = {}
        self.products: dict[str, Json] = {}
        self.events: list[Json] = []
        self._line_items: dict[str, list[Json]] = {}
        self._intent_data: dict[str, Json] = {}
        """What ``payment_intent_data`` asked of each session's PaymentIntent, made once it is paid."""
        self._idempotent: dict[str, tuple[str, Json, int, Json]] = {}
        self._script: deque[_Scripted] = deque()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> LoopbackStripe:
        app = web.Application()
        api = self._endpoint
        app.router.add_post("/v1/checkout/sessions", api(self._create_session))
        app.router.add_get("/v1/checkout/sessions", api(self._list_sessions))
        app.router.add_get("/v1/checkout/sessions/{id}", api(self._retrieve_session))
        app.router.add_post("/v1/checkout/sessions/{id}/expire", api(self._expire_session))
        app.router.add_get("/v1/checkout/sessions/{id}/line_items", api(self._list_line_items))
        for kind, store in (
            ("payment_intents", self.payment_intents),
            ("charges", self.charges),
            ("disputes", self.disputes),
            ("prices", self.prices),
            ("products", self.products),
        ):
            app.router.add_get(f"/v1/{kind}/{{id}}", api(self._retriever(kind, store)))
        app.router.add_get("/v1/events/{id}", api(self._retrieve_event))
        # Last, so only what no route above serves gets Stripe's "Unrecognized request URL".
        app.router.add_route("*", "/v1/{path:.*}", api(self._unrecognized))
        app.router.add_get("/c/pay/{id}", self._hosted_page)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.api_base = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    # --- Test controls: the world outside the API -------------------------------------------

    def add_price(
        self,
        price_id: str,
        unit_amount: int,
        currency: str,
        *,
        product_name: str = "Credits",
        active: bool = True,
    ) -> Json:
        """Register a one-time Price (and its Product) as the Dashboard would; returns the Price."""
        price = self._price(price_id, unit_amount, currency, self._product(product_name), active)
        return copy.deepcopy(price)

    def _price(
        self, price_id: str, unit_amount: int, currency: str, product: Json, active: bool
    ) -> Json:
        price = {
            "id": price_id,
            "object": "price",
            "active": active,
            "billing_scheme": "per_unit",
            "created": self._now(),
            "currency": currency.lower(),
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": None,
            "metadata": {},
            "nickname": None,
            "product": product["id"],
            "recurring": None,
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
        }
        self.prices[price_id] = price
        return price

    def then_error(
        self,
        status: int,
        message: str = "An unknown error occurred",
        *,
        type: str = "api_error",
        times: int = 1,
        should_retry: bool | None = None,
    ) -> None:
        """Answer the next ``times`` authenticated API requests with this error, changing nothing.

        ``should_retry`` sets ``Stripe-Should-Retry``, which stripe-python obeys over
        its own rule (it retries 409 and 5xx when ``max_network_retries`` allows).
        """
        self._script.extend([_Scripted(status, message, type, should_retry)] * times)

    def complete(self, session_id: str, *, payment: Literal["paid", "async"] = "paid") -> Json:
        """The buyer pays on the hosted page: ``checkout.session.completed``.

        ``"paid"``: a card payment that succeeds at once (``payment_status`` "paid").
        ``"async"``: a bank debit still in flight (``payment_status`` "unpaid"; the
        PaymentIntent "processing", its Charge "pending") until ``async_payment``.
        """
        if payment not in ("paid", "async"):
            raise ValueError(f"payment is 'paid' or 'async', not {payment!r}")
        session = self._session(session_id)
        if session["status"] != "open":
            raise ValueError(f"{session_id} is {session['status']}; only an open session is paid")
        paid = payment == "paid"
        now = self._now()
        intent_id = _id("pi_3")
        charge_id = _id("ch_3")
        method_id = _id("pm_1")
        method_type = "card" if paid else "us_bank_account"
        amount = session["amount_total"]
        currency = session["currency"]
        intent_extra = self._intent_data.get(session_id, {})
        metadata = dict(intent_extra.get("metadata", {}))
        self.payment_intents[intent_id] = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": amount if paid else 0,
            "capture_method": "automatic_async",
            "client_secret": f"{intent_id}_secret_{_token(25)}",
            "confirmation_method": "automatic",
            "created": now,
            "currency": currency,
            "customer": None,
            "description": intent_extra.get("description"),
            "last_payment_error": None,
            "latest_charge": charge_id,
            "livemode": False,
            "metadata": metadata,
            "payment_method": method_id,
            "payment_method_types": [method_type],
            "status": "succeeded" if paid else "processing",
        }
        self.charges[charge_id] = {
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": amount,
            "amount_refunded": 0,
            "balance_transaction": _id("txn_3") if paid else None,
            "billing_details": _billing_details(session),
            "captured": True,
            "created": now,
            "currency": currency,
            "customer": None,
            "description": intent_extra.get("description"),
            "disputed": False,
            "failure_code": None,
            "failure_message": None,
            "livemode": False,
            # A PaymentIntent's metadata is copied onto the charges it makes.
            "metadata": dict(metadata),
            "outcome": _outcome("paid") if paid else None,
            "paid": paid,
            "payment_intent": intent_id,
            "payment_method": method_id,
            "payment_method_details": _method_details(method_type),
            "receipt_email": None,
            "receipt_url": f"{self.api_base}/receipts/{charge_id}",
            "refunded": False,
            "status": "succeeded" if paid else "pending",
        }
        session.update(
            status="complete",
            payment_status="paid" if paid else "unpaid",
            payment_intent=intent_id,
            customer_details=_billing_details(session) | {"tax_exempt": "none", "tax_ids": []},
            url=None,
        )
        return self._event("checkout.session.completed", session)

    def async_payment(self, session_id: str, succeeded: bool) -> Json:
        """The delayed payment of a session completed with ``payment="async"`` settles or fails."""
        session = self._session(session_id)
        intent = self.payment_intents.get(session.get("payment_intent") or "")
        if intent is None or intent["status"] != "processing":
            raise ValueError(f"{session_id} has no payment in flight")
        charge = self.charges[intent["latest_charge"]]
        if succeeded:
            intent.update(status="succeeded", amount_received=intent["amount"])
            charge.update(
                status="succeeded",
                paid=True,
                balance_transaction=_id("txn_3"),
                outcome=_outcome("paid"),
            )
            session["payment_status"] = "paid"
            return self._event("checkout.session.async_payment_succeeded", session)
        failure = {"code": "insufficient_funds", "message": "The account has insufficient funds."}
        intent.update(
            status="requires_payment_method",
            last_payment_error={"type": "card_error", **failure},
        )
        charge.update(
            status="failed",
            failure_code=failure["code"],
            failure_message=failure["message"],
            outcome=_outcome("declined"),
        )
        return self._event("checkout.session.async_payment_failed", session)

    def expire(self, session_id: str) -> Json:
        """The session reaches its ``expires_at`` unpaid: ``checkout.session.expired``."""
        session = self._session(session_id)
        if session["status"] != "open":
            raise ValueError(f"{session_id} is {session['status']}; only an open session expires")
        self._expire(session)
        return self._event("checkout.session.expired", session)

    def refund(self, payment_intent: str, amount: int) -> Json:
        """Refund ``amount`` more of a paid PaymentIntent's charge (from the Dashboard, say).

        Refunds add up, as at Stripe: the event's Charge has the total ``amount_refunded``,
        and ``refunded`` once that is the whole ``amount``.
        """
        charge = self._paid_charge(payment_intent)
        if amount <= 0 or charge["amount_refunded"] + amount > charge["amount"]:
            raise ValueError(
                f"cannot refund {amount} of {charge['amount']} "
                f"(already refunded {charge['amount_refunded']})"
            )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return self._event("charge.refunded", charge)

    def dispute(
        self, payment_intent: str, *, amount: int | None = None, reason: str = "fraudulent"
    ) -> Json:
        """The buyer's bank disputes the payment: ``charge.dispute.created``.

        ``amount`` defaults to what is left of the charge after refunds. (Stripe also
        sends ``charge.dispute.funds_withdrawn``; the fake builds only the first event.)
        """
        charge = self._paid_charge(payment_intent)
        disputed = charge["amount"] - charge["amount_refunded"] if amount is None else amount
        dispute_id = _id("du_1")
        now = self._now()
        dispute = {
            "id": dispute_id,
            "object": "dispute",
            "amount": disputed,
            "balance_transactions": [],
            "charge": charge["id"],
            "created": now,
            "currency": charge["currency"],
            "evidence": {},
            "evidence_details": {
                "due_by": now + 7 * 24 * 60 * 60,
                "has_evidence": False,
                "past_due": False,
                "submission_count": 0,
            },
            "is_charge_refundable": False,
            "livemode": False,
            "metadata": {},
            "payment_intent": payment_intent,
            "payment_method_details": {
                "card": {"brand": "visa", "case_type": "chargeback", "network_reason_code": "10.4"},
                "type": "card",
            },
            "reason": reason,
            "status": "needs_response",
        }
        self.disputes[dispute_id] = dispute
        charge["disputed"] = True
        return self._event("charge.dispute.created", dispute)

    def reinstate(self, dispute_id: str) -> Json:
        """The dispute is decided for the seller: ``charge.dispute.funds_reinstated``."""
        dispute = self.disputes.get(dispute_id)
        if dispute is None:
            raise KeyError(f"no dispute {dispute_id}")
        if dispute["status"] == "won":
            raise ValueError(f"{dispute_id} was already reinstated")
        dispute["status"] = "won"
        return self._event("charge.dispute.funds_reinstated", dispute)

    # --- Webhooks ----------------------------------------------------------------------------

    def sign(self, payload: bytes, secret: str, timestamp: int | None = None) -> str:
        """The ``Stripe-Signature`` header for ``payload``: ``t=…,v1=…`` (HMAC-SHA256 of ``"{t}.{payload}"``).

        ``timestamp`` defaults to the real time, which is what the receiver checks the
        300-second tolerance against, whatever ``clock`` says.
        """
        stamp = int(time.time()) if timestamp is None else timestamp
        signed = f"{stamp}.".encode() + payload
        v1 = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        v0 = hmac.new(_V0_SECRET.encode(), signed, hashlib.sha256).hexdigest()
        return f"t={stamp},v1={v1},v0={v0}"

    @staticmethod
    def payload(event: Json) -> bytes:
        """The raw body Stripe sends for ``event`` (indented JSON); signatures cover these bytes."""
        return json.dumps(event, indent=2).encode()

    async def deliver(
        self,
        url: str,
        event: Json,
        secret: str | None,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> tuple[int, str]:
        """POST ``event`` to a webhook endpoint as Stripe does; returns its status and body.

        The header is ``sign(payload, secret, timestamp)`` unless ``signature`` gives
        another (a forgery); with ``secret=None`` and no ``signature`` it is left out.
        """
        body = self.payload(event)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Cache-Control": "no-cache",
        }
        if signature is None and secret is not None:
            signature = self.sign(body, secret, timestamp)
        if signature is not None:
            headers["Stripe-Signature"] = signature
        timeout = aiohttp.ClientTimeout(total=_DELIVERY_PATIENCE_SECONDS)
        async with (
            aiohttp.ClientSession(timeout=timeout) as client,
            client.post(url, data=body, headers=headers) as response,
        ):
            return response.status, await response.text()

    # --- The API -----------------------------------------------------------------------------

    def _endpoint(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(request: web.Request) -> web.Response:
            return await self._serve(request, handler)

        return serve

    async def _serve(self, request: web.Request, handler: Handler) -> web.Response:
        """Record, authenticate, replay idempotent POSTs, and turn errors into Stripe's shape."""
        request_id = _id("req_", 14)
        key = _bearer(request.headers.get("Authorization", ""))
        idempotency_key = request.headers.get("Idempotency-Key")
        encoded = await request.text() if request.method == "POST" else request.query_string
        try:
            params = _parse(encoded)
        except StripeError as error:
            params, malformed = {}, error
        else:
            malformed = None
        self.calls.append(
            Call(
                request.method,
                request.path,
                params,
                key,
                idempotency_key,
                request.headers.get("Stripe-Version"),
            )
        )
        try:
            self._authenticate(key)
            if malformed is not None:
                raise malformed
            if self._script:
                scripted = self._script.popleft()
                response = _error_response(
                    StripeError(scripted.status, scripted.message, type=scripted.type), request_id
                )
                if scripted.should_retry is not None:
                    response.headers["Stripe-Should-Retry"] = str(scripted.should_retry).lower()
                return response
            replay = self._replay(request, params, idempotency_key, request_id)
            if replay is not None:
                return replay
            status, body = await handler(Request(request, params, request_id))
        except StripeError as error:
            return _error_response(error, request_id)
        if request.method == "POST" and idempotency_key:
            self._idempotent[idempotency_key] = (request.path, params, status, body)
        return _json_response(status, body, request_id, idempotency_key)

    def _authenticate(self, key: str | None) -> None:
        if not key:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.",
            )
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            shown = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
            raise StripeError(401, f"Invalid API Key provided: {shown}")

    def _replay(
        self, request: web.Request, params: Json, idempotency_key: str | None, request_id: str
    ) -> web.Response | None:
        """Stripe answers a POST whose key it has seen with the first answer, if the request is the same."""
        if request.method != "POST" or not idempotency_key:
            return None
        seen = self._idempotent.get(idempotency_key)
        if seen is None:
            return None
        path, first_params, status, body = seen
        if (path, first_params) != (request.path, params):
            raise StripeError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{idempotency_key}' if you "
                "meant to execute a different request.",
                type="idempotency_error",
            )
        response = _json_response(status, body, request_id, idempotency_key)
        response.headers["Idempotent-Replayed"] = "true"
        return response

    async def _create_session(self, request: Request) -> tuple[int, Json]:
        params = request.params
        _check_known(params, _CREATE_SESSION)
        mode = params.get("mode")
        if mode is None:
            raise _missing("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise _invalid("mode", "Invalid mode: must be one of payment, setup, or subscription")
        if mode != "payment":
            raise _invalid("mode", f"LoopbackStripe models only mode=payment, not {mode}")
        now = self._now()
        items = [self._line_item(index, item) for index, item in _each(params, "line_items")]
        if not items:
            raise _missing("line_items")
        currencies = {item["currency"] for item in items}
        if len(currencies) > 1:
            raise _invalid("line_items", "All line items must be in the same currency.")
        currency = currencies.pop()
        total = sum(item["amount_total"] for item in items)
        minimum = MINIMUM_CHARGE.get(currency, 0)
        if 0 < total < minimum or total > MAX_AMOUNT:
            raise StripeError(
                400,
                "The Checkout Session's total amount due must add up to at least "
                f"{_money(minimum, currency)} and at most {_money(MAX_AMOUNT, currency)}",
            )
        expires_at = now + DEFAULT_EXPIRY_SECONDS
        if "expires_at" in params:
            expires_at = _integer(params["expires_at"], "expires_at")
            if expires_at - now < MIN_EXPIRY_SECONDS:
                raise _invalid(
                    "expires_at",
                    "The `expires_at` timestamp must be at least 30 minutes from Checkout "
                    "Session creation.",
                )
            if expires_at - now > MAX_EXPIRY_SECONDS:
                raise _invalid(
                    "expires_at",
                    "The `expires_at` timestamp must be less than 24 hours from Checkout "
                    "Session creation.",
                )
        reference = params.get("client_reference_id")
        if reference is not None and len(reference) > CLIENT_REFERENCE_ID_LENGTH:
            raise _invalid(
                "client_reference_id",
                f"Invalid string: {reference[:20]}...; must be at most "
                f"{CLIENT_REFERENCE_ID_LENGTH} characters",
            )
        for name in ("success_url", "cancel_url"):
            if name in params and not _is_url(params[name]):
                raise _invalid(name, "Not a valid URL")
        metadata = _metadata(params.get("metadata", {}), "metadata")
        intent_data = params.get("payment_intent_data", {})
        session_id = _id("cs_test_a1", 58)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "adaptive_pricing": {"enabled": False},
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": total,
            "amount_total": total,
            "automatic_tax": {
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "billing_address_collection": None,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": reference or None,
            "client_secret": None,
            "collected_information": None,
            "consent": None,
            "consent_collection": None,
            "created": now,
            "currency": currency,
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
            "customer": None,
            "customer_creation": "if_required",
            "customer_details": None,
            "customer_email": params.get("customer_email"),
            "discounts": [],
            "expires_at": expires_at,
            "invoice": None,
            "invoice_creation": {"enabled": False, "invoice_data": None},
            "livemode": False,
            "locale": params.get("locale"),
            "metadata": metadata,
            "mode": "payment",
            "payment_intent": None,
            "payment_link": None,
            "payment_method_collection": "if_required",
            "payment_method_configuration_details": None,
            "payment_method_options": {},
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "phone_number_collection": {"enabled": False},
            "recovered_from": None,
            "saved_payment_method_options": None,
            "setup_intent": None,
            "shipping_address_collection": None,
            "shipping_cost": None,
            "shipping_options": [],
            "status": "open",
            "submit_type": params.get("submit_type"),
            "subscription": None,
            "success_url": params.get("success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": f"{self.api_base}/c/pay/{session_id}",
        }
        self.sessions[session_id] = session
        self._line_items[session_id] = items
        self._intent_data[session_id] = {
            "metadata": _metadata(intent_data.get("metadata", {}), "payment_intent_data[metadata]"),
            "description": intent_data.get("description"),
        }
        return 200, self._expand(session, params)

    async def _retrieve_session(self, request: Request) -> tuple[int, Json]:
        params = request.params
        _check_known(params, _RETRIEVE)
        return 200, self._expand(self._session_or_404(request.http.match_info["id"]), params)

    async def _list_sessions(self, request: Request) -> tuple[int, Json]:
        params = request.params
        _check_known(params, _LIST_SESSIONS)
        found = [
            session
            for session in reversed(self.sessions.values())
            if all(
                session[name] == params[name]
                for name in ("payment_intent", "status")
                if name in params
            )
        ]
        page, has_more = _page(found, params)
        return 200, {
            "object": "list",
            "data": [self._expand(session, params, prefix="data.") for session in page],
            "has_more": has_more,
            "url": "/v1/checkout/sessions",
        }

    async def _expire_session(self, request: Request) -> tuple[int, Json]:
        params = request.params
        _check_known(params, _RETRIEVE)
        session = self._session_or_404(request.http.match_info["id"])
        if session["status"] != "open":
            raise StripeError(
                400,
                f'Only Checkout Sessions with a status in ["open"] can be expired. This '
                f'Checkout Session has a status of "{session["status"]}".',
            )
        self._expire(session)
        self._event(
            "checkout.session.expired",
            session,
            request={
                "id": request.id,
                "idempotency_key": request.http.headers.get("Idempotency-Key"),
            },
        )
        return 200, self._expand(session, params)

    async def _list_line_items(self, request: Request) -> tuple[int, Json]:
        params = request.params
        _check_known(params, _LIST_LINE_ITEMS)
        session = self._session_or_404(request.http.match_info["id"])
        page, has_more = _page(self._line_items[session["id"]], params)
        return 200, {
            "object": "list",
            "data": copy.deepcopy(page),
            "has_more": has_more,
            "url": f"/v1/checkout/sessions/{session['id']}/line_items",
        }

    def _retriever(self, kind: str, store: dict[str, Json]) -> Handler:
        singular = kind.removesuffix("s")

        async def retrieve(request: Request) -> tuple[int, Json]:
            _check_known(request.params, _RETRIEVE)
            found = store.get(request.http.match_info["id"])
            if found is None:
                raise _no_such(singular, request.http.match_info["id"], "id")
            return 200, copy.deepcopy(found)

        return retrieve

    async def _retrieve_event(self, request: Request) -> tuple[int, Json]:
        _check_known(request.params, _RETRIEVE)
        event_id = request.http.match_info["id"]
        for event in self.events:
            if event["id"] == event_id:
                return 200, copy.deepcopy(event)
        raise _no_such("event", event_id, "id")

    async def _unrecognized(self, request: Request) -> tuple[int, Json]:
        raise StripeError(
            404,
            f"Unrecognized request URL ({request.http.method}: {request.http.path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
        )

    async def _hosted_page(self, request: web.Request) -> web.Response:
        """What the buyer's browser gets at ``session.url``; paying happens through ``complete``."""
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return web.Response(status=404, text="Something went wrong")
        if session["status"] != "open":
            return web.Response(status=410, text="This Checkout Session is no longer active.")
        amount = _money(session["amount_total"], session["currency"])
        return web.Response(
            text=f"<!doctype html><title>Pay {html.escape(amount)}</title><p>Pay {html.escape(amount)}</p>",
            content_type="text/html",
        )

    # --- Helpers -----------------------------------------------------------------------------

    def _now(self) -> int:
        # Stripe's timestamps are whole seconds, and so are the comparisons with expires_at.
        return int(self.clock())

    def _product(self, name: str, description: str | None = None) -> Json:
        product_id = _id("prod_", 14)
        product = {
            "id": product_id,
            "object": "product",
            "active": True,
            "created": self._now(),
            "description": description,
            "livemode": False,
            "metadata": {},
            "name": name,
            "type": "service",
        }
        self.products[product_id] = product
        return product

    def _line_item(self, index: int, item: Json) -> Json:
        where = f"line_items[{index}]"
        if "price" in item and "price_data" in item:
            raise _invalid(
                where, "You may only specify one of these parameters: price, price_data."
            )
        if "quantity" not in item:
            raise _missing(f"{where}[quantity]")
        quantity = _integer(item["quantity"], f"{where}[quantity]")
        if not 1 <= quantity <= MAX_QUANTITY:
            raise _invalid(f"{where}[quantity]", f"Quantity must be between 1 and {MAX_QUANTITY}.")
        if "price" in item:
            price = self.prices.get(item["price"])
            if price is None:
                raise _no_such("price", item["price"], f"{where}[price]")
            if not price["active"]:
                raise _invalid(
                    f"{where}[price]",
                    "The price specified is inactive. This field only accepts active prices.",
                )
        elif "price_data" in item:
            price = self._ad_hoc_price(item["price_data"], f"{where}[price_data]")
        else:
            raise _invalid(
                where, "You must specify either `price` or `price_data` in each line item."
            )
        amount = price["unit_amount"] * quantity
        return {
            "id": _id("li_1"),
            "object": "item",
            "amount_discount": 0,
            "amount_subtotal": amount,
            "amount_tax": 0,
            "amount_total": amount,
            "currency": price["currency"],
            "description": self.products[price["product"]]["name"],
            "price": copy.deepcopy(price),
            "quantity": quantity,
        }

    def _ad_hoc_price(self, data: Json, where: str) -> Json:
        """A Price made for one Checkout Session from ``price_data``, as Stripe makes one."""
        for name in ("currency", "unit_amount"):
            if name not in data:
                raise _missing(f"{where}[{name}]")
        currency = data["currency"].lower()
        if not re.fullmatch(r"[a-z]{3}", currency):
            raise _invalid(f"{where}[currency]", f"Invalid currency: {data['currency']}.")
        unit_amount = _integer(data["unit_amount"], f"{where}[unit_amount]")
        if unit_amount < 0:
            raise _invalid(
                f"{where}[unit_amount]", "This value must be greater than or equal to 0."
            )
        if "product" in data:
            if data["product"] not in self.products:
                raise _no_such("product", data["product"], f"{where}[product]")
            product = self.products[data["product"]]
        elif "product_data" in data:
            product_data = data["product_data"]
            if not product_data.get("name"):
                raise _missing(f"{where}[product_data][name]")
            product = self._product(product_data["name"], product_data.get("description"))
        else:
            raise _invalid(
                where, "You must specify either `product` or `product_data` when creating a price."
            )
        # Stripe makes such a price inactive, so it serves this session only.
        return self._price(_id("price_1"), unit_amount, currency, product, active=False)

    def _session(self, session_id: str) -> Json:
        session = self.sessions.get(session_id)
        if session is None:
            raise KeyError(f"no Checkout Session {session_id}")
        return session

    def _session_or_404(self, session_id: str) -> Json:
        session = self.sessions.get(session_id)
        if session is None:
            raise _no_such("checkout.session", session_id, "session")
        return session

    def _expire(self, session: Json) -> None:
        session.update(status="expired", url=None)

    def _paid_charge(self, payment_intent: str) -> Json:
        intent = self.payment_intents.get(payment_intent)
        if intent is None:
            raise KeyError(f"no PaymentIntent {payment_intent}")
        charge = self.charges[intent["latest_charge"]]
        if charge["status"] != "succeeded":
            raise ValueError(f"{payment_intent}'s charge is {charge['status']}, not paid")
        return charge

    def _expand(self, session: Json, params: Json, prefix: str = "") -> Json:
        """A copy of ``session`` with the ``expand[]`` paths Stripe would fill in."""
        shown = copy.deepcopy(session)
        for index, path in _each(params, "expand"):
            if not path.startswith(prefix):
                raise _invalid(f"expand[{index}]", f"This property cannot be expanded ({path}).")
            field = path.removeprefix(prefix)
            if field == "line_items":
                items = self._line_items[session["id"]]
                shown["line_items"] = {
                    "object": "list",
                    "data": copy.deepcopy(items),
                    "has_more": False,
                    "url": f"/v1/checkout/sessions/{session['id']}/line_items",
                }
            elif field == "payment_intent":
                if session["payment_intent"] is not None:
                    shown["payment_intent"] = copy.deepcopy(
                        self.payment_intents[session["payment_intent"]]
                    )
            else:
                raise _invalid(f"expand[{index}]", f"This property cannot be expanded ({path}).")
        return shown

    def _event(self, type: str, obj: Json, *, request: Json | None = None) -> Json:
        """Record the event Stripe would send for ``obj`` as it is now, and return a copy."""
        event = {
            "id": _id("evt_1"),
            "object": "event",
            "api_version": self.api_version,
            "created": self._now(),
            "data": {"object": copy.deepcopy(obj)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": request or {"id": None, "idempotency_key": None},
            "type": type,
        }
        self.events.append(event)
        return copy.deepcopy(event)


# --- Wire format ----------------------------------------------------------------------------


def _parse(encoded: str) -> Json:
    """Stripe's form encoding, nested: ``a[b][0][c]=v`` becomes ``{"a": {"b": {"0": {"c": "v"}}}}``.

    Arrays stay dicts keyed by index (``_each`` reads them), since a metadata key may
    be a number too; ``a[]=v`` appends as index.
    """
    params: Json = {}
    for name, value in urllib.parse.parse_qsl(encoded, keep_blank_values=True):
        root, _, rest = name.partition("[")
        keys = [root, *re.findall(r"\[([^\]]*)\]", "[" + rest)] if rest else [root]
        node = params
        for depth, key in enumerate(keys):
            if key == "":
                key = str(len(node))
            if depth == len(keys) - 1:
                node[key] = value
            else:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise _invalid(name, f"Invalid hash for {name}")
                node = child
    return params


def _check_known(params: Json, spec: Mapping[str, object], prefix: str = "") -> None:
    """Refuse what Stripe would call an unknown parameter, or a hash where a string goes."""
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else key
        if key not in spec:
            raise StripeError(400, f"Received unknown parameter: {name}", param=name)
        sub = spec[key]
        if sub is _ANY:
            continue
        if isinstance(sub, _Each):
            if not isinstance(value, dict) or not all(index.isdigit() for index in value):
                raise _invalid(name, "Invalid array")
            for index, element in value.items():
                element_name = f"{name}[{index}]"
                if sub.spec:
                    if not isinstance(element, dict):
                        raise _invalid(element_name, "Invalid object")
                    _check_known(element, sub.spec, element_name)
                elif not isinstance(element, str):
                    raise _invalid(element_name, "Invalid string")
        elif isinstance(sub, Mapping):
            if not isinstance(value, dict):
                raise _invalid(name, "Invalid object")
            _check_known(value, sub, name)
        elif not isinstance(value, str):
            raise _invalid(name, f"Invalid string: {value}")


def _each(params: Json, name: str) -> list[tuple[int, Any]]:
    """The elements of array parameter ``name``, in index order."""
    found = params.get(name, {})
    return sorted((int(index), value) for index, value in found.items())


def _integer(value: str, param: str) -> int:
    if not re.fullmatch(r"-?\d+", value):
        raise StripeError(
            400, f"Invalid integer: {value}", param=param, code="parameter_invalid_integer"
        )
    return int(value)


def _metadata(given: Json, param: str) -> dict[str, str]:
    """Metadata as Stripe stores it; an empty value means "no such key" and is dropped."""
    kept = {key: value for key, value in given.items() if value != ""}
    if len(kept) > METADATA_KEYS:
        raise _invalid(param, f"Invalid {param}: metadata can have up to {METADATA_KEYS} keys")
    for key, value in kept.items():
        if not isinstance(value, str):
            raise _invalid(f"{param}[{key}]", "Invalid string")
        if len(key) > METADATA_KEY_LENGTH:
            raise _invalid(
                f"{param}[{key}]",
                f"Metadata keys can have up to {METADATA_KEY_LENGTH} characters",
            )
        if len(value) > METADATA_VALUE_LENGTH:
            raise _invalid(
                f"{param}[{key}]",
                f"Metadata values can have up to {METADATA_VALUE_LENGTH} characters",
            )
    return kept


def _page(items: list[Json], params: Json) -> tuple[list[Json], bool]:
    """One page of a list, newest first as given, by ``limit``/``starting_after``/``ending_before``."""
    limit = _integer(params.get("limit", "10"), "limit")
    if not 1 <= limit <= 100:
        raise _invalid("limit", "This value must be between 1 and 100.")
    ids = [item["id"] for item in items]
    if "starting_after" in params:
        if params["starting_after"] not in ids:
            raise _no_such("object", params["starting_after"], "starting_after")
        rest = items[ids.index(params["starting_after"]) + 1 :]
        return rest[:limit], len(rest) > limit
    if "ending_before" in params:
        if params["ending_before"] not in ids:
            raise _no_such("object", params["ending_before"], "ending_before")
        before = items[: ids.index(params["ending_before"])]
        return before[-limit:], len(before) > limit
    return items[:limit], len(items) > limit


def _bearer(header: str) -> str | None:
    scheme, _, key = header.partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def _json_response(
    status: int, body: Json, request_id: str, idempotency_key: str | None = None
) -> web.Response:
    response = web.json_response(body, status=status, dumps=lambda data: json.dumps(data, indent=2))
    response.headers["Request-Id"] = request_id
    if idempotency_key:
        response.headers["Idempotency-Key"] = idempotency_key
    return response


def _error_response(error: StripeError, request_id: str) -> web.Response:
    body = dict(error.body)
    if error.status != 401:
        body["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
    return _json_response(error.status, {"error": body}, request_id)


def _id(prefix: str, length: int = 24) -> str:
    return prefix + _token(length)


def _token(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def _is_url(value: str) -> bool:
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _money(amount: int, currency: str) -> str:
    if currency in ZERO_DECIMAL:
        return f"{amount} {currency}"
    return f"{amount / 100:.2f} {currency}"


def _billing_details(session: Json) -> Json:
    return {
        "address": {
            "city": None,
            "country": "US",
            "line1": None,
            "line2": None,
            "postal_code": "94103",
            "state": None,
        },
        "email": session.get("customer_email") or "buyer@example.com",
        "name": "Test Buyer",
        "phone": None,
    }


def _outcome(result: Literal["paid", "declined"]) -> Json:
    if result == "paid":
        return {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
    return {
        "network_status": "declined_by_network",
        "reason": "insufficient_funds",
        "risk_level": "normal",
        "seller_message": "The bank returned the decline code `insufficient_funds`.",
        "type": "issuer_declined",
    }


def _method_details(method_type: str) -> Json:
    if method_type == "card":
        return {
            "type": "card",
            "card": {
                "brand": "visa",
                "country": "US",
                "exp_month": 12,
                "exp_year": 2034,
                "funding": "credit",
                "last4": "4242",
                "network": "visa",
            },
        }
    return {
        "type": method_type,
        method_type: {
            "account_holder_type": "individual",
            "account_type": "checking",
            "bank_name": "STRIPE TEST BANK",
            "last4": "6789",
            "routing_number": "110000000",
        },
    }
