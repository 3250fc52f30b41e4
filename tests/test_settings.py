"""Settings and account ids: the contract's names and defaults, and errors that name the variable."""

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
    "WEB_HOST",
    "WEB_PORT",
    "PUBLIC_URL",
    "STRIPE_API_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_API_BASE",
    "DISCORD_ALLOW_TEST_PURCHASES",
    "SLACK_API_BASE_URL",
    "GEMINI_API_KEY",
    "GEMINI_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "DISCORD_GUILD_ALLOWLIST",
    "SLACK_TEAM_ALLOWLIST",
    "DISCORD_SHARD_COUNT",
    "DISCORD_SHARD_IDS",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting comes from the machine running the tests, nor from a .env beside them."""
    for variable in {*CONTRACT_VARIABLES, *(field.upper() for field in Settings.model_fields)}:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)


def validation_problems(**environment: str) -> list[tuple[str, str]]:
    """``(VARIABLE, message)`` for each problem ``Settings`` reports, as the CLI names them."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        with pytest.raises(ValidationError) as refusal:
            Settings(_env_file=None)
    return [
        ("_".join(str(part) for part in problem["loc"]).upper(), problem["msg"])
        for problem in refusal.value.errors()
    ]


# -- defaults -------------------------------------------------------------------


def test_every_contract_variable_is_a_setting() -> None:
    assert {name.lower() for name in CONTRACT_VARIABLES} <= set(Settings.model_fields)


def test_database_url_defaults_to_a_sqlite_file_in_the_working_folder() -> None:
    assert Settings(_env_file=None).database_url == "sqlite+aiosqlite:///./imagine.db"


def test_models_file_defaults_to_the_shipped_registry() -> None:
    assert Settings(_env_file=None).models_file == Path("config/models.toml")


def test_there_are_no_admins_by_default() -> None:
    assert Settings(_env_file=None).admin_accounts == ()


def test_new_accounts_start_with_no_credits_by_default() -> None:
    assert Settings(_env_file=None).starting_credits == 0


def test_output_dir_defaults_to_imagine_out() -> None:
    assert Settings(_env_file=None).output_dir == Path("./imagine-out")


def test_discord_api_base_defaults_to_discords_v10_api() -> None:
    assert Settings(_env_file=None).discord_api_base == "https://discord.com/api/v10"


def test_the_web_server_listens_on_every_interface_at_port_3000_by_default() -> None:
    settings = Settings(_env_file=None)
    assert (settings.web_host, settings.web_port) == ("0.0.0.0", 3000)


def test_slack_http_host_and_port_still_place_the_web_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLACK_HTTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SLACK_HTTP_PORT", "8080")
    settings = Settings(_env_file=None)
    assert (settings.web_host, settings.web_port) == ("127.0.0.1", 8080)


def test_web_port_wins_over_its_older_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_HTTP_PORT", "8080")
    monkeypatch.setenv("WEB_PORT", "9090")
    assert Settings(_env_file=None).web_port == 9090


def test_platform_tokens_and_provider_keys_are_unset_by_default() -> None:
    settings = Settings(_env_file=None)
    unset = ("discord_token", "slack_bot_token", "slack_app_token", "gemini_api_key")
    assert [getattr(settings, name) for name in unset] == [None] * len(unset)
    assert settings.openai_api_key is None


# -- values from the environment --------------------------------------------------


def test_each_setting_reads_its_upper_cased_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARTING_CREDITS", "7")
    monkeypatch.setenv("WEB_PORT", "8080")
    monkeypatch.setenv("OUTPUT_DIR", "/srv/images")
    settings = Settings(_env_file=None)
    assert (settings.starting_credits, settings.web_port, settings.output_dir) == (
        7,
        8080,
        Path("/srv/images"),
    )


def test_admin_accounts_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_ACCOUNTS", "discord:123, slack:T1:U2")
    assert Settings(_env_file=None).admin_accounts == ("discord:123", "slack:T1:U2")


def test_empty_entries_in_admin_accounts_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_ACCOUNTS", " ,discord:123,, ")
    assert Settings(_env_file=None).admin_accounts == ("discord:123",)


