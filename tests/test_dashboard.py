"""The admin dashboard over HTTP: logins, sessions and CSRF, the pages, the forms, CSV export,
and figures that agree with `imagine-bot report`.

The real web server (``PublicWeb`` with the dashboard added) is served on a loopback port and
asked by aiohttp's client, which keeps the session cookie as a browser does. The browser
itself is in ``test_dashboard_browser.py``.
"""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot import messages
from bot.app import open_service
from bot.circuits import Health
from bot.dashboard.auth import COOKIE, LINK_LIFETIME
from bot.flow import ImagineService
from bot.parsing import parse_imagine
from bot.settings import Settings
from bot.web import PublicWeb
from ledger import EntryKind, NewGeneration
from providers.errors import ContentBlocked
from tests.cli_helpers import imagine_bot
from tests.conftest import FakeClock
from tests.fakes import Script, ScriptedProvider
from tests.test_console_flow import MODELS, RecordingDelivery
from tests.test_report import bought

pytestmark = pytest.mark.sqlite_only

ADMIN = "discord:42"
ANA, BEN = "console:ana", "console:ben"
PAGES = [
    "/admin",
    "/admin/",
    "/admin/models",
    "/admin/users?q=ana",
    f"/admin/users/{ANA}",
    "/admin/purchases",
    "/admin/live",
    "/admin?csv=summary",
]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    pricing_file = tmp_path / "pricing.toml"
    pricing_file.write_text("[providers.scripted]\nmonthly_budget_usd = 25\n")
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        pricing_file=pricing_file,
        admin_accounts=ADMIN,
    )


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with open_service(settings, clock=clock) as opened:
        yield opened


@pytest.fixture
async def client(service: ImagineService, settings: Settings) -> AsyncIterator[TestClient]:
    async with dashboard_client(service, settings) as opened:
        yield opened


def dashboard_client(service: ImagineService, settings: Settings) -> TestClient:
    public = PublicWeb(settings)
    public.add_dashboard(service)
    return TestClient(TestServer(public.application))


async def log_in(client: TestClient, service: ImagineService, account: str = ADMIN) -> str:
    """Log in through a fresh link; the overview's HTML."""
    token = await service.ledger.new_dashboard_link(account, LINK_LIFETIME)
    response = await client.post("/admin/login", data={"token": token})
    assert response.status == 200, await response.text()
    return await response.text()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


async def account_page(client: TestClient, account: str = ANA) -> str:
    response = await client.get(f"/admin/users/{account}")
    assert response.status == 200
    return await response.text()


async def generate(service: ImagineService, account: str, text: str, script: Script) -> None:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    provider.script = script
    quote = await service.quote(account, parse_imagine(text, service.catalog))
    await service.confirm(quote.id, account, RecordingDelivery())


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# -- logging in -------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_is_refused_without_a_session(client: TestClient, path: str) -> None:
    response = await client.get(path)

    assert response.status == 401
    assert messages.DASHBOARD_LOG_IN_FIRST.split(":")[0] in await response.text()


async def test_a_form_without_a_session_is_refused_and_changes_nothing(
    client: TestClient, service: ImagineService
) -> None:
    response = await client.post(f"/admin/users/{ANA}/grant", data={"amount": "50"})

    assert response.status == 401
    assert not await service.ledger.account_exists(ANA)


async def test_a_link_opens_a_page_that_logs_in_and_does_not_use_the_link_up(
    client: TestClient, service: ImagineService
) -> None:
    token = await service.ledger.new_dashboard_link(ADMIN, LINK_LIFETIME)

    response = await client.get(f"/admin/login/{token}")

    assert response.status == 200
    assert messages.dashboard_log_in_as(ADMIN) in await response.text()
    assert await service.ledger.dashboard_link(token) is not None


async def test_logging_in_sets_an_httponly_strict_cookie_for_the_dashboard_for_eight_hours(
    client: TestClient, service: ImagineService
) -> None:
    token = await service.ledger.new_dashboard_link(ADMIN, LINK_LIFETIME)

    response = await client.post("/admin/login", data={"token": token}, allow_redirects=False)

    assert (response.status, response.headers["Location"]) == (303, "/admin")
    cookie = response.cookies[COOKIE]
    assert cookie["httponly"] is True
    assert (cookie["samesite"], cookie["path"], cookie["max-age"]) == ("Strict", "/admin", "28800")
    assert not cookie["secure"]


async def test_the_cookie_is_secure_when_the_public_url_is_https(
    service: ImagineService, settings: Settings
) -> None:
    secure = settings.model_copy(update={"public_url": "https://bot.example.com"})
    token = await service.ledger.new_dashboard_link(ADMIN, LINK_LIFETIME)
    async with dashboard_client(service, secure) as client:
        response = await client.post("/admin/login", data={"token": token}, allow_redirects=False)

    assert response.cookies[COOKIE]["secure"] is True


