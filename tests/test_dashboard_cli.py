"""`imagine-bot dashboard link`, and `imagine-bot run` serving the dashboard beside Discord alone."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot import messages
from bot.dashboard.auth import COOKIE
from ledger import Ledger, create_engine
from tests.cli_helpers import Finished, imagine_bot
from tests.loopback_discord import LoopbackDiscord
from tests.test_discord_cli import start
from tests.test_slack_cli import free_port

ADMINS = "discord:42,slack:T1:U2"


@pytest.fixture
async def discord_fake() -> AsyncIterator[LoopbackDiscord]:
    async with LoopbackDiscord() as fake:
        yield fake


async def link(cwd: Path, *arguments: str, **environment: str) -> Finished:
    return await asyncio.to_thread(imagine_bot, cwd, "dashboard", "link", *arguments, **environment)


async def link_account(cwd: Path, url: str) -> str | None:
    """Whom the link printed is for, as the bot's ledger finds it."""
    ledger = Ledger(create_engine(f"sqlite+aiosqlite:///{cwd / 'imagine.db'}"))
    try:
        found = await ledger.dashboard_link(url.rsplit("/", 1)[1])
    finally:
        await ledger.close()
    return None if found is None else found.account


async def test_the_link_is_printed_under_the_public_url_for_the_first_admin(
    tmp_path: Path,
) -> None:
    result = await link(tmp_path, ADMIN_ACCOUNTS=ADMINS, PUBLIC_URL="https://bot.example.com/")

    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith("https://bot.example.com/admin/login/")
    assert await link_account(tmp_path, url) == "discord:42"
    assert "it works once" in result.stderr


async def test_as_names_the_admin_to_log_in_as(tmp_path: Path) -> None:
    result = await link(
        tmp_path, "--as", "slack:T1:U2", ADMIN_ACCOUNTS=ADMINS, PUBLIC_URL="https://bot.example.com"
    )

    assert await link_account(tmp_path, result.stdout.strip()) == "slack:T1:U2"


async def test_an_account_that_is_not_an_admin_gets_no_link(tmp_path: Path) -> None:
    result = await link(tmp_path, "--as", "discord:7", ADMIN_ACCOUNTS=ADMINS)

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == messages.dashboard_not_admin("discord:7")


async def test_without_admin_accounts_there_is_no_link_to_make(tmp_path: Path) -> None:
    result = await link(tmp_path)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.strip() == messages.DASHBOARD_NO_ADMINS


@pytest.mark.parametrize(
    ("host", "port", "base"),
    [
        ("0.0.0.0", "3000", "http://localhost:3000"),
        ("127.0.0.1", "8080", "http://127.0.0.1:8080"),
        ("::1", "8080", "http://[::1]:8080"),
    ],
)
async def test_without_a_public_url_the_link_names_this_machine_and_says_so(
    tmp_path: Path, host: str, port: str, base: str
) -> None:
    result = await link(tmp_path, ADMIN_ACCOUNTS=ADMINS, WEB_HOST=host, WEB_PORT=port)

    assert result.stdout.startswith(f"{base}/admin/login/")
    assert messages.dashboard_link_local(base) in result.stderr


async def test_run_serves_the_dashboard_beside_discord_alone_for_a_link_made_elsewhere(
    tmp_path: Path, discord_fake: LoopbackDiscord
) -> None:
    port = free_port()
    web = {"ADMIN_ACCOUNTS": ADMINS, "WEB_HOST": "127.0.0.1", "WEB_PORT": str(port)}
    process = await start(tmp_path, discord_fake, "run", **web)
    try:
        # unsafe: keep cookies of a server named by its IP address, as browsers do.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            refused = await until_listening(session, f"http://127.0.0.1:{port}/admin")
            made = await link(tmp_path, **web, PUBLIC_URL=f"http://127.0.0.1:{port}")
            token = made.stdout.strip().rsplit("/", 1)[1]
            logged_in = await session.post(
                f"http://127.0.0.1:{port}/admin/login", data={"token": token}
            )
            overview = await logged_in.text()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert refused == 401
    assert logged_in.status == 200 and COOKIE in {c.key for c in session.cookie_jar}
    assert "<h1>Overview</h1>" in overview
    assert process.returncode == 0, stderr.decode()


async def until_listening(session: aiohttp.ClientSession, url: str) -> int:
    """The status of the first answer, once the process listens (it needs a moment to start)."""
    async with asyncio.timeout(30):
        while True:
            try:
                async with session.get(url) as response:
                    return response.status
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