def test_a_malformed_admin_account_names_the_variable_and_the_account() -> None:
    [(variable, message)] = validation_problems(ADMIN_ACCOUNTS="discord:123,alice")
    assert variable == "ADMIN_ACCOUNTS"
    assert "'alice' is not an account" in message


def test_without_allowlists_the_bot_serves_everywhere_direct_messages_too() -> None:
    settings = Settings(_env_file=None)
    assert settings.serves_discord(123) and settings.serves_discord(None)
    assert settings.serves_slack("T0123", None)


def test_allowlists_serve_only_the_listed_places(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_GUILD_ALLOWLIST", "123, 456")
    monkeypatch.setenv("SLACK_TEAM_ALLOWLIST", "T0123,E0ORG")
    settings = Settings(_env_file=None)
    assert [settings.serves_discord(guild) for guild in (123, 456, 789, None)] == [
        True,
        True,
        False,
        False,
    ]
    assert settings.serves_slack("T0123", None)
    # A workspace of a listed Enterprise organization is served, whatever its own id.
    assert settings.serves_slack("T0OTHER", "E0ORG")
    assert not settings.serves_slack("T0OTHER", "E0ELSE")
    assert not settings.serves_slack(None, None)


def test_negative_starting_credits_are_refused() -> None:
    [(variable, message)] = validation_problems(STARTING_CREDITS="-1")
    assert variable == "STARTING_CREDITS"
    assert "greater than or equal to 0" in message


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("WEB_PORT", "99999", "less than or equal to 65535"),
        ("QUOTE_TTL_SECONDS", "inf", "finite number"),
        ("GENERATION_TIMEOUT_SECONDS", "nan", "finite number"),
        ("STARTING_CREDITS", "99999999999999999999", "less than or equal to 1000000000"),
        ("CONSOLE_WELCOME_CREDITS", "99999999999999999999", "less than or equal to 1000000000"),
        ("DISCORD_GUILD_IDS", "123,myguild", "'myguild' is not a server id"),
        ("DISCORD_GUILD_ALLOWLIST", "123,myguild", "'myguild' is not a server id"),
        ("SLACK_TEAM_ALLOWLIST", "T0123,general", "'general' is not a workspace id"),
    ],
)
def test_a_value_the_bot_could_not_use_names_its_variable(
    variable: str, value: str, says: str
) -> None:
    [(named, message)] = validation_problems(**{variable: value})
    assert named == variable
    assert says in message


# -- Discord shards ---------------------------------------------------------------


def test_without_shard_settings_one_process_runs_every_shard() -> None:
    settings = Settings(_env_file=None)
    assert (settings.discord_shard_count, settings.discord_shard_ids) == (None, None)


def test_a_shard_count_without_ids_runs_all_of_its_shards_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISCORD_SHARD_COUNT", "4")
    settings = Settings(_env_file=None)
    assert (settings.discord_shard_count, settings.discord_shard_ids) == (4, None)


@pytest.mark.parametrize(
    ("text", "ids"),
    [("0-3", (0, 1, 2, 3)), ("4,5", (4, 5)), ("0-1,4", (0, 1, 4)), (" 5 , 2-3 ,2", (2, 3, 5))],
)
def test_shard_ids_are_numbers_and_ranges_sorted(
    monkeypatch: pytest.MonkeyPatch, text: str, ids: tuple[int, ...]
) -> None:
    monkeypatch.setenv("DISCORD_SHARD_COUNT", "8")
    monkeypatch.setenv("DISCORD_SHARD_IDS", text)
    assert Settings(_env_file=None).discord_shard_ids == ids


@pytest.mark.parametrize(
    ("environment", "says"),
    [
        ({"DISCORD_SHARD_IDS": "0-3"}, "needs DISCORD_SHARD_COUNT too"),
        ({"DISCORD_SHARD_COUNT": "2", "DISCORD_SHARD_IDS": "1-2"}, "shards are numbered 0 to 1"),
        ({"DISCORD_SHARD_COUNT": "4", "DISCORD_SHARD_IDS": "first"}, "e.g. 0-3, 4,5 or 0-1,4"),
        ({"DISCORD_SHARD_COUNT": "4", "DISCORD_SHARD_IDS": "3-1"}, "'3-1' runs backwards"),
        ({"DISCORD_SHARD_COUNT": "4", "DISCORD_SHARD_IDS": "0,,1"}, "'' is not a shard number"),
    ],
)
def test_shard_ids_the_bot_could_not_run_name_the_variable_and_what_to_write(
    environment: dict[str, str], says: str
) -> None:
    [(variable, message)] = validation_problems(**environment)
    assert variable == "DISCORD_SHARD_IDS"
    assert says in message


