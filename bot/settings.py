"""The one settings object: every option from the environment or a ``.env`` file."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.accounts import parse_account
from bot.credits import MAX_GRANT
from providers import PROVIDERS

_ASYNC_DRIVERS_BY_BACKEND = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_ASYNC_DRIVERS = frozenset(_ASYNC_DRIVERS_BY_BACKEND.values())


SECRET_FIELD = re.compile(r"(token|secret|api_key|password)")
_A_DAY = 86_400
_AN_HOUR = 3_600


def _mask(value: str) -> str:
    """Enough to tell two keys apart, never enough to use one."""
    return "set (…" + value[-4:] + ")" if len(value) >= 16 else "set"


def _server_ids(ids: Sequence[str]) -> tuple[str, ...]:
    for part in ids:
        if part and not (part.isascii() and part.isdigit()):
            raise ValueError(
                f"{part!r} is not a server id; give the numeric ids, comma-separated "
                "(Discord: Developer Mode, then right-click the server, Copy Server ID)"
            )
    return tuple(ids)


_SHARD_IDS_EXAMPLE = "write shard numbers and ranges, e.g. 0-3, 4,5 or 0-1,4"


def _shard_ids(text: str) -> tuple[int, ...]:
    """``0-3``, ``4,5`` or ``0-1,4`` as sorted, distinct shard numbers."""
    ids: set[int] = set()
    for part in (piece.strip() for piece in text.split(",")):
        match = re.fullmatch(r"(\d{1,6})(?:\s*-\s*(\d{1,6}))?", part)
        if match is None:
            raise ValueError(f"{part!r} is not a shard number or range; {_SHARD_IDS_EXAMPLE}")
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        if last < first:
            raise ValueError(f"{part!r} runs backwards; {_SHARD_IDS_EXAMPLE}")
        ids.update(range(first, last + 1))
    return tuple(sorted(ids))


class Settings(BaseSettings):
    """Names are the contract in ``DESIGN.md``; each field reads the upper-cased variable."""

    # An empty variable means "not set", as in .env.example, where most lines are empty.
    # Unknown names are kept only to let a provider's own variables come from .env
    # (see ``_provider_variables_only``).
    model_config = SettingsConfigDict(
        env_file=".env", extra="allow", frozen=True, env_ignore_empty=True
    )

    database_url: str = "sqlite+aiosqlite:///./imagine.db"
    models_file: Path = Path("config/models.toml")
    pricing_file: Path = Path("config/pricing.toml")
    """Allowances and batch discounts. Missing at this default: none of either; named
    explicitly (``PRICING_FILE``) and missing: an error."""
    admin_accounts: Annotated[tuple[str, ...], NoDecode] = ()
    starting_credits: int = Field(default=0, ge=0, le=MAX_GRANT)
    output_dir: Path = Path("./imagine-out")

    console_welcome_credits: int = Field(default=100, ge=0, le=MAX_GRANT)
    """The one-time grant ``console:local`` receives so the quick start can generate."""
    quote_ttl_seconds: float = Field(default=600, gt=0, le=_A_DAY, allow_inf_nan=False)
    """How long a quote's Generate button stays valid."""
    generation_timeout_seconds: float = Field(default=180, gt=0, le=_AN_HOUR, allow_inf_nan=False)
    """Deadline for one whole generation at the provider."""
    sweep_interval_seconds: float = Field(default=60, gt=0, le=_AN_HOUR, allow_inf_nan=False)
    """How often the bot renews its generations' leases and settles those whose lease ran out."""
    verify_interval_hours: float = Field(default=6, gt=0, le=24 * 7, allow_inf_nan=False)
    """How often a running bot recomputes every balance from the ledger (``ledger verify``)."""
    provider_concurrency: int = Field(default=4, ge=1, le=10_000)
    """Generations one provider runs at once; the rest wait in a queue and are told their place."""
    user_concurrency: int = Field(default=2, ge=1, le=64)
    """Generations one user may run at once; more wait their turn and are told their place."""
    provider_limits: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    """Per-provider overrides of PROVIDER_CONCURRENCY, as ``google=8,openai=2``."""
    reference_storage_mb_per_account: int = Field(default=40, ge=1, le=1_000_000)
    """Megabytes of reference images one account's requests may hold until they are generated."""
    reference_storage_mb_total: int = Field(default=1000, ge=1, le=1_000_000)
    """Megabytes of reference images every account's requests may hold together, in the database."""
    subject_storage_mb: int = Field(default=50, ge=1, le=1_000_000)
    """Megabytes of subject images (named sets of reference images) one account may keep."""
    quotes_per_minute: int = Field(default=10, ge=1, le=10_000)
    """Requests (quotes) one account may start per minute, counted across every bot process."""
    circuit_failures: int = Field(default=5, ge=1, le=1000)
    """Generations in a row that find a provider down (unavailable, timed out, rate-limited)
    before its models are answered with an alternative instead."""
    circuit_cooldown_seconds: float = Field(default=60, gt=0, le=_A_DAY, allow_inf_nan=False)
    """How long a provider's circuit stays open before one request is let through as a trial."""
    upload_timeout_seconds: float = Field(default=60, gt=0, le=_AN_HOUR, allow_inf_nan=False)
    """How long one step of posting images (a Discord message, a Slack upload call) may take
    before the bot stops waiting and asks the platform whether it arrived."""
    shutdown_grace_seconds: float = Field(default=30, ge=0, le=_AN_HOUR, allow_inf_nan=False)
    """On SIGTERM, how long running generations may go on before they are stopped and released."""
    log_format: str = Field(default="auto", pattern="^(auto|json|text)$")
    """``json`` lines for log collectors, ``text`` for people; ``auto`` is JSON unless on a terminal."""
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """When set, ``/livez`` (liveness), ``/readyz`` (readiness) and Prometheus ``/metrics`` are served on this port."""
    metrics_host: str = "0.0.0.0"
    local_delay_seconds: float | None = Field(default=None, ge=0, le=_AN_HOUR, allow_inf_nan=False)
    """A pause before each ``local`` image, to try progress and shutdown with a slow provider."""
    credit_value_usd: float = Field(default=0.02, gt=0)
    """What one credit is worth; ``models --check`` warns where a price is below the provider's cost."""
    web_host: str = Field(
        default="0.0.0.0", validation_alias=AliasChoices("web_host", "slack_http_host")
    )
    web_port: int = Field(
        default=3000, ge=1, le=65535, validation_alias=AliasChoices("web_port", "slack_http_port")
    )
    """The one public web server: ``/slack/events`` (Slack's HTTP mode) and ``/stripe/webhook``.
    ``SLACK_HTTP_HOST``/``SLACK_HTTP_PORT`` are read when these are not set."""
    public_url: str | None = None
    """How the outside world reaches the web server: Checkout's return pages are under it."""
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    """Another Stripe-compatible API (tests); unset: Stripe's own."""
    alert_channel: str | None = Field(default=None, pattern=r"^(discord:[0-9]+|slack:[A-Z0-9]+)$")
    """Where admins are told a provider passed 80% of its monthly budget: ``discord:<channel
    id>`` or ``slack:<channel id>``."""
    discord_allow_test_purchases: bool = False
    """Grant credits for Discord's test-mode purchases (entitlement type 4)."""
    discord_shard_count: int | None = Field(default=None, ge=1, le=100_000)
    """How many shards the bot runs in all, across its processes; unset: what Discord recommends."""
    discord_shard_ids: Annotated[tuple[int, ...] | None, NoDecode] = None
    """The shards this process runs, of ``DISCORD_SHARD_COUNT``; unset: all of them."""

    discord_token: str | None = None
    discord_guild_ids: str | None = None
    discord_api_base: str = "https://discord.com/api/v10"
    discord_guild_allowlist: Annotated[tuple[str, ...], NoDecode] = ()
    """The servers the bot serves; empty: every server and direct messages."""
    slack_team_allowlist: Annotated[tuple[str, ...], NoDecode] = ()
    """The workspaces (or Enterprise organizations) the bot serves; empty: every one."""
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_api_base_url: str | None = None
    gemini_api_key: str | None = None
    google_api_key: str | None = None
    gemini_base_url: str | None = None
    gemini_api_version: str | None = None
    gemini_concurrency: int | None = Field(default=None, ge=1, le=256)
    gemini_max_attempts: int | None = Field(default=None, ge=1, le=10)
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_concurrency: int | None = Field(default=None, ge=1, le=256)

    @field_validator("database_url")
    @classmethod
    def _async_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL; use e.g. sqlite+aiosqlite:///./imagine.db "
                "or postgresql+asyncpg://user@host/dbname"
            ) from None
        if url.drivername not in _ASYNC_DRIVERS:
            backend = url.get_backend_name()
            wanted = _ASYNC_DRIVERS_BY_BACKEND.get(backend)
            hint = f"use {wanted}://…" if wanted else "use sqlite+aiosqlite or postgresql+asyncpg"
            raise ValueError(f"{url.drivername} is not supported; {hint}")
        return value

    @field_validator("discord_guild_ids")
    @classmethod
    def _guild_ids_are_numbers(cls, value: str | None) -> str | None:
        _server_ids(re.split(r"[,\s]+", value or ""))
        return value

    @field_validator("discord_shard_ids", mode="before")
    @classmethod
    def _parse_shard_ids(cls, value: object) -> object:
        return _shard_ids(value) if isinstance(value, str) else value

    @field_validator("discord_shard_ids")
    @classmethod
    def _shard_ids_within_the_count(
        cls, ids: tuple[int, ...] | None, info: ValidationInfo
    ) -> tuple[int, ...] | None:
        if ids is None:
            return None
        if not ids:
            raise ValueError(f"names no shard; {_SHARD_IDS_EXAMPLE}")
        # A count that failed its own check is reported there, not again here.
        if "discord_shard_count" not in info.data:
            return ids
        count = info.data["discord_shard_count"]
        if count is None:
            raise ValueError(
                "needs DISCORD_SHARD_COUNT too: set it to the number of shards across all "
                "processes, e.g. DISCORD_SHARD_COUNT=8 with DISCORD_SHARD_IDS=0-3 here"
            )
        if ids[-1] >= count:
            raise ValueError(
                f"names shard {ids[-1]}, but shards are numbered 0 to {count - 1} "
                f"with DISCORD_SHARD_COUNT={count}"
            )
        return ids

    @field_validator("provider_limits", mode="before")
    @classmethod
    def _parse_limits(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        limits: dict[str, int] = {}
        for part in filter(None, (piece.strip() for piece in value.split(","))):
            name, equals, number = part.partition("=")
            if not equals or not number.strip().isdigit() or int(number) < 1:
                raise ValueError(f"{part!r} is not provider=number, e.g. google=8,openai=2")
            limits[name.strip()] = int(number)
        return limits

    @field_validator(
        "admin_accounts", "discord_guild_allowlist", "slack_team_allowlist", mode="before"
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="before")
    @classmethod
    def _provider_variables_only(cls, values: object) -> object:
        """Drop unknown names, except the variables registered providers read.

        A provider added with one registration line has no field here, yet its
        key may be written in ``.env`` like any other setting.
        """
        if not isinstance(values, dict):
            return values
        wanted = set(cls.model_fields) | {
            variable.lower() for spec in PROVIDERS.values() for variable in spec.variables
        }
        return {name: value for name, value in values.items() if name.lower() in wanted}

    @field_validator("discord_guild_allowlist")
    @classmethod
    def _allowed_guilds_are_numbers(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        return _server_ids(ids)

    @field_validator("slack_team_allowlist")
    @classmethod
    def _allowed_teams_are_slack_ids(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        for team in ids:
            if not re.fullmatch(r"[TE][A-Z0-9]{2,20}", team):
                raise ValueError(
                    f"{team!r} is not a workspace id; give workspace ids like T0123ABCD or an"
                    " Enterprise organization's E0123ABCD, comma-separated"
                )
        return ids

    @field_validator("admin_accounts")
    @classmethod
    def _accounts_are_well_formed(cls, accounts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(parse_account(account) for account in accounts)

    def environment_value(self, name: str) -> str | None:
        """The value of a setting by its variable name, for provider keys named by the provider.

        Declared settings come from here; a provider's own variables come from
        the process environment, else from ``.env``, so a new provider needs no
        new field. An empty value counts as unset either way.
        """
        field_name = name.lower()
        if field_name in type(self).model_fields:
            value = getattr(self, field_name)
            return None if value is None else (str(value) or None)
        from_dotenv = (self.model_extra or {}).get(field_name)
        return os.environ.get(name) or (None if from_dotenv is None else str(from_dotenv) or None)

    def secret_variables(self) -> tuple[str, ...]:
        """Variables whose values are never shown or logged, each provider's API keys among them.

        The keys are read from the registrations, so a provider added with one ``register`` line is
        covered without a field here; the database password is part of DATABASE_URL.
        """
        own = [name.upper() for name in type(self).model_fields if SECRET_FIELD.search(name)]
        keys = [variable for spec in PROVIDERS.values() for variable in spec.api_key_env]
        return tuple(dict.fromkeys([*own, *keys]))

    def serves_discord(self, guild_id: int | None) -> bool:
        """Whether the bot serves this server; a direct message has none, so only without a list."""
        allowed = self.discord_guild_allowlist
        return not allowed or (guild_id is not None and str(guild_id) in allowed)

    def serves_slack(self, team_id: str | None, enterprise_id: str | None) -> bool:
        """Whether the bot serves this workspace: listed itself, or its Enterprise organization."""
        allowed = self.slack_team_allowlist
        return not allowed or any(place in allowed for place in (team_id, enterprise_id) if place)

    def concurrency_for(self, provider: str) -> int:
        return self.provider_limits.get(provider, self.provider_concurrency)

    def described(self) -> list[tuple[str, str]]:
        """Every setting as ``(VARIABLE, value)``, secrets masked, for ``imagine-bot config``."""
        secret = self.secret_variables()
        rows = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "database_url":
                shown = make_url(value).render_as_string(hide_password=True)
            elif value is not None and name.upper() in secret:
                shown = _mask(str(value))
            elif isinstance(value, dict):
                shown = ",".join(f"{key}={number}" for key, number in value.items())
            elif isinstance(value, tuple):
                shown = ",".join(str(part) for part in value)
            else:
                shown = "" if value is None else str(value)
            rows.append((name.upper(), shown))
        # A provider's key need not be a declared setting; the operator still sees whether it is set.
        declared = {name.upper() for name in type(self).model_fields}
        for variable in secret:
            if variable not in declared:
                value = self.environment_value(variable)
                rows.append((variable, "" if value is None else _mask(value)))
        return rows

    @property
    def pricing_file_required(self) -> bool:
        """Whether PRICING_FILE was set: then a missing file is a mistake, not "no pricing"."""
        return "pricing_file" in self.model_fields_set

    @property
    def has_chat_platform(self) -> bool:
        return bool(self.discord_token or self.slack_bot_token)
