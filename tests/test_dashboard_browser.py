"""The dashboard in a real headless browser: the system's Chromium, driven by Playwright.

One browser per test session (each pytest-xdist worker), one page server per module, a fresh
browser context (no cookies) per test. Without Chromium at ``TEST_CHROMIUM_PATH`` (default
``/usr/bin/chromium``) these tests skip, saying how to install it, unless
``REQUIRE_BROWSER=1`` (as in CI, ``.ci/run``), where they fail. Each test keeps a screenshot
in ``TEST_ARTIFACTS`` (default ``test-artifacts/``) under ``dashboard/``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from bot import messages
from bot.app import open_service
from bot.dashboard import new_login_link
from bot.flow import ImagineService
from bot.parsing import parse_imagine
from bot.settings import Settings
from bot.web import PublicWeb
from ledger import create_engine, migrate
from providers.errors import ContentBlocked
from tests.fakes import Script, ScriptedProvider
from tests.test_console_flow import MODELS, RecordingDelivery

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.asyncio(loop_scope="session")

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("TEST_CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", REPO / "test-artifacts")) / "dashboard"
ADMIN = "discord:42"
ANA, BEN = "console:ana", "console:ben"


def _no_browser(reason: str) -> NoReturn:
    """Skip, or fail when the run must cover the browser (``REQUIRE_BROWSER=1``)."""
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        _no_browser(
            f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`,"
            " or point TEST_CHROMIUM_PATH at one"
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _no_browser("the playwright package is not installed (pip install -e '.[dev]')")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Dashboard:
    service: ImagineService
    settings: Settings
    url: str

    async def login_link(self) -> str:
        """A link as `imagine-bot dashboard link` prints it, for this server."""
        here = self.settings.model_copy(update={"public_url": self.url})
        return (await new_login_link(self.service.ledger, here, None)).url


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def dashboard(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dashboard]:
    """The bot's web server with the dashboard, on a loopback port, over a little history:
    Ana made two images, Ben's one request was blocked."""
    folder = tmp_path_factory.mktemp("browser")
    (folder / "models.toml").write_text(MODELS)
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{folder / 'imagine.db'}",
        models_file=folder / "models.toml",
        pricing_file=Path(os.devnull),
        admin_accounts=ADMIN,
    )
    engine = create_engine(settings.database_url)
    await migrate.upgrade(engine)
    await engine.dispose()
    async with open_service(settings, serving=False) as service:
        for account in (ANA, BEN):
            await service.credits.grant(ADMIN, account, 100, "welcome")
        await generate(service, ANA, "model:scripted count:2 a fox", Script())
        await generate(
            service, BEN, "model:scripted a fox", Script(images=0, error=ContentBlocked())
        )
        public = PublicWeb(settings)
        public.add_dashboard(service)
        server = TestServer(public.application, host="127.0.0.1")
        await server.start_server()
        try:
            yield Dashboard(service, settings, str(server.make_url("")).rstrip("/"))
        finally:
            await server.close()


async def generate(service: ImagineService, account: str, text: str, script: Script) -> None:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    provider.script = script
    quote = await service.quote(account, parse_imagine(text, service.catalog))
    await service.confirm(quote.id, account, RecordingDelivery())


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A tab with no cookies; any script error or refused resource fails the test, and the
    tab's last sight is kept as a screenshot."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(str(error)))
    opened.on(
        "console",
        # A refused page (the point of one test) is logged as an error too: the responses
        # below name what failed to load.
        lambda message: (
            problems.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource")
            else None
        ),
    )
    opened.on(
        "response",
        lambda response: (
            problems.append(f"{response.status} {response.url}")
            if response.status >= 400 and response.request.resource_type != "document"
            else None
        ),
    )
    try:
        yield opened
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await opened.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
    finally:
        await context.close()
    assert problems == []


async def log_in(page: Page, dashboard: Dashboard) -> None:
    await page.goto(await dashboard.login_link())
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(f"{dashboard.url}/admin")


async def test_an_admin_logs_in_with_a_link_and_reads_the_overview(
    page: Page, dashboard: Dashboard
) -> None:
    await page.goto(await dashboard.login_link())
    assert await page.get_by_text(messages.dashboard_log_in_as(ADMIN)).is_visible()

    await page.get_by_role("button", name="Log in").click()

    await page.wait_for_url(f"{dashboard.url}/admin")
    today = page.locator('table[data-table="summary"] tbody tr').first
    cells = {
        column: await today.locator(f'td[data-column="{column}"]').inner_text()
        for column in ("period", "generations", "images_delivered", "failed", "active_users")
    }
    assert cells == {
        "period": "today",
        "generations": "2",
        "images_delivered": "2",
        "failed": "1",
        "active_users": "2",
    }
    # The vendored Chart.js drew one series: the one model that charged credits.
    await page.wait_for_selector("#daily-chart[data-drawn='1']")


async def test_an_admin_grants_credits_through_the_form(page: Page, dashboard: Dashboard) -> None:
    await log_in(page, dashboard)
    await page.get_by_role("link", name="Users").click()
    await page.get_by_label("Account").fill("ana")
    await page.get_by_role("button", name="Search").click()
    await page.get_by_role("link", name=ANA).click()
    available = (await dashboard.service.ledger.balance(ANA)).available

    grant = page.locator("form#grant")
    await grant.get_by_label("Credits").fill("25")
    await grant.get_by_label("Reason").fill("browser test")
    await grant.get_by_role("button", name="Grant").click()

    await page.get_by_role("status").wait_for()
    assert await page.get_by_role("status").inner_text() == messages.granted(
        ANA, 25, available + 25
    )
    assert await page.locator('[data-figure="available"]').inner_text() == str(available + 25)
    assert (await dashboard.service.ledger.entries(ANA, limit=1))[0].actor == ADMIN


async def test_a_visitor_without_a_session_is_refused(page: Page, dashboard: Dashboard) -> None:
    response = await page.goto(f"{dashboard.url}/admin/users/{ANA}")

    assert response is not None and response.status == 401
    assert await page.get_by_text(messages.DASHBOARD_LOG_IN_FIRST).is_visible()
    assert await page.locator("form#grant").count() == 0
