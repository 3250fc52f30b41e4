"""Slack in HTTP mode as two real ``imagine-bot run`` processes behind one load balancer.

Both replicas share one PostgreSQL database and nothing else. The load balancer is a
loopback helper written here: it forwards each request's method, path, headers and body
unchanged to the next replica in turn, as any round-robin balancer does, with nothing
sticky. So a command and the click on its answer reach different processes, and each
test checks what that does to credits through the database itself.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from bot import messages
from bot.platforms.slack import CANCEL_ACTION, EVENTS_PATH, GENERATE_ACTION, slack_account
from ledger import Entry, EntryKind, GenerationStatus, Ledger, create_engine
from tests.cli_helpers import command_and_environment
from tests.conftest import SessionPostgres
from tests.loopback_slack import BOT_TOKEN, SIGNING_SECRET, TEAM, LoopbackSlack, SlackDriver

# One event loop for the module: the replicas and the fakes outlive each test.
pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

STARTING_CREDITS = 10
_START_SECONDS = 30
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "host"})
"""Headers about one connection, not the request: a proxy sets its own (RFC 9110 §7.6.1)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RoundRobin:
    """A load balancer on one port: each request to the next backend, forwarded unchanged."""

    backends: list[str]
    url: str = ""
    served_by: list[int] = field(default_factory=list)
    """Which backend (its index) each request went to, in order of arrival."""
    _next: itertools.cycle[int] = field(init=False)
    _session: aiohttp.ClientSession | None = None
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self._next = itertools.cycle(range(len(self.backends)))

    async def __aenter__(self) -> RoundRobin:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        backend = next(self._next)
        self.served_by.append(backend)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.backends[backend] + request.path_qs,
            headers=headers,
            # The raw bytes: Slack's signature covers the body exactly as sent.
            data=await request.read(),
        ) as answer:
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            kept.pop("Content-Length", None)
            return web.Response(status=answer.status, body=await answer.read(), headers=kept)


@dataclass
class Replicas:
    """The two bot processes, the balancer in front of them and a driver signing for Slack."""

    balancer: RoundRobin
    driver: SlackDriver
    ledger: Ledger


