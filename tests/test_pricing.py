"""The price rule by itself (bot.pricing.price) and the pricing file's validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest

from bot import messages
from bot.pricing import BatchDiscounts, PricingError, load_pricing, price
from ledger import PriceOverride

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SHIPPED = Path(__file__).resolve().parent.parent / "config" / "pricing.toml"
BATCH = BatchDiscounts({4: 10, 8: 20})


def override(
    *,
    model_id: str | None = None,
    credits_per_image: int | None = None,
    percent_off: int | None = None,
    until: datetime | None = None,
) -> PriceOverride:
    return PriceOverride(
        id=1,
        account_id="discord:1",
        model_id=model_id,
        credits_per_image=credits_per_image,
        percent_off=percent_off,
        until=until,
        actor="cli:admin",
        reason="a friend",
        created_at=NOW,
    )


def test_without_rules_the_price_is_the_list_price_times_the_count() -> None:
    priced = price(10, 3, batch=BATCH, model_id="pro", now=NOW)
    assert (priced.total, priced.list_price, priced.rules) == (30, 30, [])
    assert messages.price_breakdown(priced) == "30 credits"


def test_a_batch_discount_applies_from_its_threshold_and_is_shown() -> None:
    priced = price(10, 4, batch=BATCH, model_id="pro", now=NOW)
    assert (priced.total, priced.batch_percent) == (36, 10)
    assert messages.price_breakdown(priced) == "4 × 10 = 40 · batch −10% → 36 credits"
    assert price(10, 8, batch=BATCH, model_id="pro", now=NOW).total == 64
    assert price(10, 3, batch=BATCH, model_id="pro", now=NOW).batch_percent == 0


def test_a_fixed_price_for_the_model_replaces_the_list_price() -> None:
    priced = price(
        10,
        3,
        batch=BATCH,
        overrides=[override(model_id="pro", credits_per_image=8)],
        model_id="pro",
        now=NOW,
    )
    assert (priced.total, priced.list_price) == (24, 30)
    assert priced.rules[0]["rule"] == "account_price"
    assert priced.override is not None
    assert messages.your_price(priced, priced.override) == "Your price 8 per image, list 10."


def test_a_fixed_price_for_another_model_does_not_apply() -> None:
    overrides = [override(model_id="flash", credits_per_image=1)]
    assert price(10, 3, batch=BATCH, overrides=overrides, model_id="pro", now=NOW).total == 30


def test_a_fixed_price_for_the_model_wins_over_a_percent_off_every_model() -> None:
    overrides = [override(percent_off=50), override(model_id="pro", credits_per_image=8)]
    assert price(10, 1, batch=BATCH, overrides=overrides, model_id="pro", now=NOW).total == 8


def test_a_percent_off_and_a_batch_discount_round_down_once() -> None:
    # 4 x 8.5 = 34, less 10% = 30.6: rounded once, to 30 (rounding per image first gives 28).
    priced = price(
        10, 4, batch=BATCH, overrides=[override(percent_off=15)], model_id="pro", now=NOW
    )
    assert (priced.per_image, priced.total) == (Fraction(17, 2), 30)
    assert messages.price_breakdown(priced) == "4 × 8.5 = 34 · batch −10% → 30 credits"
    assert priced.override is not None
    assert messages.your_price(priced, priced.override) == (
        "Your price 8.5 per image, list 10 (15% off)."
    )


def test_an_expired_override_is_ignored() -> None:
    overrides = [override(percent_off=50, until=NOW - timedelta(seconds=1))]
    priced = price(10, 2, batch=BATCH, overrides=overrides, model_id="pro", now=NOW)
    assert (priced.total, priced.override) == (20, None)


def test_the_price_of_a_paid_model_never_goes_below_one_credit() -> None:
    priced = price(
        1, 1, batch=BATCH, overrides=[override(percent_off=100)], model_id="pro", now=NOW
    )
    assert priced.total == 1
    assert priced.rules[-1] == {"rule": "minimum", "credits": 1}
    assert messages.price_breakdown(priced) == "1 × 0 = 0 → 1 credit (the least a request costs)"


def test_the_shipped_pricing_file_loads_with_the_issue_s_batch_discounts() -> None:
    pricing = load_pricing(SHIPPED, required=True)
    assert dict(pricing.batch.percents) == {4: 10, 8: 20}
    assert pricing.allowance.credits == 0


def test_a_missing_pricing_file_at_the_default_means_no_allowance_and_no_discounts(
    tmp_path: Path,
) -> None:
    pricing = load_pricing(tmp_path / "pricing.toml", required=False)
    assert (pricing.path, pricing.allowance.credits, dict(pricing.batch.percents)) == (None, 0, {})


def test_a_missing_pricing_file_named_explicitly_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PricingError) as error:
        load_pricing(tmp_path / "pricing.toml", required=True)
    assert error.value.problems == [
        f"{tmp_path / 'pricing.toml'}: file not found (set PRICING_FILE to use another)"
    ]


def test_the_allowance_section_loads_into_a_typed_value(tmp_path: Path) -> None:
    path = tmp_path / "pricing.toml"
    path.write_text(
        '[allowance]\ncredits = 10\nperiod = "week"\n'
        '[allowance.discord_roles]\n"123456789012345678" = 50\n'
    )
    allowance = load_pricing(path, required=True).allowance
    assert (allowance.credits, allowance.period, dict(allowance.discord_roles)) == (
        10,
        "week",
        {"123456789012345678": 50},
    )


def test_a_pack_loads_with_its_price_in_the_currency_s_smallest_unit(tmp_path: Path) -> None:
    path = tmp_path / "pricing.toml"
    path.write_text(
        '[packs.starter]\ncredits = 500\nprice = "4.99"\ndiscord_sku = "1234567890"\n'
        '[packs.yen]\ncredits = 100\nprice = "500"\ncurrency = "jpy"\n'
    )
    packs = load_pricing(path, required=True).packs
    assert [(p.id, p.credits, p.amount, p.currency, p.discord_sku) for p in packs.values()] == [
        ("starter", 500, 499, "usd", "1234567890"),
        ("yen", 100, 500, "jpy", None),
    ]
    assert packs["starter"].shown_price == "4.99 USD"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[packs.small]\ncredits = 5\n", "key 'packs.small.price': Field required"),
        (
            '[packs.small]\ncredits = 5\nprice = "4.999"\n',
            "key 'packs.small.price': '4.999' is not a price",
        ),
        (
            '[packs.small]\ncredits = 5\nprice = "500.5"\ncurrency = "jpy"\n',
            "key 'packs.small.price': '500.5' is not a price: write a whole number",
        ),
        (
            '[packs.small]\ncredits = 5\nprice = "5"\ncurrency = "US$"\n',
            "key 'packs.small.currency': 'US$' is not a currency code",
        ),
        (
            '[packs.small]\ncredits = 5\nprice = "5"\ndiscord_sku = "sku-1"\n',
            "key 'packs.small.discord_sku': a Discord SKU id is digits only",
        ),
        (
            '[packs.small]\ncredits = 5\nprice = "5"\nstripe_price = "prod_1"\n',
            "key 'packs.small.stripe_price': a Stripe Price id starts with price_",
        ),
        (
            '[packs.Big]\ncredits = 5\nprice = "5"\n',
            "key 'packs.Big': a pack id is lower-case letters",
        ),
        ('[packs.small]\ncredits = 0\nprice = "5"\n', "key 'packs.small.credits': Input should"),
        ("[allowance]\ncredit = 5\n", "key 'allowance.credit': unknown key"),
        ('[allowance]\nperiod = "year"\n', "key 'allowance.period': Input should be 'day'"),
        ("[allowance]\ncredits = -1\n", "key 'allowance.credits': Input should be greater"),
        (
            "[allowance.discord_roles]\nmods = 50\n",
            "key 'allowance.discord_roles.mods': not a Discord role id",
        ),
        ("[batch]\ndiscounts = { 4 = 100 }\n", "key 'batch.discounts.4': Input should be less"),
        ("[batch]\ndiscounts = { 1 = 10 }\n", "key 'batch.discounts': '1' is not a number"),
        (
            "[batch]\ndiscounts = { 4 = 10, 8 = 10 }\n",
            "key 'batch.discounts': 8 images get 10% off, no more than the 10% of 4",
        ),
        ("[batch\n", "not valid TOML"),
    ],
)
def test_each_problem_of_the_pricing_file_names_the_file_and_the_key(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "pricing.toml"
    path.write_text(text)
    with pytest.raises(PricingError) as error:
        load_pricing(path, required=True)
    [found] = error.value.problems
    assert found.startswith(f"{path}: ")
    assert problem in found
