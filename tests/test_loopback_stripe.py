"""The loopback Stripe answers the real ``stripe`` library as Stripe does, and signs as Stripe does.

Every client here sends through an aiohttp session that resolves no host name (the
fake is at 127.0.0.1) and records where each request went; after each test, all of
them must have reached the fake, so a library that fell back to api.stripe.com fails
the test without going out.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import stripe
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.loopback_stripe import API_KEY, WEBHOOK_SECRET, LoopbackStripe

HOUR = 60 * 60
SUCCESS_URL = "https://bot.example/stripe/success?session={CHECKOUT_SESSION_ID}"
CANCEL_URL = "https://bot.example/stripe/cancel"


@pytest.fixture(autouse=True)
def no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    # stripe-python otherwise writes ~/.config/stripe/telemetry_id on its first request.
    monkeypatch.setattr(stripe, "enable_telemetry", False)


@pytest.fixture
async def fake() -> AsyncIterator[LoopbackStripe]:
    async with LoopbackStripe() as server:
        yield server


class NoNames(AbstractResolver):
    """Resolves nothing: a request for any host by name fails before it leaves the machine."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise OSError(f"{host} is not the loopback fake")

    async def close(self) -> None:
        pass


class Client:
    """A real ``StripeClient`` pointed at the fake, and every URL its HTTP session asked for."""

    def __init__(self, fake: LoopbackStripe, api_key: str, max_network_retries: int) -> None:
        self.urls: list[str] = []
        tracing = aiohttp.TraceConfig()
        tracing.on_request_start.append(self._record)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=NoNames()), trace_configs=[tracing]
        )
        self.stripe = stripe.StripeClient(
            api_key,
            base_addresses={"api": fake.api_base},
            http_client=stripe.AIOHTTPClient(session=self.session),
            max_network_retries=max_network_retries,
        )

    async def _record(
        self, _session: object, _context: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        self.urls.append(str(params.url))


Connect = Callable[..., stripe.StripeClient]


@pytest.fixture
async def connect(fake: LoopbackStripe) -> AsyncIterator[Connect]:
    """Make clients (``connect(api_key, max_network_retries)``); check where they went at the end."""
    clients: list[Client] = []

    def make(api_key: str = API_KEY, max_network_retries: int = 0) -> stripe.StripeClient:
        clients.append(Client(fake, api_key, max_network_retries))
        return clients[-1].stripe

    yield make
    for client in clients:
        await client.session.close()
    urls = [url for client in clients for url in client.urls]
    assert all(url.startswith(fake.api_base + "/v1/") for url in urls), urls
    assert len(urls) == len(fake.calls)


@pytest.fixture
async def client(connect: Connect) -> stripe.StripeClient:
    return connect()


def price_data(unit_amount: int = 500, currency: str = "usd") -> dict[str, Any]:
    return {
        "currency": currency,
        "unit_amount": unit_amount,
        "product_data": {"name": "500 credits"},
    }


async def create(client: stripe.StripeClient, **params: Any) -> stripe.checkout.Session:
    """A session for one 500-credit pack, with ``params`` over the defaults."""
    return await client.v1.checkout.sessions.create_async(
        {
            "mode": "payment",
            "line_items": [{"price_data": price_data(), "quantity": 1}],
            "client_reference_id": "discord:1234",
            "metadata": {"account": "discord:1234", "pack": "500"},
            "success_url": SUCCESS_URL,
            "cancel_url": CANCEL_URL,
            "expires_at": int(time.time()) + HOUR,
            **params,
        }
    )


async def test_a_session_made_with_price_data_reads_back_as_asked(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    session = await create(
        client, line_items=[{"price_data": price_data(250, "eur"), "quantity": 2}]
    )

    assert session.id.startswith("cs_test_")
    assert session.object == "checkout.session"
    assert (session.amount_total, session.currency) == (500, "eur")
    assert session.metadata.to_dict() == {"account": "discord:1234", "pack": "500"}
    assert session.client_reference_id == "discord:1234"
    assert (session.mode, session.status, session.payment_status) == ("payment", "open", "unpaid")
    assert session.payment_intent is None
    assert session.url is not None and session.url.startswith(fake.api_base)
    assert fake.calls[0].params["line_items"]["0"]["price_data"]["product_data"] == {
        "name": "500 credits"
    }


async def test_a_session_for_a_registered_price_costs_its_unit_amount_times_quantity(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    fake.add_price("price_pack_1000", 900, "usd", product_name="1000 credits")

    session = await create(client, line_items=[{"price": "price_pack_1000", "quantity": 3}])

    assert (session.amount_total, session.currency) == (2700, "usd")
    items = await client.v1.checkout.sessions.line_items.list_async(session.id)
    [item] = items.data
    assert (item.description, item.quantity, item.price.id) == (
        "1000 credits",
        3,
        "price_pack_1000",
    )


async def test_a_session_is_retrieved_as_it_was_made(client: stripe.StripeClient) -> None:
    made = await create(client)

    found = await client.v1.checkout.sessions.retrieve_async(made.id)

    assert found.to_dict() == made.to_dict()


async def test_a_sessions_url_serves_its_page_until_the_session_closes(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    assert session.url is not None

    async with aiohttp.ClientSession() as browser:
        async with browser.get(session.url) as open_page:
            assert (open_page.status, "5.00 usd" in await open_page.text()) == (200, True)
        fake.expire(session.id)
        async with browser.get(session.url) as closed_page:
            assert closed_page.status == 410


async def test_an_unknown_session_is_refused_as_missing(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.v1.checkout.sessions.retrieve_async("cs_test_nothing")

    assert (refused.value.http_status, refused.value.code) == (404, "resource_missing")


async def test_sessions_are_listed_by_the_payment_intent_that_paid_them(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    paid = await create(client)
    await create(client)
    intent = fake.complete(paid.id)["data"]["object"]["payment_intent"]

    found = await client.v1.checkout.sessions.list_async({"payment_intent": intent})

    assert found.object == "list"
    assert [session.id for session in found.data] == [paid.id]
    assert found.data[0].payment_status == "paid"


async def test_paging_through_sessions_stays_on_the_fake(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    made = [(await create(client)).id for _ in range(3)]

    page = await client.v1.checkout.sessions.list_async({"limit": 2})
    listed = [session.id async for session in page.auto_paging_iter()]

    assert listed == made[::-1]
    assert [call.params.get("starting_after") for call in fake.calls[3:]] == [None, made[1]]


async def test_expiring_a_session_closes_it(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)

    expired = await client.v1.checkout.sessions.expire_async(session.id)

    assert (expired.status, expired.url) == ("expired", None)
    [event] = fake.events
    assert event["type"] == "checkout.session.expired"
    assert event["request"]["idempotency_key"] == fake.calls[-1].idempotency_key


async def test_a_closed_session_cannot_be_expired(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    fake.complete(session.id)

    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.checkout.sessions.expire_async(session.id)


async def test_a_wrong_api_key_is_refused_as_an_authentication_error(
    fake: LoopbackStripe, connect: Connect
) -> None:
    with pytest.raises(stripe.AuthenticationError) as refused:
        await create(connect("sk_test_someone_elses"))

    assert refused.value.http_status == 401
    assert fake.sessions == {}


@pytest.mark.parametrize("minutes", [29, 24 * 60 + 1])
async def test_an_expiry_outside_half_an_hour_to_a_day_is_refused(
    fake: LoopbackStripe, client: stripe.StripeClient, minutes: int
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await create(client, expires_at=int(time.time()) + minutes * 60)

    assert (refused.value.http_status, refused.value.param) == (400, "expires_at")
    assert fake.sessions == {}


async def test_a_session_without_a_mode_is_refused(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await create(client, mode=None)

    assert (refused.value.param, refused.value.code) == ("mode", "parameter_missing")


async def test_an_unregistered_price_is_refused(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await create(client, line_items=[{"price": "price_nothing", "quantity": 1}])

    assert refused.value.param == "line_items[0][price]"


async def test_a_parameter_stripe_does_not_know_is_refused(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await create(client, client_reference=7)

    assert "Received unknown parameter: client_reference" in str(refused.value)


async def test_a_total_under_stripes_minimum_charge_is_refused(
    client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        await create(client, line_items=[{"price_data": price_data(49), "quantity": 1}])


async def test_a_retried_create_with_the_same_idempotency_key_makes_one_session(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    params = {
        "mode": "payment",
        "line_items": [{"price_data": price_data(), "quantity": 1}],
        "expires_at": int(time.time()) + HOUR,
    }
    sessions = client.v1.checkout.sessions

    made = await sessions.create_async(params, {"idempotency_key": "buy-1"})
    again = await sessions.create_async(params, {"idempotency_key": "buy-1"})

    assert again.id == made.id
    assert len(fake.sessions) == 1
    assert again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"


async def test_the_library_retries_a_server_error_into_a_single_session(
    fake: LoopbackStripe, connect: Connect
) -> None:
    fake.then_error(500)

    session = await create(connect(max_network_retries=1))

    assert list(fake.sessions) == [session.id]
    first, retry = fake.calls
    assert first.idempotency_key is not None
    assert retry.idempotency_key == first.idempotency_key


async def test_a_paid_completion_is_a_completed_event_with_the_whole_session(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)

    event = fake.complete(session.id)

    assert event["id"].startswith("evt_")
    assert (event["object"], event["type"]) == ("event", "checkout.session.completed")
    assert (event["livemode"], event["pending_webhooks"]) == (False, 1)
    assert event["api_version"] == stripe.api_version
    assert event["request"] == {"id": None, "idempotency_key": None}
    paid = event["data"]["object"]
    assert (paid["id"], paid["status"], paid["payment_status"]) == (session.id, "complete", "paid")
    assert paid["metadata"] == {"account": "discord:1234", "pack": "500"}
    assert paid["client_reference_id"] == "discord:1234"
    intent = fake.payment_intents[paid["payment_intent"]]
    assert intent["status"] == "succeeded"
    assert fake.charges[intent["latest_charge"]]["amount"] == 500


async def test_a_bank_debit_completes_unpaid_and_then_settles(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)

    completed = fake.complete(session.id, payment="async")
    settled = fake.async_payment(session.id, succeeded=True)

    assert completed["data"]["object"]["payment_status"] == "unpaid"
    assert settled["type"] == "checkout.session.async_payment_succeeded"
    assert settled["data"]["object"]["payment_status"] == "paid"


async def test_a_bank_debit_that_fails_stays_unpaid(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    fake.complete(session.id, payment="async")

    failed = fake.async_payment(session.id, succeeded=False)

    assert failed["type"] == "checkout.session.async_payment_failed"
    assert failed["data"]["object"]["payment_status"] == "unpaid"


async def test_a_session_left_unpaid_expires_with_an_event(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)

    event = fake.expire(session.id)

    assert event["type"] == "checkout.session.expired"
    assert event["data"]["object"]["status"] == "expired"
    assert (await client.v1.checkout.sessions.retrieve_async(session.id)).status == "expired"


async def test_refunds_add_up_on_the_charge(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    intent = fake.complete(session.id)["data"]["object"]["payment_intent"]

    part = fake.refund(intent, 200)["data"]["object"]
    rest = fake.refund(intent, 300)["data"]["object"]

    assert (part["amount"], part["amount_refunded"], part["refunded"]) == (500, 200, False)
    assert (rest["amount_refunded"], rest["refunded"]) == (500, True)
    assert rest["payment_intent"] == intent
    with pytest.raises(ValueError):
        fake.refund(intent, 1)


async def test_a_dispute_and_its_reinstatement_name_the_charge_and_payment(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    intent = fake.complete(session.id)["data"]["object"]["payment_intent"]

    created = fake.dispute(intent)
    dispute = created["data"]["object"]
    reinstated = fake.reinstate(dispute["id"])

    assert created["type"] == "charge.dispute.created"
    assert dispute["id"].startswith("du_")
    assert dispute["charge"] == fake.payment_intents[intent]["latest_charge"]
    assert (dispute["payment_intent"], dispute["amount"]) == (intent, 500)
    assert reinstated["type"] == "charge.dispute.funds_reinstated"
    assert reinstated["data"]["object"]["status"] == "won"


async def test_an_event_is_read_back_through_the_api(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    event = fake.complete((await create(client)).id)

    found = await client.v1.events.retrieve_async(event["id"])

    assert found.to_dict() == event


async def test_construct_event_accepts_an_event_the_fake_signed(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    event = fake.complete((await create(client)).id)
    payload = fake.payload(event)

    parsed = stripe.Webhook.construct_event(
        payload, fake.sign(payload, WEBHOOK_SECRET), WEBHOOK_SECRET
    )

    assert (parsed.id, parsed.type) == (event["id"], "checkout.session.completed")
    assert parsed.data.object.payment_status == "paid"
    assert parsed.data.object.metadata["account"] == "discord:1234"


async def test_a_signature_older_than_five_minutes_is_refused(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    payload = fake.payload(fake.complete((await create(client)).id))
    stale = fake.sign(payload, WEBHOOK_SECRET, timestamp=int(time.time()) - 301)

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, stale, WEBHOOK_SECRET)


async def test_a_signature_made_with_another_secret_is_refused(
    fake: LoopbackStripe, client: stripe.StripeClient
) -> None:
    payload = fake.payload(fake.complete((await create(client)).id))

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            payload, fake.sign(payload, "whsec_someone_elses"), WEBHOOK_SECRET
        )


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[stripe.Event]]]:
    """A receiver that verifies as a bot would: its URL, and the events it accepted."""
    accepted: list[stripe.Event] = []

    async def receive(request: web.Request) -> web.Response:
        try:
            event = stripe.Webhook.construct_event(
                await request.read(), request.headers.get("Stripe-Signature"), WEBHOOK_SECRET
            )
        except stripe.SignatureVerificationError as error:
            return web.Response(status=400, text=str(error))
        accepted.append(event)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/stripe/webhook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/stripe/webhook", accepted
    await runner.cleanup()


async def test_a_delivered_event_is_accepted_by_a_verifying_receiver(
    fake: LoopbackStripe,
    client: stripe.StripeClient,
    webhook: tuple[str, list[stripe.Event]],
) -> None:
    url, accepted = webhook
    event = fake.complete((await create(client)).id)

    status, body = await fake.deliver(url, event, WEBHOOK_SECRET)

    assert (status, body) == (200, "ok")
    assert [received.id for received in accepted] == [event["id"]]


@pytest.mark.parametrize(
    ("secret", "options"),
    [
        (None, {}),
        (WEBHOOK_SECRET, {"timestamp": int(time.time()) - 301}),
        (WEBHOOK_SECRET, {"signature": f"t={int(time.time())},v1={'0' * 64}"}),
        ("whsec_someone_elses", {}),
    ],
    ids=["unsigned", "stale", "forged", "other-secret"],
)
async def test_a_delivery_that_is_not_properly_signed_is_refused(
    fake: LoopbackStripe,
    client: stripe.StripeClient,
    webhook: tuple[str, list[stripe.Event]],
    secret: str | None,
    options: dict[str, Any],
) -> None:
    url, accepted = webhook
    event = fake.complete((await create(client)).id)

    status, _ = await fake.deliver(url, event, secret, **options)

    assert status == 400
    assert accepted == []
