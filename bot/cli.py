"""``imagine-bot``: run the bot, chat in the terminal, inspect models, manage credits.

Exit codes: 0 done; 1 refused (unknown account, not enough credits, a bad
models file); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import getpass
import importlib.metadata
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bot import messages, statements
from bot.accounts import CONSOLE_OWNER, parse_account
from bot.app import (
    freeze_startup_heap,
    load_catalog,
    load_models,
    load_prices,
    open_credits,
    open_ledger,
    open_service,
    shown_database_url,
)
from bot.catalog import check_models_online
from bot.credits import parse_amount
from bot.dashboard.auth import base_url, new_login_link
from bot.errors import ImagineError, RequestError
from bot.flow import ImagineService
from bot.observability import configure_logging
from bot.platforms.console import ConsoleChat, stdin_reader
from bot.prices import PriceAdmin
from bot.registry import price_warnings
from bot.settings import Settings
from bot.web import PublicWeb
from bot.when import parse_duration, parse_moment, parse_until
from ledger import migrate, utc_now
from ledger.backup import NoDatabaseFile, backup_sqlite
from ledger.report import TABLES as REPORT_TABLES
from ledger.report import build_report

EXIT_REFUSED = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = _parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        settings = Settings()
    except ValidationError as error:
        _fail(EXIT_USAGE, _describe_settings_error(error))
    # A serving bot logs at LOG_LEVEL for its operators; a command at a terminal stays quiet.
    serving = arguments.handler is _run and settings.has_chat_platform
    configure_logging(
        settings,
        level="DEBUG" if arguments.verbose else settings.log_level if serving else "WARNING",
    )
    try:
        code = asyncio.run(arguments.handler(settings, arguments))
    except RequestError as error:
        _fail(EXIT_USAGE, error.message)
    except ImagineError as error:
        _fail(EXIT_REFUSED, error.message)
    except DBAPIError as error:
        _fail(
            EXIT_REFUSED,
            messages.database_unreachable(shown_database_url(settings.database_url), error),
        )
    except OSError as error:
        # Not the database's (opening it raises DatabaseUnavailable): a port, a platform's API.
        _fail(EXIT_REFUSED, messages.system_error(error))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagine-bot",
        description="AI image generation for Discord, Slack and the terminal, paid with credits.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.set_defaults(handler=_run)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the bot: Discord/Slack when their tokens are set, else (on a terminal) the console",
    )
    run.set_defaults(handler=_run, account=None)

    console = commands.add_parser("console", help="chat with the bot in this terminal")
    console.add_argument(
        "--as",
        dest="account",
        metavar="ACCOUNT",
        help=f"chat as this account (default {CONSOLE_OWNER}, which may use admin commands)",
    )
    console.set_defaults(handler=_console)

    models = commands.add_parser("models", help="list the models in the registry")
    models.add_argument(
        "--check",
        action="store_true",
        help="validate the models file and warn where a price is below the provider's cost",
    )
    models.add_argument(
        "--online",
        action="store_true",
        help="with --check: ask each provider whose key is set whether every model id exists",
    )
    models.add_argument("--file", help="the registry file to read (default: MODELS_FILE)")
    models.set_defaults(handler=_models)

    for name, help_text in (
        ("grant", "add credits to an account"),
        ("revoke", "take available credits back from an account"),
    ):
        admin = commands.add_parser(name, help=help_text)
        admin.add_argument("account", help="e.g. discord:1234, slack:T01:U02, console:alice")
        admin.add_argument("amount", help="whole number of credits, greater than 0")
        admin.add_argument("--reason", default="", help="recorded in the ledger")
        admin.add_argument(
            "--idempotency-key",
            metavar="KEY",
            help="run again with the same KEY and nothing more changes (for scripts that retry)",
        )
        if name == "grant":
            expiry = admin.add_mutually_exclusive_group()
            expiry.add_argument(
                "--expires-in",
                metavar="DURATION",
                help="the credits expire after this long: 90s, 30m, 12h, 7d (default: never)",
            )
            expiry.add_argument(
                "--expires-at",
                metavar="DATE",
                help="the credits expire then: ISO 8601, UTC unless an offset is given",
            )
        admin.set_defaults(handler=_grant if name == "grant" else _revoke)

    price = commands.add_parser("price", help="an account's own prices (price overrides)")
    price_commands = price.add_subparsers(title="commands", metavar="COMMAND", required=True)
    price_set = price_commands.add_parser(
        "set",
        help="a fixed price per image of one model (ACCOUNT MODEL CREDITS), "
        "or a percent off every model (ACCOUNT --percent-off N)",
    )
    price_set.add_argument("account", help="e.g. discord:1234, slack:T01:U02, console:alice")
    price_set.add_argument("model", nargs="?", help="the model id, for a fixed price")
    price_set.add_argument("credits", nargs="?", help="credits per image of that model")
    price_set.add_argument("--percent-off", metavar="N", help="1-100 percent off every model")
    price_set.add_argument(
        "--until", metavar="DATE", help="ISO 8601 date or time, UTC unless it gives an offset"
    )
    price_set.add_argument("--reason", required=True, help="recorded with the price")
    price_set.set_defaults(handler=_price_set)
    price_list = price_commands.add_parser(
        "list", help="the price overrides of ACCOUNT, or of every account"
    )
    price_list.add_argument("account", nargs="?")
    price_list.set_defaults(handler=_price_list)
    price_clear = price_commands.add_parser(
        "clear", help="remove ACCOUNT's price for MODEL, or all of its price overrides"
    )
    price_clear.add_argument("account")
    price_clear.add_argument("model", nargs="?")
    price_clear.set_defaults(handler=_price_clear)

    balance = commands.add_parser("balance", help="show an account's balance")
    balance.add_argument("account")
    balance.set_defaults(handler=_balance)

    statement = commands.add_parser(
        "statement", help="every change to an account's credits, with the running balance"
    )
    statement.add_argument("account")
    statement.add_argument(
        "--since", metavar="DATE", help="from this date or time (ISO 8601, UTC unless an offset)"
    )
    statement.add_argument("--format", choices=("table", "csv", "json"), default="table")
    statement.set_defaults(handler=_statement)

    history = commands.add_parser("history", help="show an account's recent generations")
    history.add_argument("account")
    history.add_argument("--limit", type=_at_least_one, default=20)
    history.set_defaults(handler=_history)

    bought = commands.add_parser(
        "purchases", help="credit packs bought (everyone's, or one account's), newest first"
    )
    bought.add_argument("account", nargs="?")
    bought.add_argument("--limit", type=_at_least_one, default=50)
    bought.add_argument("--format", choices=("table", "csv", "json"), default="table")
    bought.set_defaults(handler=_purchases)

    database = commands.add_parser("db", help="database maintenance")
    database_commands = database.add_subparsers(title="commands", metavar="COMMAND", required=True)
    upgrade = database_commands.add_parser(
        "upgrade", help="upgrade the database to this version (run and console do it too)"
    )
    upgrade.set_defaults(handler=_db_upgrade)
    backup = database_commands.add_parser(
        "backup", help="copy the SQLite database, consistently, to a new file (PostgreSQL: pg_dump)"
    )
    backup.add_argument("path", help="the file to write; an existing one is never overwritten")
    backup.set_defaults(handler=_db_backup)

    ledger_parser = commands.add_parser("ledger", help="ledger audits")
    ledger_commands = ledger_parser.add_subparsers(
        title="commands", metavar="COMMAND", required=True
    )
    verify = ledger_commands.add_parser(
        "verify", help="recompute every balance from its entries; exit 1 on any disagreement"
    )
    verify.set_defaults(handler=_verify)

    config = commands.add_parser(
        "config", help="print the effective settings, secrets masked, and check them"
    )
    config.set_defaults(handler=_config)

    report = commands.add_parser(
        "report", help="generations, credits and failures per model, provider, day and user"
    )
    period = report.add_mutually_exclusive_group()
    period.add_argument(
        "--days", type=_at_least_one, help="only the last N days (default: everything)"
    )
    period.add_argument(
        "--since",
        metavar="DATE",
        help="only from this date or time (ISO 8601, UTC unless an offset is given)",
    )
    report.add_argument(
        "--top", type=_at_least_one, default=10, help="how many top users (default 10)"
    )
    report.add_argument("--table", choices=REPORT_TABLES, help="only this table")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.set_defaults(handler=_report)

    dashboard = commands.add_parser("dashboard", help="the admin dashboard at /admin")
    dashboard_commands = dashboard.add_subparsers(
        title="commands", metavar="COMMAND", required=True
    )
    link = dashboard_commands.add_parser(
        "link", help="print a login link for an admin account, valid once, for 10 minutes"
    )
    link.add_argument(
        "--as",
        dest="account",
        metavar="ACCOUNT",
        help="the admin account to log in as (default: the first of ADMIN_ACCOUNTS)",
    )
    link.set_defaults(handler=_dashboard_link)

    discord_parser = commands.add_parser("discord", help="Discord maintenance")
    discord_commands = discord_parser.add_subparsers(
        title="commands", metavar="COMMAND", required=True
    )
    sync = discord_commands.add_parser(
        "sync",
        help="register the slash commands with Discord now (DISCORD_GUILD_IDS, or globally)",
    )
    sync.set_defaults(handler=_discord_sync)
    return parser


async def _run(settings: Settings, arguments: argparse.Namespace) -> int:
    if not settings.has_chat_platform:
        # Only a person at a terminal wants the console here; in a container or a
        # service manager a missing token would otherwise look like a bot that serves.
        if not sys.stdin.isatty():
            _fail(EXIT_USAGE, messages.NO_CHAT_PLATFORM)
        return await _console(settings, arguments)
    preparers = _chat_platforms(settings)
    with _stop_on_sigterm(settings.shutdown_grace_seconds) as shutdown:
        try:
            async with open_service(settings, check_online=True) as service:
                shutdown.service = service
                public = PublicWeb(settings)
                if service.purchases.sells_through_stripe:
                    public.sell_through_stripe(service.purchases)
                public.add_dashboard(service)
                # Every adapter adds its routes before the web server starts.
                servers = [prepare(service, settings, public) for prepare in preparers]
                freeze_startup_heap()
                await asyncio.gather(*(serve() for serve in servers), public.serve())
        except asyncio.CancelledError:
            if not shutdown.requested:
                raise
    return 0


PlatformPreparer = Callable[[ImagineService, Settings, PublicWeb], Callable[[], Awaitable[None]]]


def _chat_platforms(settings: Settings) -> list[PlatformPreparer]:
    """The adapters whose tokens are set; each prepared adapter serves until cancelled, then
    closes its connections."""
    preparers: list[PlatformPreparer] = []
    if settings.discord_token:
        from bot.platforms.discord import prepare_discord

        preparers.append(prepare_discord)
    if settings.slack_bot_token:
        from bot.platforms.slack import prepare_slack

        preparers.append(prepare_slack)
    return preparers


async def _console(settings: Settings, arguments: argparse.Namespace) -> int:
    with _stop_on_sigterm(settings.shutdown_grace_seconds) as shutdown:
        try:
            return await _chat_in_console(settings, arguments, shutdown)
        except asyncio.CancelledError:
            if not shutdown.requested:
                raise
            return 0


class _Shutdown:
    """SIGTERM: take no new requests, let running generations finish for a grace period, then stop.

    Stopping cancels the command; a generation still running then releases its
    hold on the way out, so nothing is charged for it.
    """

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.service: ImagineService | None = None
        self.requested = False
        self._task = asyncio.current_task()
        self._winding_down: asyncio.Task[None] | None = None

    def on_signal(self) -> None:
        if self.requested:
            return
        self.requested = True
        self._winding_down = asyncio.get_running_loop().create_task(self._wind_down())

    async def _wind_down(self) -> None:
        if self.service is not None:
            self.service.stop_accepting()
            running = self.service.in_flight
            if running:
                logging.getLogger(__name__).info(
                    "stopping: waiting up to %gs for %d running generations",
                    self.grace_seconds,
                    running,
                )
            await self.service.drain(self.grace_seconds)
        if self._task is not None:
            self._task.cancel()


@contextlib.contextmanager
def _stop_on_sigterm(grace_seconds: float) -> Iterator[_Shutdown]:
    loop = asyncio.get_running_loop()
    shutdown = _Shutdown(grace_seconds)
    loop.add_signal_handler(signal.SIGTERM, shutdown.on_signal)
    try:
        yield shutdown
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _chat_in_console(
    settings: Settings, arguments: argparse.Namespace, shutdown: _Shutdown
) -> int:
    account = parse_account(arguments.account) if arguments.account else CONSOLE_OWNER
    is_owner = arguments.account is None
    async with open_service(
        settings,
        extra_admins=frozenset({CONSOLE_OWNER}) if is_owner else frozenset(),
        check_online=True,
    ) as service:
        shutdown.service = service
        chat = ConsoleChat(
            service,
            account,
            output_dir=settings.output_dir,
            read_line=stdin_reader(interactive=sys.stdin.isatty()),
            write=functools.partial(print, flush=True),
            welcome_credits=settings.console_welcome_credits if is_owner else 0,
        )
        await chat.run()
    return 0


async def _models(settings: Settings, arguments: argparse.Namespace) -> int:
    if arguments.file:
        settings = settings.model_copy(update={"models_file": Path(arguments.file)})
    if arguments.online and not arguments.check:
        _fail(EXIT_USAGE, "--online goes with --check: imagine-bot models --check --online")
    if arguments.check:
        return await _check_models(settings, online=arguments.online)
    catalog, providers = load_catalog(settings)
    await providers.aclose()
    print(
        messages.models_table(
            [(model, catalog.reason_unavailable(model)) for model in catalog.registry]
        )
    )
    return 0


async def _check_models(settings: Settings, *, online: bool) -> int:
    registry = load_models(settings)
    pricing = load_prices(settings)
    print(f"{registry.path}: {len(registry.models)} models, no problems found.")
    print(messages.pricing_checked(pricing.path, settings.pricing_file))
    for warning in price_warnings(registry, settings.credit_value_usd):
        print(f"warning: {warning}", file=sys.stderr)
    if not online:
        return 0
    catalog, providers = load_catalog(settings)
    try:
        check = await check_models_online(catalog, providers)
    finally:
        await providers.aclose()
    for model in catalog.listed():
        reason = check.catalog.reason_unavailable(model)
        if model.id in check.missing:
            print(f"disabled {model.id}: {reason}")
        elif model.provider in check.unreachable:
            print(f"not checked {model.id}: {model.provider}: {check.unreachable[model.provider]}")
        elif reason is not None:
            print(f"skipped {model.id}: {reason}")
        else:
            print(f"ok {model.id}: {model.provider} offers '{model.provider_model}'")
    return EXIT_REFUSED if check.missing or check.unreachable else 0


def _version() -> str:
    try:
        return importlib.metadata.version("imagine-bot")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _cli_actor() -> str:
    """Who ran an admin command, for its ledger entry: the login name, else the user id.

    A container run as a bare user id (``docker run --user 1234``) has no login name.
    """
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


async def _grant(settings: Settings, arguments: argparse.Namespace) -> int:
    return await _adjust(settings, arguments, "grant")


async def _revoke(settings: Settings, arguments: argparse.Namespace) -> int:
    return await _adjust(settings, arguments, "revoke")


async def _adjust(settings: Settings, arguments: argparse.Namespace, action: str) -> int:
    actor = _cli_actor()
    # Prefixed so an operator's key never matches one a platform or the welcome grant made.
    key = f"cli:{arguments.idempotency_key}" if arguments.idempotency_key else None
    async with open_credits(settings, extra_admins=frozenset({actor})) as credits:
        # Asked first only to word the answer; the ledger itself decides, in its transaction.
        repeat = key is not None and await credits.ledger.key_used(key)
        if action == "revoke":
            balance = await credits.revoke(
                actor, arguments.account, arguments.amount, arguments.reason, key
            )
            report = messages.already_revoked if repeat else messages.revoked
            print(report(balance.account, parse_amount(arguments.amount), balance.available))
            return 0
        expires_at = _expiry(arguments.expires_in, arguments.expires_at)
        balance = await credits.grant(
            actor, arguments.account, arguments.amount, arguments.reason, key, expires_at=expires_at
        )
    amount = parse_amount(arguments.amount)
    if repeat:
        print(messages.already_granted(balance.account, amount, balance.available))
    else:
        print(messages.granted(balance.account, amount, balance.available, expires_at))
    return 0


def _expiry(expires_in: str | None, expires_at: str | None) -> datetime | None:
    """When a grant's credits expire, from ``--expires-in`` or ``--expires-at`` (None: never)."""
    now = utc_now()
    if expires_in is not None:
        return now + parse_duration(expires_in)
    if expires_at is not None:
        return parse_until(expires_at, now)
    return None