async def test_a_used_link_is_refused(client: TestClient, service: ImagineService) -> None:
    token = await service.ledger.new_dashboard_link(ADMIN, LINK_LIFETIME)
    await client.post("/admin/login", data={"token": token})
    client.session.cookie_jar.clear()

    response = await client.post("/admin/login", data={"token": token})

    assert response.status == 403
    assert messages.DASHBOARD_LINK_UNUSABLE in await response.text()
    assert COOKIE not in response.cookies


async def test_a_link_past_ten_minutes_is_refused(
    client: TestClient, service: ImagineService, clock: FakeClock
) -> None:
    token = await service.ledger.new_dashboard_link(ADMIN, LINK_LIFETIME)
    clock.advance(minutes=10)

    opened = await client.get(f"/admin/login/{token}")
    response = await client.post("/admin/login", data={"token": token})

    assert (opened.status, response.status) == (403, 403)


async def test_a_link_for_an_account_that_is_not_an_admin_is_refused(
    client: TestClient, service: ImagineService
) -> None:
    token = await service.ledger.new_dashboard_link(ANA, LINK_LIFETIME)

    response = await client.post("/admin/login", data={"token": token})

    assert response.status == 403
    assert (await client.get("/admin")).status == 401


async def test_a_session_stops_working_once_its_account_is_no_longer_an_admin(
    client: TestClient, service: ImagineService, settings: Settings
) -> None:
    await log_in(client, service)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/admin"))[COOKIE].value
    others = settings.model_copy(update={"admin_accounts": ("discord:7",)})

    async with dashboard_client(service, others) as restarted:
        restarted.session.cookie_jar.update_cookies({COOKIE: cookie}, restarted.make_url("/admin"))
        response = await restarted.get("/admin")

    assert response.status == 401


async def test_logging_out_ends_the_session(client: TestClient, service: ImagineService) -> None:
    html = await log_in(client, service)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/admin"))[COOKIE].value

    response = await client.post("/admin/logout", data={"csrf": csrf_of(html)})

    assert response.status == 200
    assert await service.ledger.dashboard_session(cookie) is None
    assert (await client.get("/admin")).status == 401


async def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(
    client: TestClient, service: ImagineService
) -> None:
    await log_in(client, service)

    response = await client.post(f"/admin/users/{ANA}/grant", data={"amount": "50"})

    assert response.status == 403
    assert not await service.ledger.account_exists(ANA)


async def test_a_csrf_token_of_another_session_is_refused(
    client: TestClient, service: ImagineService
) -> None:
    other_sessions_token = csrf_of(await log_in(client, service))
    await log_in(client, service)

    response = await client.post(
        f"/admin/users/{ANA}/grant", data={"amount": "50", "csrf": other_sessions_token}
    )

    assert response.status == 403


async def test_pages_forbid_framing_scripts_from_elsewhere_and_referrers(
    client: TestClient, service: ImagineService
) -> None:
    await log_in(client, service)

    response = await client.get("/admin")

    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["Referrer-Policy"] == "no-referrer"


# -- forms ------------------------------------------------------------------------------


async def test_a_grant_through_the_form_is_recorded_with_the_admin_as_its_actor(
    client: TestClient, service: ImagineService
) -> None:
    await log_in(client, service)
    html = await account_page(client)

    response = await client.post(
        f"/admin/users/{ANA}/grant",
        data={"csrf": csrf_of(html), "key": "k1", "amount": "50", "reason": "contest prize"},
    )

    assert response.status == 200
    assert messages.granted(ANA, 50, 50) in await response.text()
    [entry] = await service.ledger.entries(ANA)
    assert (entry.kind, entry.actor, entry.reason) == (EntryKind.GRANT, ADMIN, "contest prize")


async def test_a_grant_form_sent_twice_grants_once(
    client: TestClient, service: ImagineService
) -> None:
    await log_in(client, service)
    form = {"csrf": csrf_of(await account_page(client)), "key": "k1", "amount": "50"}

    await client.post(f"/admin/users/{ANA}/grant", data=form)
    again = await client.post(f"/admin/users/{ANA}/grant", data=form)

    assert messages.dashboard_form_sent_twice(ANA, 50) in await again.text()
    assert (await service.ledger.balance(ANA)).available == 50


async def test_a_grant_can_expire(
    client: TestClient, service: ImagineService, clock: FakeClock
) -> None:
    await log_in(client, service)
    form = {"csrf": csrf_of(await account_page(client)), "amount": "50", "expires": "7d"}

    await client.post(f"/admin/users/{ANA}/grant", data=form)

    [lot] = (await service.ledger.balance(ANA)).lots
    assert lot.expires_at is not None and lot.expires_at > clock.now


