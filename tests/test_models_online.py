"""Asking the providers whether the configured model ids exist: the catalog, start-up and the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import open_service
from bot.catalog import build_catalog, check_models_online
from bot.registry import load_registry
from bot.settings import Settings
from providers import PROVIDERS
from tests import fake_gemini
from tests.cli_helpers import imagine_bot
from tests.fake_gemini import FakeGemini

MODELS = """
[models.pro]
provider = "google"
provider_model = "gemini-3-pro-image"
name = "Pro"
credits_per_image = 10
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 1

[models.imaginary]
provider = "google"
provider_model = "gemini-0-imaginary-image"
name = "Imaginary"
credits_per_image = 10
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 1

[models.gpt]
provider = "openai"
provider_model = "gpt-image-1.5"
name = "GPT"
credits_per_image = 10
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 1

[models.sketch]
provider = "local"
provider_model = "procedural-v1"
name = "Sketch"
credits_per_image = 1
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 1
"""
MISSING_REASON = "Google does not offer the model 'gemini-0-imaginary-image'"


@pytest.fixture
async def gemini() -> AsyncIterator[FakeGemini]:
    async with FakeGemini() as server:
        yield server


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    return path


def settings_for(models_file: Path, gemini: FakeGemini, key: str = fake_gemini.API_KEY) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{models_file.parent / 'imagine.db'}",
        models_file=models_file,
        gemini_api_key=key,
        gemini_base_url=gemini.base_url,
        gemini_max_attempts=1,
        # Never a developer's real keys from the environment: these tests must stay offline.
        google_api_key=None,
        openai_api_key=None,
    )


async def test_an_id_the_provider_does_not_offer_is_disabled_with_its_reason(
    models_file: Path, gemini: FakeGemini
) -> None:
    catalog, pool = build_catalog(
        load_registry(models_file, PROVIDERS), settings_for(models_file, gemini)
    )
    try:
        check = await check_models_online(catalog, pool)
    finally:
        await pool.aclose()

    assert check.missing == {"imaginary": MISSING_REASON}
    assert check.unreachable == {}
    assert [model.id for model in check.catalog.usable()] == ["pro", "sketch"]
    imaginary = check.catalog.registry.get("imaginary")
    assert imaginary is not None
    assert check.catalog.reason_unavailable(imaginary) == MISSING_REASON


async def test_providers_without_a_key_are_not_asked_and_keep_their_reason(
    models_file: Path, gemini: FakeGemini
) -> None:
    catalog, pool = build_catalog(
        load_registry(models_file, PROVIDERS), settings_for(models_file, gemini)
    )
    try:
        check = await check_models_online(catalog, pool)
    finally:
        await pool.aclose()

    gpt = check.catalog.registry.get("gpt")
    assert gpt is not None
    assert check.catalog.reason_unavailable(gpt) == "no API key is configured (set OPENAI_API_KEY)"
    assert "openai" not in check.unreachable


async def test_a_provider_that_cannot_be_asked_keeps_its_models(
    models_file: Path, gemini: FakeGemini
) -> None:
    settings = settings_for(models_file, gemini, key="a-wrong-key")
    catalog, pool = build_catalog(load_registry(models_file, PROVIDERS), settings)
    try:
        check = await check_models_online(catalog, pool)
    finally:
        await pool.aclose()

    assert check.missing == {}
    assert "GEMINI_API_KEY" in check.unreachable["google"]
    assert [model.id for model in check.catalog.usable()] == ["pro", "imaginary", "sketch"]


async def test_start_up_disables_models_the_provider_does_not_offer(
    models_file: Path, gemini: FakeGemini
) -> None:
    async with open_service(settings_for(models_file, gemini), check_online=True) as service:
        assert [model.id for model in service.catalog.usable()] == ["pro", "sketch"]


async def run_cli(cwd: Path, *arguments: str, **environment: str) -> tuple[int, str, str]:
    """``imagine-bot ARGUMENTS``, in a thread so that this test's loop goes on serving fakes."""
    result = await asyncio.to_thread(imagine_bot, cwd, *arguments, **environment)
    return result.returncode, result.stdout, result.stderr


async def test_check_warns_on_stderr_when_a_price_is_below_cost(tmp_path: Path) -> None:
    code, stdout, stderr = await run_cli(tmp_path, "models", "--check", CREDIT_VALUE_USD="0.001")

    assert code == 0
    assert "no problems found" in stdout
    assert "warning:" in stderr
    assert "below the provider's cost" in stderr


async def test_online_without_check_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = await run_cli(tmp_path, "models", "--online")

    assert code == 2
    assert "--check --online" in stderr


async def test_online_check_without_keys_skips_those_models(tmp_path: Path) -> None:
    code, stdout, _ = await run_cli(tmp_path, "models", "--check", "--online")

    assert code == 0
    assert "skipped gemini-3-pro: no API key is configured (set GEMINI_API_KEY)" in stdout
    assert "ok local-sketch: local offers 'procedural-v1'" in stdout


async def test_online_check_disables_an_unknown_id_and_exits_1(
    tmp_path: Path, models_file: Path, gemini: FakeGemini
) -> None:
    code, stdout, _ = await run_cli(
        tmp_path,
        "models",
        "--check",
        "--online",
        MODELS_FILE=str(models_file),
        GEMINI_API_KEY=fake_gemini.API_KEY,
        GEMINI_BASE_URL=gemini.base_url,
    )

    assert code == 1
    assert f"disabled imaginary: {MISSING_REASON}" in stdout
    assert "ok pro: google offers 'gemini-3-pro-image'" in stdout
