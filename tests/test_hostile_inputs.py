"""Hostile input on every platform ends in one clear sentence, no traceback, and no credits moved.

One table, one test: each row is something an attacker, a confused user or a
broken client sends, through the real console, Discord or Slack adapter, and
the answer the user must get. A row that is accepted (the input was cleaned
rather than refused) ends in a quote no one has confirmed, which moves nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import shutil
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest
from PIL import Image
from sqlalchemy import func, select

from bot import messages
from bot.app import open_service
from bot.flow import ImagineService
from bot.references import MAX_PIXELS
from bot.settings import Settings
from ledger.schema import ledger_entries
from tests.conftest import FakeClock
from tests.loopback_discord import ALICE, GUILD_ID, TOKEN, LoopbackDiscord
from tests.loopback_slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    TEAM,
    LoopbackSlack,
    SlackDriver,
)
from tests.test_console_flow import ScriptedConsole
from tests.test_discord import running_bot
from tests.test_slack import serving

MODELS = """
[models.local-sketch]
provider = "local"
provider_model = "procedural-v1"
name = "Local Sketch"
credits_per_image = 1
resolutions = ["1K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4

[models.scripted]
provider = "scripted"
provider_model = "scripted-v1"
name = "Scripted"
credits_per_image = 10
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 2
max_reference_images = 1
"""

CONSOLE = "console:local"
DISCORD_USER = f"discord:{ALICE.id}"
SLACK_USER = f"slack:{TEAM}:U0ALICE"
BALANCE = 100
ANSWER_LIMIT = 2000
"""Discord refuses a message longer than this; no answer may echo a huge input back."""


@dataclass(frozen=True)
class Refused:
    """The input is refused with exactly this sentence."""

    sentence: str


@dataclass(frozen=True)
class Quoted:
    """The input is cleaned and quoted: the quote records this prompt and count."""

    prompt: str
    count: int = 1
    model: str = "local-sketch"


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes
    declared_size: int | None = None


@dataclass(frozen=True)
class Hostile:
    name: str
    platform: Literal["console", "discord", "slack"]
    expected: Refused | Quoted
    text: str = ""
    """The console line after ``/``, or Slack's command text."""
    options: dict[str, object] = field(default_factory=dict)
    """Discord's /imagine options."""
    attachment: Attachment | None = None
    command: str = "imagine"
    slack_drop: tuple[str, ...] = ()
    slack_extra: dict[str, str] = field(default_factory=dict)
    slack_click: dict[str, Any] | None = None
    """A raw block action's ``actions[0]`` to send instead of a command."""


def png(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, "PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(buffer, "JPEG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims ``width`` × ``height`` pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


HUGE = "x" * 100_000
TEN_KB = "y" * 10_000
BIDI = "\u202e\u202d\u2066\u2067\u2068\u2069\u200e\u200f"
INVISIBLE = "\u200b\u200c\u2060\ufeff"

CASES = [
    # -- the console: the text form, typed ------------------------------------
    Hostile(
        "zero-width characters only",
        "console",
        Refused(messages.EMPTY_PROMPT),
        f"imagine {INVISIBLE}",
    ),
    Hostile("bidi controls only", "console", Refused(messages.EMPTY_PROMPT), f"imagine {BIDI}"),
    Hostile(
        "bidi override inside a prompt", "console", Quoted("a cat evil"), "imagine a cat \u202eevil"
    ),
    Hostile(
        "ansi escapes in a prompt",
        "console",
        Quoted("[2J[31ma red fox"),
        "imagine \x1b[2J\x1b[31ma red fox",
    ),
    Hostile("a nul byte in a prompt", "console", Quoted("a fox"), "imagine a\x00 fox"),
    Hostile(
        "a 100 KB prompt", "console", Refused(messages.prompt_too_long(100_000)), f"imagine {HUGE}"
    ),
    Hostile(
        "options smuggled inside a quoted prompt",
        "console",
        Quoted("a fox count:4 model:scripted"),
        'imagine prompt:"a fox count:4 model:scripted"',
    ),
    Hostile(
        "an option inside curly quotes",
        "console",
        Quoted("“count:4” a fox"),
        "imagine “count:4” a fox",
    ),
    Hostile(
        "a negative count",
        "console",
        Refused(messages.bad_count("-1", 4, "local-sketch")),
        "imagine count:-1 a fox",
    ),
    Hostile(
        "a count beyond 64 bits",
        "console",
        Refused(messages.bad_count("99999999999999999999999", 4, "local-sketch")),
        "imagine count:99999999999999999999999 a fox",
    ),
    Hostile(
        "a count in exponent form",
        "console",
        Refused(messages.bad_count("1e3", 4, "local-sketch")),
        "imagine count:1e3 a fox",
    ),
    Hostile(
        "a count in Arabic-Indic digits",
        "console",
        Refused(messages.bad_count("٣", 4, "local-sketch")),
        "imagine count:٣ a fox",
    ),
    Hostile(
        "a count of zero",
        "console",
        Refused(messages.bad_count("0", 4, "local-sketch")),
        "imagine count:0 a fox",
    ),
    Hostile(
        "a model id with a Cyrillic letter",
        "console",
        Refused(messages.unknown_model("l\u043ecal-sketch", ["local-sketch"])),
        "imagine model:l\u043ecal-sketch a fox",
    ),
    Hostile(
        "a model id with a zero-width space",
        "console",
        Quoted("a fox"),
        "imagine model:local\u200b-sketch a fox",
    ),
    Hostile(
        "a model id that is a path",
        "console",
        Refused(messages.unknown_model("../../etc/passwd", [])),
        "imagine model:../../etc/passwd a fox",
    ),
    Hostile(
        "a 10 KB model id",
        "console",
        Refused(messages.unknown_model(TEN_KB, [])),
        f"imagine model:{TEN_KB} a fox",
    ),
    Hostile(
        "sql in a resolution",
        "console",
        Refused(messages.unsupported_resolution("1K;DROP", "local-sketch", ["1K"])),
        "imagine resolution:1K;DROP a fox",
    ),
    Hostile(
        "an aspect of zero",
        "console",
        Refused(messages.unsupported_aspect("0:0", "local-sketch", ["1:1", "16:9"])),
        "imagine aspect:0:0 a fox",
    ),
    Hostile(
        "an aspect of three parts",
        "console",
        Refused(messages.unsupported_aspect("1:1:1", "local-sketch", ["1:1", "16:9"])),
        "imagine aspect:1:1:1 a fox",
    ),
    Hostile(
        "an unclosed quote",
        "console",
        Refused(messages.unclosed_quote("prompt")),
        'imagine prompt:"a fox',
    ),
    Hostile(
        "a repeated option",
        "console",
        Refused(messages.repeated_option("model")),
        "imagine model:local-sketch model:scripted a fox",
    ),
    Hostile(
        "an unknown option",
        "console",
        Refused(messages.unknown_option("colour")),
        "imagine colour:red a fox",
    ),
    Hostile(
        "options and no prompt",
        "console",
        Refused(messages.EMPTY_PROMPT),
        "imagine model:local-sketch count:2",
    ),
    Hostile(
        "sql in a prompt",
        "console",
        Quoted("a fox'); DROP TABLE accounts;--"),
        "imagine a fox'); DROP TABLE accounts;--",
    ),
    Hostile(
        "a grant beyond 64 bits",
        "console",
        Refused(messages.invalid_amount("99999999999999999999")),
        "grant console:guest 99999999999999999999",
    ),
    Hostile(
        "a negative grant",
        "console",
        Refused(messages.invalid_amount("-5")),
        "grant console:guest -5",
    ),
    Hostile(
        "a grant to a 10 KB account id",
        "console",
        Refused(messages.invalid_account(f"console:{TEN_KB}")),
        f"grant console:{TEN_KB} 5",
    ),
    Hostile(
        "a grant with a 10 KB reason",
        "console",
        Refused(messages.reason_too_long(10_000)),
        f"grant console:guest 5 {TEN_KB}",
    ),
    # -- Discord: native options and attachments -------------------------------
    Hostile(
        "a negative count option",
        "discord",
        Refused(messages.bad_count("-5", 4, "local-sketch")),
        options={"prompt": "a fox", "count": -5},
    ),
    Hostile(
        "a count option beyond 64 bits",
        "discord",
        Refused(messages.bad_count(str(2**70), 4, "local-sketch")),
        options={"prompt": "a fox", "count": 2**70},
    ),
    Hostile(
        "a model that is not among the choices",
        "discord",
        Refused(messages.unknown_model("gemini-3-pro-preview", [])),
        options={"prompt": "a fox", "model": "gemini-3-pro-preview"},
    ),
    Hostile(
        "a 6000 character prompt",
        "discord",
        Refused(messages.prompt_too_long(6000)),
        options={"prompt": "z" * 6000},
    ),
    Hostile(
        "a prompt of bidi controls",
        "discord",
        Refused(messages.EMPTY_PROMPT),
        options={"prompt": BIDI},
    ),
    Hostile(
        "a resolution with a line break and a mention",
        "discord",
        Refused(messages.unsupported_resolution("1K @everyone", "local-sketch", ["1K"])),
        options={"prompt": "a fox", "resolution": "1K\n@everyone"},
    ),
    Hostile(
        "a 50 MB reference",
        "discord",
        Refused(messages.reference_too_large("big.png", 50 * 1_048_576, 10 * 1_048_576)),
        options={"prompt": "this, but blue", "model": "scripted"},
        attachment=Attachment("big.png", "image/png", png(), declared_size=50 * 1_048_576),
    ),
    Hostile(
        "a 0-byte reference",
        "discord",
        Refused(messages.reference_empty("empty.png")),
        options={"prompt": "this, but blue", "model": "scripted"},
        attachment=Attachment("empty.png", "image/png", b""),
    ),
    Hostile(
        "a PNG header on a text file",
        "discord",
        Refused(messages.reference_not_an_image("notes.png")),
        options={"prompt": "this, but blue", "model": "scripted"},
        attachment=Attachment("notes.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"hello " * 200),
    ),
    Hostile(
        "a gzip bomb named as a PNG",
        "discord",
        Refused(messages.reference_not_an_image("bomb.png")),
        options={"prompt": "this, but blue", "model": "scripted"},
        attachment=Attachment("bomb.png", "image/png", gzip.compress(b"\0" * 20_000_000, 9)),
    ),
    Hostile(
        "a PNG decompression bomb",
        "discord",
        Refused(messages.reference_too_many_pixels("bomb.png", MAX_PIXELS)),
        options={"prompt": "this, but blue", "model": "scripted"},
        attachment=Attachment("bomb.png", "image/png", png_claiming(100_000, 100_000)),
    ),
    Hostile(
        "JPEG bytes claiming to be a PNG",
        "discord",
        Refused(messages.reference_type_mismatch("photo.png", "JPEG", "PNG")),
        options={"prompt": "this, but blue", "model": "scripted"},
        attachment=Attachment("photo.png", "image/png", jpeg()),
    ),
    Hostile(
        "a reference with a 10 KB file name",
        "discord",
        Refused(messages.reference_not_an_image(f"{TEN_KB}.txt")),
        options={"prompt": "this, but blue", "model": "scripted"},
        attachment=Attachment(f"{TEN_KB}.txt", "text/plain", b"hello"),
    ),
    Hostile(
        "an SVG reference",
        "discord",
        Refused(messages.reference_not_an_image("x.svg")),
        options={"prompt": "this, but blue", "model": "scripted"},
        attachment=Attachment("x.svg", "image/svg+xml", b"<svg onload='alert(1)'/>"),
    ),
    Hostile(
        "a reference to a model that takes none",
        "discord",
        Refused(messages.reference_images_not_accepted("local-sketch")),
        options={"prompt": "this, but blue", "model": "local-sketch"},
        attachment=Attachment("red.png", "image/png", png()),
    ),
    # -- Slack: command text and payloads --------------------------------------
    Hostile(
        "html entities in a prompt",
        "slack",
        Quoted("<script>alert(1)</script>"),
        "&lt;script&gt;alert(1)&lt;/script&gt;",
    ),
    Hostile("a 100 KB command", "slack", Refused(messages.prompt_too_long(100_000)), HUGE),
    Hostile(
        "a count of NaN",
        "slack",
        Refused(messages.bad_count("NaN", 4, "local-sketch")),
        "count:NaN a fox",
    ),
    Hostile(
        "a command with extra fields",
        "slack",
        Quoted("a fox"),
        "a fox",
        slack_extra={"is_enterprise_install": "true", "evil": "<@U0ADMIN>", "team_id ": "T0OTHER"},
    ),
    Hostile(
        "a 10 KB word after /credits",
        "slack",
        Refused(messages.slack_credits_usage(TEN_KB)),
        TEN_KB,
        command="credits",
    ),
    Hostile(
        "a grant by someone who is not an admin",
        "slack",
        Refused(messages.NOT_ADMIN),
        "grant <@U0BOB|bob> 1000000",
        command="credits",
    ),
    Hostile(
        "a command without a user",
        "slack",
        Refused(messages.INCOMPLETE_REQUEST),
        "a fox",
        slack_drop=("user_id",),
    ),
    Hostile(
        "a command without a team",
        "slack",
        Refused(messages.INCOMPLETE_REQUEST),
        "a fox",
        slack_drop=("team_id",),
    ),
    Hostile(
        "a click without a value",
        "slack",
        Refused(messages.QUOTE_NOT_FOUND),
        slack_click={"action_id": "imagine_generate"},
    ),
    Hostile(
        "a click on a request that does not exist",
        "slack",
        Refused(messages.QUOTE_NOT_FOUND),
        slack_click={"action_id": "imagine_generate", "value": "../../etc/passwd"},
    ),
    Hostile(
        "a click with a 5000 character value",
        "slack",
        Refused(messages.QUOTE_NOT_FOUND),
        slack_click={"action_id": "imagine_generate", "value": "v" * 5000},
    ),
    Hostile(
        "a cancel of a request that does not exist",
        "slack",
        Refused(messages.QUOTE_NOT_FOUND),
        slack_click={"action_id": "imagine_cancel", "value": "0123456789abcdef"},
    ),
]


class Chat(Protocol):
    async def send(self, case: Hostile) -> str:
        """Send the case's input; return everything the user was shown in answer."""
        ...


@dataclass
class ConsoleChat:
    console: ScriptedConsole

    async def send(self, case: Hostile) -> str:
        # A quote asks to confirm; the answer "n" leaves it unconfirmed.
        return await self.console.say(f"/{case.text}", "n")


@dataclass
class DiscordChat:
    fake: LoopbackDiscord

    async def send(self, case: Hostile) -> str:
        attachment = case.attachment
        interaction = await self.fake.slash(
            case.command,
            case.options,
            attachment=None
            if attachment is None
            else (attachment.filename, attachment.content_type, attachment.data),
            attachment_size=None if attachment is None else attachment.declared_size,
        )
        await self.fake.wait_for(
            lambda: (
                interaction.original_id is not None
                and bool(self.fake.original(interaction).content)
            )
        )
        return self.fake.original(interaction).content


@dataclass
class SlackChat:
    driver: SlackDriver

    async def send(self, case: Hostile) -> str:
        if case.slack_click is not None:
            _, response_url = await self.driver.click_raw(case.slack_click)
            await self.driver.slack.wait_for(lambda: self.driver.slack.responded(response_url))
            return str(self.driver.slack.responded(response_url)[-1]["text"])
        status, acknowledgement, response_url = await self.driver.command(
            f"/{case.command}", case.text, drop=case.slack_drop, extra=case.slack_extra
        )
        assert status == 200
        if acknowledgement.get("text"):
            return str(acknowledgement["text"])
        await self.driver.slack.wait_for(lambda: self.driver.slack.responded(response_url))
        return str(self.driver.slack.responded(response_url)[-1]["text"])


@pytest.fixture
async def slack() -> AsyncIterator[LoopbackSlack]:
    async with LoopbackSlack() as fake:
        yield fake


@pytest.fixture
def database_url(tmp_path: Path, migrated_sqlite_file: Path) -> str:
    """SQLite only: the table is about what the adapters and rules answer, the same on both
    databases (which every ledger and flow test checks); nothing refused reaches the database."""
    shutil.copyfile(migrated_sqlite_file, tmp_path / "imagine.db")
    return f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, slack: LoopbackSlack) -> Settings:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        output_dir=tmp_path / "out",
        admin_accounts=(CONSOLE,),
        discord_token=TOKEN,
        discord_guild_ids=str(GUILD_ID),
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_base_url=slack.base_url,
    )


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with open_service(settings, extra_admins=frozenset({CONSOLE}), clock=clock) as service:
        for account in (CONSOLE, DISCORD_USER, SLACK_USER):
            await service.credits.open_account(account, welcome_credits=BALANCE)
        yield service


@contextlib.asynccontextmanager
async def chat_on(
    platform: str, service: ImagineService, settings: Settings, slack: LoopbackSlack
) -> AsyncIterator[Chat]:
    if platform == "console":
        yield ConsoleChat(ScriptedConsole(service, CONSOLE, settings.output_dir))
    elif platform == "discord":
        async with LoopbackDiscord() as fake, running_bot(service, settings, fake):
            yield DiscordChat(fake)
    else:
        from bot.platforms.slack import SlackImagine

        async with serving(SlackImagine(service, settings), slack) as driver:
            yield SlackChat(driver)


async def money(service: ImagineService) -> tuple[int, tuple[tuple[int, int], ...]]:
    """How many ledger entries there are, and every account's available and held credits."""
    async with service.ledger.engine.connect() as connection:
        entries = (
            await connection.execute(select(func.count()).select_from(ledger_entries))
        ).scalar_one()
    balances = []
    for account in (CONSOLE, DISCORD_USER, SLACK_USER):
        balance = await service.ledger.balance(account)
        balances.append((balance.available, balance.held))
    return entries, tuple(balances)


def one_sentence(answer: str) -> bool:
    return bool(answer) and "\n" not in answer.strip() and len(answer) <= ANSWER_LIMIT


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_hostile_input_ends_in_one_sentence_with_no_traceback_and_no_credits_moved(
    case: Hostile,
    service: ImagineService,
    settings: Settings,
    slack: LoopbackSlack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = await money(service)
    caplog.set_level(logging.WARNING)

    async with chat_on(case.platform, service, settings, slack) as chat:
        answer = await chat.send(case)

    assert "Traceback" not in answer
    assert [record for record in caplog.records if record.exc_info] == []
    assert await money(service) == before
    account = {"console": CONSOLE, "discord": DISCORD_USER, "slack": SLACK_USER}[case.platform]
    quotes = await service.ledger.history(account, include_unconfirmed=True)
    if isinstance(case.expected, Refused):
        assert answer == case.expected.sentence
        assert one_sentence(answer)
        assert quotes == []
    else:
        [quote] = quotes
        assert (quote.prompt, quote.images_requested, quote.model_id) == (
            case.expected.prompt,
            case.expected.count,
            case.expected.model,
        )
        assert quote.credits_held == 0 and quote.credits_charged == 0


def test_the_table_holds_at_least_forty_inputs_across_every_platform() -> None:
    per_platform = Counter(case.platform for case in CASES)
    assert len(CASES) >= 40
    assert min(per_platform[name] for name in ("console", "discord", "slack")) >= 8
    assert len({case.name for case in CASES}) == len(CASES)
