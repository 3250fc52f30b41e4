"""ADDING_MODELS.md followed for real: its TOML, its registration line and its example provider.

The blocks are read out of the document itself, so the recipe and what works
cannot drift apart.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

import providers
from bot.app import open_service
from bot.observability import configure_logging
from bot.registry import load_registry
from bot.settings import Settings
from providers import PROVIDERS, ProviderSpec
from tests.cli_helpers import imagine_bot
from tests.conftest import FakeClock
from tests.test_console_flow import OWNER, ScriptedConsole, available

REPO = Path(__file__).resolve().parent.parent
GUIDE = (REPO / "ADDING_MODELS.md").read_text(encoding="utf-8")
ACME_KEY = "acme-test-key"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", GUIDE, flags=re.DOTALL | re.MULTILINE)


def block_containing(language: str, text: str) -> str:
    [block] = [block for block in blocks(language) if text in block]
    return block


class FakeAcme:
    """The Acme Images API: ``POST /v1/images`` answers a PNG of the asked size, or ``unsafe``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeAcme:
        app = web.Application()
        app.router.add_post("/v1/images", self._images)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _images(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {ACME_KEY}":
            return web.json_response({"error": {"code": "auth", "message": "bad key"}}, status=401)
        body = await request.json()
        self.requests.append(body)
        if "forbidden" in body["prompt"]:
            return web.json_response(
                {"error": {"code": "unsafe", "message": "refused"}}, status=400
            )
        buffer = io.BytesIO()
        Image.new("RGB", (body["width"], body["height"]), (10, 120, 90)).save(buffer, "PNG")
        return web.json_response({"image": base64.b64encode(buffer.getvalue()).decode()})


@pytest.fixture
def acme_registered() -> Iterator[ProviderSpec]:
    """The guide's registration line, run through the real ``register``, with the example module."""
    line = block_containing("python", "register(")
    line = line.replace('"providers.acme:AcmeProvider"', '"tests.example_provider:AcmeProvider"')
    exec(line, {"register": providers.register, "ProviderSpec": ProviderSpec})
    try:
        yield PROVIDERS["acme"]
    finally:
        PROVIDERS.pop("acme", None)


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(block_containing("toml", "[models.acme-art]"), encoding="utf-8")
    return path


@pytest.fixture
async def acme() -> AsyncIterator[FakeAcme]:
    async with FakeAcme() as server:
        yield server


@pytest.fixture
async def console(
    acme_registered: ProviderSpec,
    models_file: Path,
    acme: FakeAcme,
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[ScriptedConsole]:
    # Settings a new provider adds are read from the environment by the names it registered.
    monkeypatch.setenv("ACME_API_KEY", ACME_KEY)
    monkeypatch.setenv("ACME_BASE_URL", acme.base_url)
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}",
        models_file=models_file,
        output_dir=tmp_path / "out",
    )
    async with open_service(settings, extra_admins=frozenset({OWNER}), clock=clock) as service:
        await service.credits.open_account(OWNER, welcome_credits=100)
        yield ScriptedConsole(service, OWNER, settings.output_dir)


def test_the_guide_shows_the_example_provider_exactly() -> None:
    module = (REPO / "tests" / "example_provider.py").read_text(encoding="utf-8")

    assert module in blocks("python")


def test_the_guides_model_of_an_existing_provider_loads(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(block_containing("toml", 'provider = "openai"'), encoding="utf-8")

    [model] = load_registry(path, PROVIDERS).models

    assert (model.id, model.provider_options) == ("gpt-image-2", {"quality": "high"})


def test_the_guides_new_provider_and_its_model_load(
    acme_registered: ProviderSpec, models_file: Path
) -> None:
    [model] = load_registry(models_file, PROVIDERS).models

    assert (model.id, model.provider, acme_registered.api_key_env) == (
        "acme-art",
        "acme",
        ("ACME_API_KEY",),
    )


async def test_the_new_provider_generates_and_charges_through_the_console(
    console: ScriptedConsole, acme: FakeAcme, tmp_path: Path
) -> None:
    said = await console.say("/imagine model:acme-art count:2 res:2K ar:16:9 a fox", "y")

    assert "Done: 2 images for 6 credits." in said
    assert [(r["model"], r["width"], r["height"]) for r in acme.requests] == [
        ("acme-art-v2", 2048, 1152)
    ] * 2
    assert await available(console.chat.service) == 94
    [saved, _] = sorted((tmp_path / "out").iterdir())
    with Image.open(saved) as image:
        assert image.size == (2048, 1152)


async def test_the_new_providers_refusal_charges_nothing(
    console: ScriptedConsole, acme: FakeAcme
) -> None:
    said = await console.say("/imagine model:acme-art a forbidden fox", "y")

    assert (
        "The provider's safety filter blocked this request (Acme's filter refused the prompt); "
        "no credits were charged."
    ) in said
    assert await available(console.chat.service) == 100


async def test_without_its_key_the_new_providers_models_say_what_to_set(
    acme_registered: ProviderSpec, models_file: Path, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}",
        models_file=models_file,
    )
    async with open_service(settings) as service:
        [model] = service.catalog.listed()
        assert service.catalog.reason_unavailable(model) == (
            "no API key is configured (set ACME_API_KEY)"
        )


# -- its key is a secret like any other --------------------------------------------
# Which variables are secret comes from the registrations: the guide's one line is enough.


@pytest.fixture
def root_logging_put_back() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("acme_registered", "root_logging_put_back")
def test_the_new_providers_key_is_redacted_from_log_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ACME_API_KEY", ACME_KEY)
    configure_logging(Settings(_env_file=None), level="INFO")

    # What an HTTP library's error might carry: the request's headers.
    logging.getLogger("providers.acme").error("Acme refused %s", f"Bearer {ACME_KEY}")

    logged = capsys.readouterr().err
    assert "Acme refused Bearer [redacted]" in logged
    assert ACME_KEY not in logged


@pytest.mark.usefixtures("acme_registered")
def test_the_new_providers_key_is_masked_in_config(tmp_path: Path) -> None:
    result = imagine_bot(tmp_path, "config", ACME_API_KEY=ACME_KEY)

    assert result.returncode == 0, result.stderr
    assert ACME_KEY not in result.stdout
    assert re.search(r"^ACME_API_KEY\s+set$", result.stdout, re.MULTILINE)


@pytest.mark.usefixtures("acme_registered")
def test_the_new_providers_key_written_only_in_dotenv_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"ACME_API_KEY={ACME_KEY}\nACME_TYPO_KEY=ignored\n")

    settings = Settings()

    assert settings.environment_value("ACME_API_KEY") == ACME_KEY
    assert settings.model_extra == {"acme_api_key": ACME_KEY}


@pytest.mark.usefixtures("acme_registered")
def test_the_new_providers_key_written_only_in_dotenv_is_masked_in_config(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"ACME_API_KEY={ACME_KEY}\n")

    result = imagine_bot(tmp_path, "config")

    assert result.returncode == 0, result.stderr
    assert ACME_KEY not in result.stdout
    assert re.search(r"^ACME_API_KEY\s+set$", result.stdout, re.MULTILINE)
