"""`imagine-bot report`: generations, credits and failures per model, provider, day and user."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import cli, messages
from bot.app import open_service
from bot.flow import ImagineService
from bot.parsing import parse_imagine
from bot.settings import Settings
from ledger import NewPurchase, PaymentEvent, create_engine, migrate
from ledger.report import Report, Summary, build_report
from providers.errors import ContentBlocked, ProviderUnavailable
from tests.cli_helpers import imagine_bot
from tests.conftest import FakeClock
from tests.fakes import Script, ScriptedProvider
from tests.test_console_flow import MODELS, RecordingDelivery

ANA, BEN = "console:ana", "console:ben"


@pytest.fixture
async def service(
    database_url: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[ImagineService]:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    settings = Settings(_env_file=None, database_url=database_url, models_file=models_file)
    async with open_service(settings, extra_admins=frozenset({"console:bank"}), clock=clock) as svc:
        for account in (ANA, BEN):
            await svc.credits.grant("console:bank", account, 500, "report test")
        yield svc


async def generate(service: ImagineService, account: str, text: str, script: Script) -> None:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    provider.script = script
    quote = await service.quote(account, parse_imagine(text, service.catalog))
    await service.confirm(quote.id, account, RecordingDelivery())


async def bought(
    service: ImagineService, purchase_id: str, *, refunded: int = 0, disputed: bool = False
) -> None:
    """A starter pack (500 credits for 4.99 USD) paid by Ana, then refunded or disputed."""
    ledger = service.ledger
    await ledger.open_purchase(
        NewPurchase(purchase_id, "stripe", ANA, "starter", 500, 499, "usd", f"cs_{purchase_id}")
    )
    await ledger.fulfil_purchase(purchase_id, PaymentEvent(f"paid_{purchase_id}", "paid"))
    if refunded or disputed:
        await ledger.reverse_purchase(
            purchase_id,
            PaymentEvent(f"back_{purchase_id}", "reversed"),
            amount_refunded=refunded,
            disputed=disputed,
        )


@pytest.fixture
async def report(service: ImagineService, clock: FakeClock) -> Report:
    await bought(service, "p1", refunded=100)
    await bought(service, "p2", disputed=True)
    await generate(service, ANA, "model:scripted count:2 a fox", Script())
    await generate(service, ANA, "model:scripted count:2 a fox", Script(images=1))
    await generate(service, BEN, "model:scripted a fox", Script(images=0, error=ContentBlocked()))
    clock.advance(days=1)
    await generate(service, BEN, "model:local-sketch count:3 a fox", Script())
    await generate(
        service, BEN, "model:scripted a fox", Script(images=0, error=ProviderUnavailable())
    )
    cancelled = await service.quote(BEN, parse_imagine("model:scripted a fox", service.catalog))
    await service.cancel(cancelled.id, BEN)
    return await build_report(service.ledger.engine, since=None)


async def test_models_count_generations_images_credits_and_failures(report: Report) -> None:
    usage = {model.model_id: model for model in report.models}

    scripted = usage["scripted"]
    assert (scripted.generations, scripted.images_delivered, scripted.credits_charged) == (4, 3, 30)
    assert (scripted.partial, scripted.failed, scripted.failure_rate) == (1, 2, 0.5)
    local = usage["local-sketch"]
    assert (local.generations, local.images_delivered, local.credits_charged) == (1, 3, 3)


async def test_providers_show_failure_rates_and_reasons(report: Report) -> None:
    by_name = {provider.provider: provider for provider in report.providers}

    assert by_name["scripted"].failures_by_reason == {"blocked": 1, "unavailable": 1}
    assert by_name["scripted"].failure_rate == 0.5
    assert by_name["local"].failed == 0


async def test_credits_are_counted_per_day_and_model(report: Report) -> None:
    daily = [
        (entry.day.isoformat(), entry.model_id, entry.credits_charged) for entry in report.daily
    ]

    assert daily == [
        ("2026-11-24", "scripted", 30),
        ("2026-11-25", "local-sketch", 3),
        ("2026-11-25", "scripted", 0),
    ]


async def test_top_users_are_ordered_by_credits_spent(report: Report) -> None:
    assert [(user.account, user.credits_charged) for user in report.top_users] == [
        (ANA, 30),
        (BEN, 3),
    ]


async def test_since_leaves_out_older_generations(
    report: Report, service: ImagineService, clock: FakeClock
) -> None:
    recent = await build_report(service.ledger.engine, since=clock.now.replace(hour=0, minute=0))

    assert {model.model_id: model.generations for model in recent.models} == {
        "local-sketch": 1,
        "scripted": 1,
    }


async def test_since_counts_what_was_settled_since_even_if_confirmed_before(
    report: Report, service: ImagineService, clock: FakeClock
) -> None:
    quote = await service.quote(ANA, parse_imagine("model:scripted count:2 a fox", service.catalog))
    await service.ledger.hold(quote.id, ANA)
    clock.advance(days=1)
    await service.ledger.capture(quote.id, 2)

    recent = await build_report(service.ledger.engine, since=clock.now.replace(hour=0, minute=0))

    assert {model.model_id: model.generations for model in recent.models} == {"scripted": 1}
    assert [(entry.day.isoformat(), entry.credits_charged) for entry in recent.daily] == [
        ("2026-11-26", 20)
    ]


async def test_providers_count_the_calls_recorded_per_image_asked_for(
    report: Report, service: ImagineService
) -> None:
    [generation, *_] = await service.ledger.history(ANA, limit=1)
    await service.ledger.record_attempts(
        generation.id,
        [
            {"image": 0, "attempt": 1, "outcome": "rate_limited", "status": 429, "seconds": 0.1},
            {"image": 0, "attempt": 2, "outcome": "ok", "status": 200, "seconds": 9.5},
            {"image": 1, "attempt": 1, "outcome": "ok", "status": 200, "seconds": 9.1},
        ],
    )

    rebuilt = await build_report(service.ledger.engine, since=None)

    # The scripted and local providers make no HTTP calls; the three recorded here are
    # for 6 images asked of the scripted provider.
    rows = {row["provider"]: row for row in rebuilt.tables()["providers"]}
    assert (rows["scripted"]["calls"], rows["scripted"]["calls_per_image"]) == (3, 0.5)
    assert (rows["local"]["calls"], rows["local"]["calls_per_image"]) == (0, 0.0)
    assert {provider.provider: provider.calls for provider in report.providers} == {
        "local": 0,
        "scripted": 0,
    }


async def test_revenue_is_counted_per_pack_and_day_with_what_was_refunded_and_disputed(
    report: Report,
) -> None:
    assert report.tables()["revenue"] == [
        {
            "day": "2026-11-24",
            "pack": "starter",
            "currency": "usd",
            "purchases": 2,
            "credits": 1000,
            "gross": "9.98",
            "refunded": "1",
            "net": "8.98",
            "disputed": 1,
        }
    ]


async def test_csv_export_has_one_block_per_table_with_a_header(report: Report) -> None:
    text = messages.report(report.tables(), "csv")

    blocks = [list(csv.DictReader(io.StringIO(block))) for block in text.split("\n\n")]
    assert [rows[0]["table"] for rows in blocks] == [
        "summary",
        "models",
        "providers",
        "daily",
        "top_users",
        "revenue",
        "revenue_totals",
    ]
    assert blocks[4][0] == {
        "table": "top_users",
        "account": ANA,
        "generations": "2",
        "images_delivered": "3",
        "credits_charged": "30",
    }


async def test_json_export_holds_every_table(report: Report) -> None:
    exported = json.loads(messages.report(report.tables(), "json"))

    assert set(exported) == {
        "summary",
        "models",
        "providers",
        "daily",
        "top_users",
        "revenue",
        "revenue_totals",
    }
    assert exported["providers"][1]["failures_by_reason"] == "blocked=1;unavailable=1"


async def test_the_table_output_titles_each_section(report: Report) -> None:
    text = messages.report(report.tables(), "table")

    assert text.startswith("Summary\nsince")
    assert "\nModels\nmodel_id" in text
    assert "\nTop users\naccount" in text


def test_the_command_exports_json_from_a_fresh_database(tmp_path: Path) -> None:
    result = imagine_bot(tmp_path, "report", "--format", "json")

    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout)
    assert exported["summary"] == [
        {
            "since": None,
            "generations": 0,
            "images_delivered": 0,
            "credits_charged": 0,
            "failed": 0,
            "failure_rate": 0.0,
            "active_users": 0,
            "provider_cost_usd": "0.0000",
            "revenue_usd": "0.0000",
            "margin_usd": "0.0000",
        }
    ]
    assert {name: rows for name, rows in exported.items() if name != "summary"} == {
        "models": [],
        "providers": [],
        "daily": [],
        "top_users": [],
        "revenue": [],
        "revenue_totals": [],
    }


async def test_the_summary_counts_every_settled_generation_and_the_accounts_behind_them(
    report: Report,
) -> None:
    summary = report.summary

    assert (summary.generations, summary.images_delivered, summary.credits_charged) == (5, 6, 33)
    assert (summary.failed, summary.active_users, summary.failure_rate) == (2, 2, 0.4)


async def test_models_show_their_failures_by_reason(report: Report) -> None:
    usage = {model.model_id: model for model in report.models}

    assert usage["scripted"].failures_by_reason == {"blocked": 1, "unavailable": 1}
    assert usage["local-sketch"].failures_by_reason == {}


async def test_latency_percentiles_are_the_nearest_rank_over_generations_that_delivered(
    service: ImagineService, clock: FakeClock
) -> None:
    # Four generations that take 10, 20, 30 and 40 seconds from click to settlement, and a
    # failed one of 500 seconds that is left out.
    for seconds in (30, 10, 40, 20):
        quote = await service.quote(ANA, parse_imagine("model:scripted a fox", service.catalog))
        await service.ledger.hold(quote.id, ANA)
        clock.advance(seconds=seconds)
        await service.ledger.capture(quote.id, 1)
    quote = await service.quote(BEN, parse_imagine("model:scripted a fox", service.catalog))
    await service.ledger.hold(quote.id, BEN)
    clock.advance(seconds=500)
    await service.ledger.release(quote.id, error_code="timeout", error_message="slow")

    built = await build_report(service.ledger.engine, since=None)

    [scripted] = built.tables()["models"]
    assert (scripted["latency_p50_seconds"], scripted["latency_p95_seconds"]) == (20.0, 40.0)


async def test_revenue_totals_add_up_every_pack_and_day_per_currency(report: Report) -> None:
    assert report.tables()["revenue_totals"] == [
        {
            "currency": "usd",
            "purchases": 2,
            "credits": 1000,
            "gross": "9.98",
            "refunded": "1",
            "net": "8.98",
            "disputed": 1,
        }
    ]


async def test_a_report_of_some_tables_holds_only_those(service: ImagineService) -> None:
    built = await build_report(service.ledger.engine, since=None, tables=["summary", "daily"])

    assert list(built.tables()) == ["summary", "daily"]


def test_the_command_reports_from_a_given_moment(tmp_path: Path) -> None:
    result = imagine_bot(
        tmp_path, "report", "--since", "2026-12-01", "--table", "summary", "--format", "json"
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"][0]["since"] == "2026-12-01T00:00:00+00:00"


@pytest.mark.parametrize(
    "arguments",
    [
        ("report", "--days", "0"),
        ("report", "--top", "-1"),
        ("history", "console:local", "--limit", "0"),
    ],
)
def test_a_count_below_one_is_refused_with_its_option_named(
    arguments: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused while the arguments are read, before any setting or database is touched.
    with pytest.raises(SystemExit) as stopped:
        cli.main(list(arguments))

    assert stopped.value.code == 2
    assert f"argument {arguments[-2]}: must be 1 or more" in capsys.readouterr().err


async def test_a_database_in_memory_is_reported_one_query_at_a_time() -> None:
    engine = create_engine("sqlite+aiosqlite:///:memory:")
    try:
        await migrate.upgrade(engine)
        built = await build_report(engine, since=None)
    finally:
        await engine.dispose()

    assert built.summary == Summary()