async def test_a_revoke_of_more_than_is_available_is_refused_with_its_sentence(
    client: TestClient, service: ImagineService
) -> None:
    await service.credits.grant(ADMIN, ANA, 20, "start")
    await log_in(client, service)
    form = {"csrf": csrf_of(await account_page(client)), "amount": "50"}

    response = await client.post(f"/admin/users/{ANA}/revoke", data=form)

    assert response.status == 400
    assert messages.revoke_exceeds_balance(50, 20) in await response.text()
    assert (await service.ledger.balance(ANA)).available == 20


async def test_a_price_set_through_the_form_is_the_account_s_own_price(
    client: TestClient, service: ImagineService
) -> None:
    await log_in(client, service)
    form = {
        "csrf": csrf_of(await account_page(client)),
        "model": "scripted",
        "credits": "6",
        "reason": "early supporter",
    }

    response = await client.post(f"/admin/users/{ANA}/price", data=form)

    assert response.status == 200
    [override] = await service.ledger.price_overrides(ANA)
    assert (override.model_id, override.credits_per_image, override.actor) == ("scripted", 6, ADMIN)


async def test_a_price_form_with_both_rules_is_refused(
    client: TestClient, service: ImagineService
) -> None:
    await log_in(client, service)
    form = {
        "csrf": csrf_of(await account_page(client)),
        "model": "scripted",
        "credits": "6",
        "percent_off": "10",
        "reason": "both",
    }

    response = await client.post(f"/admin/users/{ANA}/price", data=form)

    assert response.status == 400
    assert await service.ledger.price_overrides(ANA) == []


async def test_text_typed_into_a_form_is_shown_escaped(
    client: TestClient, service: ImagineService
) -> None:
    await log_in(client, service)
    form = {
        "csrf": csrf_of(await account_page(client)),
        "percent_off": "10",
        "reason": "<script>alert(1)</script>",
    }

    response = await client.post(f"/admin/users/{ANA}/price", data=form)

    html = await response.text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html


# -- pages ------------------------------------------------------------------------------


async def test_users_are_found_by_part_of_their_account(
    client: TestClient, service: ImagineService
) -> None:
    for account in (ANA, BEN, "discord:500"):
        await service.credits.grant(ADMIN, account, 5, "hello")
    await log_in(client, service)

    response = await client.get("/admin/users?q=console:&csv=users")

    assert [row["account"] for row in csv_rows(await response.text())] == [BEN, ANA]


async def test_an_account_page_shows_its_lots_statement_generations_and_purchases(
    client: TestClient, service: ImagineService
) -> None:
    await service.credits.grant(ADMIN, ANA, 100, "start")
    await bought(service, "p1")
    await generate(service, ANA, "model:scripted count:2 a fox", Script())
    await log_in(client, service)

    tables = {
        name: csv_rows(await (await client.get(f"/admin/users/{ANA}?csv={name}")).text())
        for name in ("lots", "statement", "generations", "purchases")
    }

    assert sorted(row["kind"] for row in tables["lots"]) == ["paid", "promo"]
    assert [row["kind"] for row in tables["statement"]][-2:] == ["hold", "capture"]
    assert [row["credits_charged"] for row in tables["generations"]] == ["20"]
    assert [row["pack"] for row in tables["purchases"]] == ["starter"]


async def test_the_purchases_page_lists_refunds_and_disputes_apart(
    client: TestClient, service: ImagineService
) -> None:
    await bought(service, "p1")
    await bought(service, "p2", refunded=100)
    await log_in(client, service)

    refunds = csv_rows(await (await client.get("/admin/purchases?csv=refunds")).text())

    assert [row["purchase"] for row in refunds] == ["p2"]


async def test_the_live_page_shows_each_provider_s_limit_and_budget(
    client: TestClient, service: ImagineService
) -> None:
    await log_in(client, service)

    providers = csv_rows(await (await client.get("/admin/live?csv=providers")).text())
    budgets = csv_rows(await (await client.get("/admin/live?csv=budgets")).text())

    scripted = next(row for row in providers if row["provider"] == "scripted")
    assert (scripted["limit"], scripted["running_here"], scripted["queued_here"]) == ("4", "0", "0")
    assert [(row["provider"], row["budget_usd"], row["used_percent"]) for row in budgets] == [
        ("scripted", "25.0", "0.0")
    ]