@contextlib.asynccontextmanager
async def _price_admin(settings: Settings, actor: str) -> AsyncIterator[PriceAdmin]:
    """Overrides as the operator at the terminal changes them: they own the database."""
    registry = load_models(settings)
    async with open_credits(settings, extra_admins=frozenset({actor})) as credits:
        yield PriceAdmin(credits, registry)


async def _price_set(settings: Settings, arguments: argparse.Namespace) -> int:
    actor = _cli_actor()
    async with _price_admin(settings, actor) as prices:
        print(
            await prices.set_price(
                actor,
                arguments.account,
                model=arguments.model,
                credits_per_image=arguments.credits,
                percent_off=arguments.percent_off,
                until=arguments.until,
                reason=arguments.reason,
            )
        )
    return 0


async def _price_list(settings: Settings, arguments: argparse.Namespace) -> int:
    actor = _cli_actor()
    async with _price_admin(settings, actor) as prices:
        print(await prices.list_prices(actor, arguments.account))
    return 0


async def _price_clear(settings: Settings, arguments: argparse.Namespace) -> int:
    actor = _cli_actor()
    async with _price_admin(settings, actor) as prices:
        print(await prices.clear_prices(actor, arguments.account, arguments.model))
    return 0


async def _balance(settings: Settings, arguments: argparse.Namespace) -> int:
    async with open_credits(settings) as credits:
        balance = await credits.existing_balance(arguments.account)
        print(f"{balance.account}: {messages.balance_line(balance.available, balance.held)}")
        for lot in balance.lots:
            print(messages.lot_line(lot))
        if balance.owed:
            print(messages.owed_line(balance.owed))
    return 0


