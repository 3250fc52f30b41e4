"""Building the bot's parts once, from the settings, for every command and adapter."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from bot.catalog import ModelCatalog, ProviderPool, build_catalog, check_models_online
from bot.credits import Credits
from bot.errors import (
    DatabaseOutdated,
    DatabaseTooNew,
    DatabaseUnavailable,
    PricingUnusable,
    RegistryUnusable,
)
from bot.flow import MEGABYTE, Clock, ImagineService
from bot.observability import health_application
from bot.pricing import Pricing, PricingError, load_pricing
from bot.purchases import StripeConfig
from bot.registry import Registry, RegistryError, load_registry
from bot.settings import Settings
from ledger import Ledger, QuoteLimits, create_engine, migrate, utc_now
from providers import PROVIDERS


def freeze_startup_heap() -> None:
    """Leave everything alive after start-up out of the garbage collector's future passes.

    A bot process holds a few hundred thousand long-lived objects (discord.py,
    slack-bolt, SQLAlchemy, the provider SDKs), and each full collection
    walked all of them, a large share of a burst's time (bench.latency).
    Called once, when the service is built and the platforms are about to
    connect.
    """
    gc.collect()
    gc.freeze()


def load_models(settings: Settings) -> Registry:
    try:
        return load_registry(settings.models_file, PROVIDERS)
    except RegistryError as error:
        raise RegistryUnusable(error.problems) from None


def load_prices(settings: Settings) -> Pricing:
    try:
        return load_pricing(
            settings.pricing_file, required=settings.pricing_file_required, providers=PROVIDERS
        )
    except PricingError as error:
        raise PricingUnusable(error.problems) from None


def load_catalog(settings: Settings) -> tuple[ModelCatalog, ProviderPool]:
    return build_catalog(load_models(settings), settings)


@contextlib.asynccontextmanager
async def open_ledger(
    settings: Settings, clock: Clock = utc_now, *, upgrade: bool = False
) -> AsyncIterator[Ledger]:
    """The ledger on ``DATABASE_URL``; a fresh, empty database is set up first.

    A database at an older revision is upgraded only with ``upgrade`` (``run``,
    ``console``, ``db upgrade``); otherwise, and for one written by a newer
    version, the command is refused with a sentence saying what to do. Raises
    ``DatabaseUnavailable`` if the database cannot be reached or set up.
    """
    _create_sqlite_folder(settings.database_url)
    engine = create_engine(settings.database_url)
    ledger = Ledger(engine, clock)
    shown_url = shown_database_url(settings.database_url)
    try:
        try:
            await migrate.prepare(engine, upgrade=upgrade)
        except migrate.SchemaOutdated as outdated:
            raise DatabaseOutdated(shown_url, outdated.current) from None
        except migrate.SchemaUnknown as unknown:
            raise DatabaseTooNew(shown_url, unknown.current) from None
        except (DBAPIError, OSError) as error:
            raise DatabaseUnavailable(shown_url, error) from error
        yield ledger
    finally:
        await ledger.close()


def shown_database_url(database_url: str) -> str:
    """``database_url`` as it may be printed: without its password."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


@contextlib.asynccontextmanager
async def open_credits(
    settings: Settings,
    *,
    extra_admins: frozenset[str] = frozenset(),
    clock: Clock = utc_now,
    upgrade: bool = False,
) -> AsyncIterator[Credits]:
    allowance = load_prices(settings).allowance
    async with open_ledger(settings, clock, upgrade=upgrade) as ledger:
        yield Credits(
            ledger,
            admins=frozenset(settings.admin_accounts) | extra_admins,
            starting_credits=settings.starting_credits,
            allowance=allowance,
        )


@contextlib.asynccontextmanager
async def open_service(
    settings: Settings,
    *,
    extra_admins: frozenset[str] = frozenset(),
    clock: Clock = utc_now,
    check_online: bool = False,
    serving: bool = True,
) -> AsyncIterator[ImagineService]:
    """Everything the imagine flow needs: models, providers, and the ledger.

    ``check_online`` first asks each provider with a key whether the configured
    model ids exist, and disables those that do not (a network failure keeps them).
    ``serving`` (``run`` and ``console``): upgrade an older database, settle
    what dead processes left behind, sweep periodically, and serve health and
    metrics. Without it (a one-off command) nothing is upgraded or settled.
    """
    pricing = load_prices(settings)
    catalog, providers = load_catalog(settings)
    try:
        if check_online:
            catalog = (await check_models_online(catalog, providers)).catalog
        async with open_credits(
            settings, extra_admins=extra_admins, clock=clock, upgrade=serving
        ) as credits:
            service = ImagineService(
                catalog=catalog,
                providers=providers,
                credits=credits,
                pricing=pricing,
                quote_ttl=timedelta(seconds=settings.quote_ttl_seconds),
                generation_timeout=timedelta(seconds=settings.generation_timeout_seconds),
                provider_concurrency=settings.provider_concurrency,
                provider_limits=settings.provider_limits,
                user_concurrency=settings.user_concurrency,
                heartbeat_interval=timedelta(seconds=settings.sweep_interval_seconds),
                quote_limits=quote_limits(settings),
                subject_bytes_per_account=settings.subject_storage_mb * MEGABYTE,
                clock=clock,
                stripe_config=StripeConfig.from_settings(settings),
                allow_test_purchases=settings.discord_allow_test_purchases,
                credit_value_usd=Decimal(str(settings.credit_value_usd)),
                circuit_failures=settings.circuit_failures,
                circuit_cooldown=timedelta(seconds=settings.circuit_cooldown_seconds),
            )
            try:
                if not serving:
                    yield service
                    return
                async with _serving(service, settings):
                    yield service
            finally:
                await service.purchases.aclose()
    finally:
        await providers.aclose()


@contextlib.asynccontextmanager
async def _serving(service: ImagineService, settings: Settings) -> AsyncIterator[None]:
    """What a serving process runs beside the platforms: recovery first, then the periodic
    sweep and ledger check, and the health server."""
    await service.recover()
    background = [
        asyncio.create_task(service.sweep_periodically()),
        asyncio.create_task(
            service.check_ledger_periodically(timedelta(hours=settings.verify_interval_hours))
        ),
    ]
    health = await _start_health_server(settings, service)
    try:
        yield
    finally:
        await service.stop_settling()
        if health is not None:
            await health.cleanup()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)


def quote_limits(settings: Settings) -> QuoteLimits:
    return QuoteLimits(
        reference_bytes_per_account=settings.reference_storage_mb_per_account * MEGABYTE,
        reference_bytes_total=settings.reference_storage_mb_total * MEGABYTE,
        quotes_per_minute=settings.quotes_per_minute,
    )


async def _start_health_server(settings: Settings, service: ImagineService) -> web.AppRunner | None:
    """``/livez``, ``/readyz`` (and ``/healthz``) and ``/metrics`` on ``METRICS_PORT``, when it is set."""
    if settings.metrics_port is None:
        return None
    runner = web.AppRunner(
        health_application(service.metrics, service.ledger.ping, service.platform_checks),
        access_log=None,
    )
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    return runner


def _create_sqlite_folder(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