async def test_the_live_page_shows_a_provider_whose_circuit_is_open(
    client: TestClient, service: ImagineService
) -> None:
    for _ in range(service.circuits.failures):
        service.circuits.record("scripted", Health.DOWN, "unavailable")
    await log_in(client, service)

    providers = csv_rows(await (await client.get("/admin/live?csv=providers")).text())

    scripted = next(row for row in providers if row["provider"] == "scripted")
    assert (scripted["circuit"], scripted["last_error"]) == ("open", "unavailable")
    assert scripted["retry_at"] != ""


async def test_an_unknown_table_is_not_found(client: TestClient, service: ImagineService) -> None:
    await log_in(client, service)

    response = await client.get("/admin?csv=passwords")

    assert response.status == 404


async def test_csv_cells_that_would_start_a_spreadsheet_formula_are_quoted(
    client: TestClient, service: ImagineService
) -> None:
    await log_in(client, service)
    form = {"csrf": csrf_of(await account_page(client)), "percent_off": "10", "reason": "=1+1"}
    await client.post(f"/admin/users/{ANA}/price", data=form)

    [row] = csv_rows(await (await client.get(f"/admin/users/{ANA}?csv=prices")).text())

    assert row["reason"] == "'=1+1"


# -- the figures ------------------------------------------------------------------------


@pytest.mark.both_databases
async def test_the_overview_and_models_pages_agree_with_imagine_bot_report(
    client: TestClient,
    service: ImagineService,
    settings: Settings,
    tmp_path: Path,
    clock: FakeClock,
) -> None:
    # One generation 40 days ago, 20 days ago, 3 days ago and today; a purchase today.
    clock.advance(days=-40)
    for account in (ANA, BEN):
        await service.credits.grant(ADMIN, account, 500, "report test")
    await generate(service, ANA, "model:scripted count:2 a fox", Script())
    clock.advance(days=20)
    await generate(service, BEN, "model:scripted a fox", Script(images=0, error=ContentBlocked()))
    clock.advance(days=17)
    await generate(service, BEN, "model:local-sketch count:3 a fox", Script())
    clock.advance(days=3)
    await generate(service, ANA, "model:scripted count:2 a fox", Script(images=1))
    await bought(service, "p1", refunded=100)
    await log_in(client, service)

    overview = csv_rows(await (await client.get("/admin?csv=summary")).text())
    revenue = csv_rows(await (await client.get("/admin?csv=revenue")).text())
    models = csv_rows(await (await client.get("/admin/models?days=30&csv=models")).text())

    for row in overview:
        reported = await report_json(tmp_path, settings, "--since", row["since"])
        assert {k: v for k, v in row.items() if k != "period"} == as_csv(reported["summary"][0])
        assert [
            {k: v for k, v in each.items() if k != "period"}
            for each in revenue
            if each["period"] == row["period"]
        ] == [as_csv(each) for each in reported["revenue_totals"]]
    [thirty_days] = [row for row in overview if row["period"] == "30 days"]
    reported = await report_json(tmp_path, settings, "--since", thirty_days["since"])
    assert models == [as_csv(row) for row in reported["models"]]
    assert [row["generations"] for row in overview] == ["1", "2", "3"]


async def report_json(tmp_path: Path, settings: Settings, *arguments: str) -> dict[str, list]:
    result = await asyncio.to_thread(
        imagine_bot,
        tmp_path,
        "report",
        *arguments,
        "--format",
        "json",
        DATABASE_URL=settings.database_url,
        MODELS_FILE=str(settings.models_file),
    )
    assert result.returncode == 0, result.stderr
    exported: dict[str, list] = json.loads(result.stdout)
    return exported


def as_csv(row: dict[str, object]) -> dict[str, str]:
    """A JSON row as its CSV export reads back: every value text, None empty."""
    return {key: "" if value is None else str(value) for key, value in row.items()}


async def test_a_provider_past_eighty_percent_of_its_budget_shows_a_banner_on_every_page(
    client: TestClient, service: ImagineService, clock: FakeClock
) -> None:
    ledger = service.ledger
    await ledger.grant(ANA, 100, actor="test", reason="", idempotency_key="fund")
    await ledger.create_quote(
        NewGeneration(
            id="g1",
            account_id=ANA,
            model_id="scripted",
            provider="scripted",
            provider_model="scripted-v1",
            prompt="a fox",
            options={},
            images_requested=1,
            credits_per_image=10,
            expires_at=clock.now + timedelta(minutes=10),
        )
    )
    await ledger.hold("g1", ANA)
    await ledger.record_attempts("g1", [], provider_cost_microusd=21_000_000)
    await ledger.capture("g1", 1)

    overview = await log_in(client, service)
    live = await (await client.get("/admin/live")).text()

    banner = messages.budget_warning("scripted", Decimal("21"), Decimal("25"))
    assert html.escape(banner) in overview
    assert html.escape(banner) in live