async def _statement(settings: Settings, arguments: argparse.Namespace) -> int:
    since = None if arguments.since is None else parse_moment(arguments.since)
    async with open_credits(settings) as credits:
        balance = await credits.existing_balance(arguments.account)
        lines = await credits.ledger.statement(balance.account, since=since)
    shown = {"table": statements.as_table, "csv": statements.as_csv, "json": statements.as_json}
    print(shown[arguments.format](lines), end="" if arguments.format == "csv" else "\n")
    return 0


async def _history(settings: Settings, arguments: argparse.Namespace) -> int:
    async with open_credits(settings) as credits:
        balance = await credits.existing_balance(arguments.account)
        recent = await credits.history(balance.account, limit=arguments.limit)
        print("\n".join(map(messages.history_line, recent)) if recent else messages.NO_HISTORY)
    return 0


async def _purchases(settings: Settings, arguments: argparse.Namespace) -> int:
    account = None if arguments.account is None else parse_account(arguments.account)
    async with open_ledger(settings) as ledger:
        found = await ledger.purchases(account, limit=arguments.limit)
    rows = [messages.purchase_row(purchase) for purchase in found]
    if arguments.format == "table" and not rows:
        print(messages.NO_PURCHASES)
        return 0
    print(messages.report({"purchases": rows}, arguments.format), end="")
    return 0


