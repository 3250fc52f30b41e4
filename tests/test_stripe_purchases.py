"""Buying packs through Stripe Checkout: the real stripe library against the loopback Stripe,
events signed with Stripe's scheme delivered to the bot's own /stripe/webhook."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot import messages
from bot.app import open_service
from bot.errors import CreditsOwed, RequestError
from bot.flow import ImagineService
from bot.parsing import parse_imagine
from bot.purchases import WEBHOOK_PATH, Notice
from bot.settings import Settings
from bot.web import PublicWeb
from ledger import PurchaseStatus
from tests.loopback_stripe import API_KEY, WEBHOOK_SECRET, LoopbackStripe
from tests.test_console_flow import MODELS

pytestmark = pytest.mark.sqlite_only

ANA, BEN = "console:ana", "console:ben"
PRICING = """
[packs.starter]
credits = 500
price = "4.99"

[packs.big]
credits = 2000
price = "14.99"
stripe_price = "price_big"
"""


@dataclass
class Shop:
    """The bot selling through the loopback Stripe, and what buyers were told."""

    service: ImagineService
    stripe: LoopbackStripe
    webhook: str
    told: list[Notice]

    async def session_for(self, account: str, pack: str = "starter") -> str:
        link = await self.service.purchases.checkout(account, pack, channel="console")
        return link.url.rsplit("/", 1)[-1]

    async def deliver(self, event: dict[str, Any], **signing: Any) -> int:
        status, _ = await self.stripe.deliver(self.webhook, event, WEBHOOK_SECRET, **signing)
        return status

    async def available(self, account: str = ANA) -> tuple[int, int]:
        balance = await self.service.ledger.balance(account)
        return balance.available, balance.owed

    def alerts(self, reason: str) -> float:
        sample = self.service.metrics.registry.get_sample_value(
            "imagine_purchase_alerts_total", {"source": "stripe", "reason": reason}
        )
        return sample or 0.0


@pytest.fixture
async def shop(database_url: str, tmp_path: Path) -> AsyncIterator[Shop]:
    (tmp_path / "models.toml").write_text(MODELS)
    (tmp_path / "pricing.toml").write_text(PRICING)
    async with LoopbackStripe() as stripe_fake:
        stripe_fake.add_price("price_big", 1499, "usd")
        settings = Settings(
            _env_file=None,
            database_url=database_url,
            models_file=tmp_path / "models.toml",
            pricing_file=tmp_path / "pricing.toml",
            stripe_api_key=API_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=stripe_fake.api_base,
            public_url="https://bot.example.com/",
        )
        async with open_service(settings, serving=False) as service:
            told: list[Notice] = []

            async def tell(notice: Notice) -> None:
                told.append(notice)

            service.purchases.notifiers["console"] = tell
            public = PublicWeb(settings)
            public.sell_through_stripe(service.purchases)
            runner = web.AppRunner(public.application)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            try:
                yield Shop(service, stripe_fake, f"http://{host}:{port}{WEBHOOK_PATH}", told)
            finally:
                await runner.cleanup()


async def test_buy_answers_a_checkout_link_per_pack_for_the_buyer_alone(shop: Shop) -> None:
    text = await shop.service.purchases.offer(ANA, "console")

    links = re.findall(r"pay here: (\S+)", text)
    sessions = [shop.stripe.sessions[link.rsplit("/", 1)[-1]] for link in links]
    assert [s["metadata"]["pack"] for s in sessions] == ["starter", "big"]
    assert {s["client_reference_id"] for s in sessions} == {ANA}
    assert [(s["amount_total"], s["currency"]) for s in sessions] == [(499, "usd"), (1499, "usd")]


async def test_a_checkout_session_is_a_payment_expiring_in_thirty_minutes_returning_to_public_url(
    shop: Shop,
) -> None:
    session = shop.stripe.sessions[await shop.session_for(ANA)]

    assert session["mode"] == "payment"
    assert 30 * 60 <= session["expires_at"] - time.time() <= 31 * 60
    assert session["success_url"] == "https://bot.example.com/stripe/paid"
    assert session["cancel_url"] == "https://bot.example.com/stripe/cancelled"
    bought = await shop.service.ledger.purchase(session["metadata"]["purchase_id"])
    assert bought is not None and bought.external_id == session["id"]


async def test_a_pack_with_a_stripe_price_is_charged_at_that_price(shop: Shop) -> None:
    await shop.session_for(ANA, "big")

    [create] = [call for call in shop.stripe.calls if call.method == "POST"]
    assert create.params["line_items"]["0"]["price"] == "price_big"


async def test_a_paid_checkout_grants_the_pack_and_tells_the_buyer(shop: Shop) -> None:
    session = await shop.session_for(ANA)

    status = await shop.deliver(shop.stripe.complete(session))

    assert status == 200
    assert await shop.available() == (500, 0)
    [notice] = shop.told
    assert notice == Notice(ANA, "console", messages.purchase_paid("starter", 500, 500, 0))


async def test_one_event_delivered_five_times_grants_once(shop: Shop) -> None:
    completed = shop.stripe.complete(await shop.session_for(ANA))

    statuses = [await shop.deliver(completed) for _ in range(5)]

    assert statuses == [200] * 5
    assert await shop.available() == (500, 0)
    assert len(shop.told) == 1


async def test_a_delayed_payment_grants_once_whichever_of_its_events_comes_first(
    shop: Shop,
) -> None:
    session = await shop.session_for(ANA)
    completed = shop.stripe.complete(session, payment="async")
    succeeded = shop.stripe.async_payment(session, succeeded=True)

    await shop.deliver(succeeded)
    await shop.deliver(completed)
    await shop.deliver(succeeded)

    assert await shop.available() == (500, 0)


async def test_a_delayed_payment_that_fails_grants_nothing_and_closes_the_purchase(
    shop: Shop,
) -> None:
    session = await shop.session_for(ANA)
    await shop.deliver(shop.stripe.complete(session, payment="async"))

    await shop.deliver(shop.stripe.async_payment(session, succeeded=False))

    purchase = await shop.service.ledger.purchase_by_external_id("stripe", session)
    assert purchase is not None and purchase.status == PurchaseStatus.FAILED
    assert await shop.available() == (0, 0)


async def test_an_expired_checkout_closes_the_purchase(shop: Shop) -> None:
    session = await shop.session_for(ANA)

    await shop.deliver(shop.stripe.expire(session))

    purchase = await shop.service.ledger.purchase_by_external_id("stripe", session)
    assert purchase is not None and purchase.status == PurchaseStatus.EXPIRED


async def test_a_forged_signature_is_refused_and_grants_nothing(shop: Shop) -> None:
    completed = shop.stripe.complete(await shop.session_for(ANA))

    forged = await shop.deliver(completed, signature="t=1,v1=" + "0" * 64)
    unsigned, _ = await shop.stripe.deliver(shop.webhook, completed, None)

    assert (forged, unsigned) == (400, 400)
    assert await shop.available() == (0, 0)
    assert shop.alerts("bad_signature") == 2


async def test_an_event_signed_more_than_five_minutes_ago_is_refused(shop: Shop) -> None:
    completed = shop.stripe.complete(await shop.session_for(ANA))

    status = await shop.deliver(completed, timestamp=int(time.time()) - 301)

    assert status == 400
    assert await shop.available() == (0, 0)


async def test_a_session_changed_to_name_another_account_grants_nothing_and_alerts(
    shop: Shop,
) -> None:
    session = await shop.session_for(ANA)
    shop.stripe.sessions[session]["client_reference_id"] = BEN

    status = await shop.deliver(shop.stripe.complete(session))

    assert status == 200
    assert await shop.available(ANA) == (0, 0)
    assert not await shop.service.ledger.account_exists(BEN)
    assert shop.alerts("wrong_account") == 1


async def test_a_session_the_bot_did_not_create_grants_nothing(shop: Shop) -> None:
    session = await shop.session_for(ANA)
    shop.stripe.sessions[session]["metadata"]["purchase_id"] = "pur_invented"

    await shop.deliver(shop.stripe.complete(session))

    assert await shop.available() == (0, 0)
    assert shop.alerts("unknown_session") == 1


async def test_an_amount_that_does_not_match_the_pack_grants_nothing(shop: Shop) -> None:
    session = await shop.session_for(ANA)
    shop.stripe.sessions[session]["amount_total"] = 1

    await shop.deliver(shop.stripe.complete(session))

    assert await shop.available() == (0, 0)
    assert shop.alerts("amount_mismatch") == 1


async def test_a_refund_arriving_before_the_completion_is_taken_back_when_it_comes(
    shop: Shop,
) -> None:
    session = await shop.session_for(ANA)
    completed = shop.stripe.complete(session)
    payment = completed["data"]["object"]["payment_intent"]
    refunded = shop.stripe.refund(payment, 499)

    assert await shop.deliver(refunded) == 200
    assert await shop.deliver(completed) == 200

    assert await shop.available() == (0, 0)
    purchase = await shop.service.ledger.purchase_by_external_id("stripe", session)
    assert purchase is not None and purchase.status == PurchaseStatus.REFUNDED


async def test_a_partial_refund_takes_back_the_refunded_share(shop: Shop) -> None:
    completed = shop.stripe.complete(await shop.session_for(ANA))
    await shop.deliver(completed)

    await shop.deliver(shop.stripe.refund(completed["data"]["object"]["payment_intent"], 100))

    # 500 credits * 100 / 499 cents, rounded down
    assert await shop.available() == (400, 0)
    assert shop.told[-1].text == messages.purchase_taken_back(
        "starter", 100, "charge.refunded", 400, 0
    )


async def test_a_refund_after_the_credits_were_spent_is_owed_then_paid_by_the_next_purchase(
    shop: Shop,
) -> None:
    first = shop.stripe.complete(await shop.session_for(ANA))
    await shop.deliver(first)
    await shop.service.ledger.revoke(
        ANA, 450, actor="test", reason="spent", idempotency_key="spent"
    )

    await shop.deliver(shop.stripe.refund(first["data"]["object"]["payment_intent"], 499))
    owing = await shop.available()
    with pytest.raises(CreditsOwed):
        await shop.service.quote(
            ANA, parse_imagine("model:local-sketch a fox", shop.service.catalog)
        )
    await shop.deliver(shop.stripe.complete(await shop.session_for(ANA)))

    assert owing == (0, 450)
    assert await shop.available() == (50, 0)
    assert await shop.service.ledger.verify() == []


async def test_a_dispute_takes_the_pack_back_and_its_reinstatement_returns_it(
    shop: Shop,
) -> None:
    completed = shop.stripe.complete(await shop.session_for(ANA))
    await shop.deliver(completed)

    disputed = shop.stripe.dispute(completed["data"]["object"]["payment_intent"])
    await shop.deliver(disputed)
    during = await shop.available()
    await shop.deliver(shop.stripe.reinstate(disputed["data"]["object"]["id"]))

    assert during == (0, 0)
    assert await shop.available() == (500, 0)


async def test_an_unknown_pack_is_refused_in_one_sentence(shop: Shop) -> None:
    with pytest.raises(RequestError) as refusal:
        await shop.service.purchases.checkout(ANA, "huge", channel=None)

    assert refusal.value.message == messages.unknown_pack("huge", ["starter", "big"])
    assert shop.stripe.sessions == {}


async def test_without_stripe_set_up_buy_says_what_the_operator_must_set(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "models.toml").write_text(MODELS)
    (tmp_path / "pricing.toml").write_text(PRICING)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        models_file=tmp_path / "models.toml",
        pricing_file=tmp_path / "pricing.toml",
    )
    async with open_service(settings, serving=False) as service:
        with pytest.raises(RequestError) as refusal:
            await service.purchases.offer(ANA, "console")

    assert refusal.value.message == messages.STRIPE_NOT_SET_UP