def test_a_shard_count_below_one_is_refused_once_not_again_for_the_ids() -> None:
    [(variable, message)] = validation_problems(DISCORD_SHARD_COUNT="0", DISCORD_SHARD_IDS="0")
    assert variable == "DISCORD_SHARD_COUNT"
    assert "greater than or equal to 1" in message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///imagine.db", "use sqlite+aiosqlite"),
        ("postgresql://localhost/imagine", "use postgresql+asyncpg"),
        ("not a url", "not a database URL"),
    ],
)
def test_a_database_url_without_an_async_driver_says_which_to_use(url: str, says: str) -> None:
    [(variable, message)] = validation_problems(DATABASE_URL=url)
    assert variable == "DATABASE_URL"
    assert says in message


def test_a_dotenv_file_in_the_working_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STARTING_CREDITS=25\nMODELS_FILE=other.toml\n")
    settings = Settings()
    assert (settings.starting_credits, settings.models_file) == (25, Path("other.toml"))


def test_the_environment_overrides_the_dotenv_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("STARTING_CREDITS=25\n")
    monkeypatch.setenv("STARTING_CREDITS", "3")
    assert Settings().starting_credits == 3


# -- environment_value: provider variables by name --------------------------------


def test_environment_value_reads_a_declared_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-key")
    assert Settings(_env_file=None).environment_value("GEMINI_API_KEY") == "gemini-key"


def test_environment_value_reads_a_declared_setting_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GEMINI_API_KEY=from-dotenv\n")
    assert Settings().environment_value("GEMINI_API_KEY") == "from-dotenv"


def test_environment_value_falls_back_to_the_process_environment_for_undeclared_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACME_API_KEY", "acme-key")
    assert Settings(_env_file=None).environment_value("ACME_API_KEY") == "acme-key"


def test_environment_value_of_an_unset_variable_is_none() -> None:
    settings = Settings(_env_file=None)
    assert settings.environment_value("GEMINI_API_KEY") is None
    assert settings.environment_value("ACME_API_KEY") is None


@pytest.mark.parametrize("name", ["GEMINI_BASE_URL", "ACME_BASE_URL"])
def test_environment_value_treats_an_empty_variable_as_unset(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """``GEMINI_BASE_URL=`` in a .env template must not send requests to an empty host."""
    monkeypatch.setenv(name, "")
    assert Settings(_env_file=None).environment_value(name) is None


def test_environment_value_gives_non_string_settings_as_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLACK_HTTP_PORT", "8080")
    assert Settings(_env_file=None).environment_value("SLACK_HTTP_PORT") == "8080"


# -- account ids ------------------------------------------------------------------


@pytest.mark.parametrize("account", ["discord:123", "slack:T01ABC:U02DEF", "console:alice"])
def test_well_formed_accounts_are_accepted(account: str) -> None:
    assert parse_account(account) == account


def test_surrounding_spaces_are_dropped_from_an_account() -> None:
    assert parse_account("  discord:123 ") == "discord:123"


@pytest.mark.parametrize(
    "text",
    ["bob", "discord:abc", "slack:T1", "telegram:1", "console:", "discord:", "", "discord:1 2"],
)
def test_malformed_accounts_are_refused(text: str) -> None:
    with pytest.raises(InvalidAccount) as refusal:
        parse_account(text)
    assert refusal.value.message == (
        f"'{text}' is not an account; use discord:<user id>, slack:<team id>:<user id> "
        "or console:<name>."
    )


def test_described_settings_hide_the_database_password() -> None:
    settings = Settings(_env_file=None, database_url="postgresql+asyncpg://bot:hunter2@db/imagine")

    shown = dict(settings.described())

    assert shown["DATABASE_URL"] == "postgresql+asyncpg://bot:***@db/imagine"