async def _db_upgrade(settings: Settings, _arguments: argparse.Namespace) -> int:
    async with open_ledger(settings, upgrade=True) as ledger:
        revision = await migrate.current_revision(ledger.engine)
    print(f"Database is at revision {revision} (latest).")
    return 0


async def _db_backup(settings: Settings, arguments: argparse.Namespace) -> int:
    url = make_url(settings.database_url)
    shown_url = shown_database_url(settings.database_url)
    if url.get_backend_name() != "sqlite":
        # Refused before connecting: pg_dump is the right tool, whether or not the server is up.
        _fail(EXIT_REFUSED, messages.backup_with_pg_dump(arguments.path))
    if not url.database or url.database == ":memory:":
        _fail(EXIT_REFUSED, messages.nothing_to_back_up(shown_url))
    try:
        source = await asyncio.to_thread(backup_sqlite, url.database, Path(arguments.path))
    except FileExistsError:
        _fail(EXIT_REFUSED, messages.backup_exists(arguments.path))
    except NoDatabaseFile:
        _fail(EXIT_REFUSED, messages.nothing_to_back_up(shown_url))
    print(messages.backed_up(str(source), arguments.path))
    return 0


async def _verify(settings: Settings, _arguments: argparse.Namespace) -> int:
    async with open_ledger(settings) as ledger:
        discrepancies = await ledger.verify()
    for found in discrepancies:
        print(
            f"{found.account}: stored {found.stored_available} available / {found.stored_held} held, "
            f"entries add up to {found.entries_available} / {found.entries_held}, "
            f"running generations hold {found.running_holds}"
        )
        if found.stored_owed != found.entries_owed:
            print(
                f"{found.account}: stored {found.stored_owed} owed, "
                f"entries add up to {found.entries_owed}"
            )
        for problem in found.lot_problems:
            print(f"{found.account}: {problem}")
    if discrepancies:
        return EXIT_REFUSED
    print("Every balance agrees with its ledger entries.")
    return 0


