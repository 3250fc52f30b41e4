"""Settings: the contract's names and defaults, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.accounts import parse_account
from bot.errors import InvalidAccount
from bot.settings import Settings

CONTRACT_VARIABLES = [
    "DATABASE_URL",
    "MODELS_FILE",
    "ADMIN_ACCOUNTS",
    "STARTING_CREDITS",
    "OUTPUT_DIR",
    "DISCORD_TOKEN",
    "DISCORD_GUILD_IDS",
    "DISCORD_API_BASE",
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "SLACK_HTTP_HOST",
    "SLACK_HTTP_PORT",
    "SLACK_API_BASE_URL",
    "GEMINI_API_KEY",
    "GEMINI_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in CONTRACT_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_contracts() -> None:
    settings = Settings()
    assert settings.database_url == "sqlite+aiosqlite:///./imagine.db"
    assert settings.models_file == Path("config/models.toml")
    assert settings.admin_accounts == ()
    assert settings.starting_credits == 0
    assert settings.output_dir == Path("./imagine-out")
    assert settings.discord_api_base == "https://discord.com/api/v10"
    assert (settings.slack_http_host, settings.slack_http_port) == ("0.0.0.0", 3000)


def test_every_contract_variable_is_a_setting() -> None:
    assert {name.lower() for name in CONTRACT_VARIABLES} <= set(Settings.model_fields)


def test_admin_accounts_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_ACCOUNTS", "discord:123, slack:T1:U2,,")
    assert Settings().admin_accounts == ("discord:123", "slack:T1:U2")


def test_a_malformed_admin_account_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_ACCOUNTS", "discord:123,alice")
    with pytest.raises(ValidationError) as refusal:
        Settings()
    assert "admin_accounts" in str(refusal.value)
    assert "'alice' is not an account" in str(refusal.value)


def test_negative_starting_credits_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARTING_CREDITS", "-1")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///imagine.db", "use sqlite+aiosqlite"),
        ("postgresql://localhost/imagine", "use postgresql+asyncpg"),
        ("not a url", "not a database URL"),
    ],
)
def test_a_database_url_without_an_async_driver_says_which_to_use(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ValidationError) as refusal:
        Settings()
    assert says in str(refusal.value)


def test_a_dotenv_file_in_the_working_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STARTING_CREDITS=25\nGEMINI_API_KEY=from-dotenv\n")
    settings = Settings()
    assert settings.starting_credits == 25
    assert settings.environment_value("GEMINI_API_KEY") == "from-dotenv"


def test_an_undeclared_provider_variable_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACME_API_KEY", "acme-key")
    assert Settings().environment_value("ACME_API_KEY") == "acme-key"


@pytest.mark.parametrize("account", ["discord:123", "slack:T01ABC:U02DEF", "console:alice"])
def test_well_formed_accounts_are_accepted(account: str) -> None:
    assert parse_account(f"  {account} ") == account


@pytest.mark.parametrize("text", ["bob", "discord:abc", "slack:T1", "telegram:1", "console:"])
def test_malformed_accounts_are_refused(text: str) -> None:
    with pytest.raises(InvalidAccount):
        parse_account(text)