async def _listening(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    """Wait until ``port`` takes connections; fail with the log if the process ended instead."""
    async with asyncio.timeout(_START_SECONDS):
        while True:
            if process.returncode is not None:
                log_text = await asyncio.to_thread(log.read_text)
                raise AssertionError(f"a replica exited {process.returncode}:\n{log_text}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slack() -> AsyncIterator[LoopbackSlack]:
    async with LoopbackSlack() as fake:
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    slack: LoopbackSlack,
    session_postgres: SessionPostgres,
) -> AsyncIterator[Replicas]:
    """Two ``imagine-bot run`` in HTTP mode on one PostgreSQL database, started at once.

    One pair for the module, as starting them is most of its time; each test acts as a
    user of its own, so their balances and entries stay apart.
    """
    database_url = await session_postgres.emptied()
    started: list[tuple[asyncio.subprocess.Process, Path]] = []
    ports = [free_port(), free_port()]
    try:
        for index, port in enumerate(ports):
            cwd = tmp_path_factory.mktemp(f"replica-{index}")
            command, env = command_and_environment(
                cwd,
                {
                    "DATABASE_URL": database_url,
                    "SLACK_BOT_TOKEN": BOT_TOKEN,
                    "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                    "SLACK_API_BASE_URL": slack.base_url,
                    "SLACK_HTTP_HOST": "127.0.0.1",
                    "SLACK_HTTP_PORT": str(port),
                    "STARTING_CREDITS": str(STARTING_CREDITS),
                },
            )
            log = cwd / "stderr.log"
            with log.open("wb") as stderr:
                process = await asyncio.create_subprocess_exec(
                    *command, "run", cwd=cwd, env=env, stderr=stderr
                )
            started.append((process, log))
        await asyncio.gather(
            *(
                _listening(port, process, log)
                for port, (process, log) in zip(ports, started, strict=True)
            )
        )
        engine = create_engine(database_url)
        ledger = Ledger(engine)
        try:
            backends = [f"http://127.0.0.1:{port}" for port in ports]
            async with RoundRobin(backends) as balancer, aiohttp.ClientSession() as session:
                driver = SlackDriver(f"{balancer.url}{EVENTS_PATH}", slack, session)
                yield Replicas(balancer, driver, ledger)
        finally:
            await ledger.close()
    finally:
        for process, _ in started:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process, log in started:
            await asyncio.wait_for(process.wait(), 30)
            assert process.returncode == 0, log.read_text()


async def quote(replicas: Replicas, user: str, text: str) -> tuple[str, int]:
    """``user`` runs /imagine through the balancer: the quote's id and the replica that answered.

    The quote is the acknowledgement, or after "Working on it…" (a loaded machine took past
    the deadline) what replaced it.
    """
    slack = replicas.driver.slack
    status, answer, response_url = await replicas.driver.command("/imagine", text, user=user)
    assert status == 200, answer
    if answer["text"] == messages.SLACK_PREPARING:
        await slack.wait_for(lambda: slack.responded(response_url))
        answer = slack.responded(response_url)[-1]
    [actions] = [block for block in answer["blocks"] if block["type"] == "actions"]
    values = {element["action_id"]: element["value"] for element in actions["elements"]}
    return str(values[GENERATE_ACTION]), replicas.balancer.served_by[-1]


async def last_text(slack: LoopbackSlack, response_url: str, ending: str) -> str:
    def last() -> str:
        posted = slack.responded(response_url)
        return str(posted[-1]["text"]) if posted else ""

    await slack.wait_for(lambda: ending in last())
    return last()


def of_generation(entries: list[Entry], generation_id: str) -> list[EntryKind]:
    """The kinds of the generation's ledger entries, oldest first (``entries`` is newest first)."""
    return [entry.kind for entry in reversed(entries) if entry.generation_id == generation_id]


async def charged_once(replicas: Replicas, user: str, generation: str, price: int) -> None:
    """The generation completed, held and captured once, and the user paid ``price`` for it."""
    account = slack_account(TEAM, user)
    assert (await replicas.ledger.generation(generation)).status == GenerationStatus.COMPLETED
    entries = await replicas.ledger.entries(account)
    assert of_generation(entries, generation) == [EntryKind.HOLD, EntryKind.CAPTURE]
    balance = await replicas.ledger.balance(account)
    assert (balance.available, balance.held) == (STARTING_CREDITS - price, 0)


async def test_a_click_on_the_other_replica_generates_and_charges_once(
    replicas: Replicas, slack: LoopbackSlack
) -> None:
    uploads_before = len(slack.uploads)
    generation, quoted_by = await quote(replicas, "U0ALICE", "model:local-sketch count:2 a fox")

    _, response_url = await replicas.driver.click(GENERATE_ACTION, generation, user="U0ALICE")
    clicked_on = replicas.balancer.served_by[-1]
    await last_text(slack, response_url, "Balance")

    assert clicked_on != quoted_by
    assert [len(upload.files) for upload in slack.uploads[uploads_before:]] == [2]
    await charged_once(replicas, "U0ALICE", generation, price=2)


async def test_a_click_delivered_to_both_replicas_charges_once(
    replicas: Replicas, slack: LoopbackSlack
) -> None:
    uploads_before = len(slack.uploads)
    outcomes_before = len(slack.called("chat.postEphemeral"))
    generation, _ = await quote(replicas, "U0BOB", "model:local-sketch count:2 a fox")
    response_url = slack.response_url()

    # The same click, response_url and all, to each replica at once, as a redelivery
    # that lost its X-Slack-Retry-Num header would come.
    await asyncio.gather(
        *(
            replicas.driver.click(
                GENERATE_ACTION, generation, user="U0BOB", response_url=response_url
            )
            for _ in range(2)
        )
    )

    def outcomes() -> list[str]:
        # Each replica counts only its own messages to a response_url: the refusal took one
        # of the five, so the outcome may be refused there and come by chat.postEphemeral.
        posted = (
            slack.responded(response_url) + slack.called("chat.postEphemeral")[outcomes_before:]
        )
        return [str(message["text"]) for message in posted if "Balance" in message["text"]]

    await slack.wait_for(outcomes)
    assert sorted(replicas.balancer.served_by[-2:]) == [0, 1]
    said = [message["text"] for message in slack.responded(response_url)]
    assert said.count(messages.already_handled(GenerationStatus.RUNNING)) == 1
    [outcome] = outcomes()
    assert outcome.startswith("Done: 2 images for 2 credits.")
    assert [len(upload.files) for upload in slack.uploads[uploads_before:]] == [2]
    await charged_once(replicas, "U0BOB", generation, price=2)


async def test_a_quote_made_on_one_replica_is_cancelled_on_the_other(
    replicas: Replicas, slack: LoopbackSlack
) -> None:
    uploads_before = len(slack.uploads)
    generation, quoted_by = await quote(replicas, "U0CAROL", "model:local-sketch a fox")

    _, cancelled_at = await replicas.driver.click(CANCEL_ACTION, generation, user="U0CAROL")
    cancelled_on = replicas.balancer.served_by[-1]
    await last_text(slack, cancelled_at, messages.CANCELLED)
    _, generate_at = await replicas.driver.click(GENERATE_ACTION, generation, user="U0CAROL")
    refused = await last_text(slack, generate_at, "cancelled")

    assert cancelled_on != quoted_by
    assert refused == messages.already_handled(GenerationStatus.CANCELLED)
    assert (await replicas.ledger.generation(generation)).status == GenerationStatus.CANCELLED
    assert slack.uploads[uploads_before:] == []
    account = slack_account(TEAM, "U0CAROL")
    assert of_generation(await replicas.ledger.entries(account), generation) == []
    balance = await replicas.ledger.balance(account)
    assert (balance.available, balance.held) == (STARTING_CREDITS, 0)