async def _config(settings: Settings, _arguments: argparse.Namespace) -> int:
    rows = settings.described()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    return 0


async def _report(settings: Settings, arguments: argparse.Namespace) -> int:
    since = utc_now() - timedelta(days=arguments.days) if arguments.days else None
    if arguments.since is not None:
        since = parse_moment(arguments.since)
    async with open_ledger(settings) as ledger:
        built = await build_report(
            ledger.engine,
            since=since,
            top=arguments.top,
            credit_value_usd=Decimal(str(settings.credit_value_usd)),
            tables=[arguments.table] if arguments.table else REPORT_TABLES,
        )
    print(messages.report(built.tables(), arguments.format), end="")
    return 0


async def _dashboard_link(settings: Settings, arguments: argparse.Namespace) -> int:
    async with open_ledger(settings) as ledger:
        link = await new_login_link(ledger, settings, arguments.account)
    # The link alone on standard output, for a script to pick up; the rest is for people.
    print(link.url)
    print(messages.dashboard_link_issued(link.account, link.expires_at), file=sys.stderr)
    if link.local:
        print(messages.dashboard_link_local(base_url(settings)[0]), file=sys.stderr)
    return 0


async def _discord_sync(settings: Settings, _arguments: argparse.Namespace) -> int:
    if not settings.discord_token:
        _fail(EXIT_USAGE, "Set DISCORD_TOKEN to the bot token from the Discord developer portal.")
    from bot.platforms.discord import sync_discord_commands

    async with open_service(settings, serving=False) as service:
        done = await sync_discord_commands(service, settings)
    if done.synced:
        print(f"Synced the slash commands ({', '.join(done.synced)}).")
    for refusal in done.refused:
        print(refusal, file=sys.stderr)
    return EXIT_REFUSED if done.refused else 0


def _describe_settings_error(error: ValidationError) -> str:
    lines = ["The settings are not valid:"]
    for problem in error.errors():
        variable = "_".join(str(part) for part in problem["loc"]).upper()
        lines.append(f"  {variable}: {problem['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _at_least_one(text: str) -> int:
    """A count given on the command line; argparse names the option when this refuses."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _fail(code: int, message: str) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(code)
