"""Which models can be used right now, and the provider objects that serve them.

A model is usable when it is active and its provider is configured (API key
set, adapter importable). Providers are built once, at start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from bot import messages
from bot.errors import ModelUnavailable, RequestError, UnknownModel
from bot.registry import ModelSpec, Registry
from bot.settings import Settings
from providers import PROVIDERS, ProviderSpec
from providers.base import ImageProvider, ProviderConfig
from providers.errors import ProviderError

logger = logging.getLogger(__name__)

SWITCHED_OFF = "it is switched off in the models file"


@dataclass(frozen=True)
class ModelCatalog:
    """The registry plus, for each model that cannot be used, the reason why."""

    registry: Registry
    unavailable: Mapping[str, str]

    def reason_unavailable(self, model: ModelSpec) -> str | None:
        if not model.active:
            return SWITCHED_OFF
        return self.unavailable.get(model.id)

    def usable(self) -> list[ModelSpec]:
        return [model for model in self.registry if self.reason_unavailable(model) is None]

    def listed(self) -> list[ModelSpec]:
        """Models shown to users: every active one, usable or not."""
        return [model for model in self.registry if model.active]

    def default_model(self) -> ModelSpec:
        usable = self.usable()
        if not usable:
            raise RequestError(messages.NO_MODEL_AVAILABLE)
        return usable[0]

    def require(self, model_id: str) -> ModelSpec:
        """The usable model called ``model_id``, or the error that says why not."""
        model = self.active(model_id)
        reason = self.reason_unavailable(model)
        if reason is not None:
            raise ModelUnavailable(model.id, reason)
        return model

    def active(self, model_id: str) -> ModelSpec:
        """The model called ``model_id`` if it is switched on, usable now or not.

        A request for one that cannot be used now (its provider has no key, say)
        is still validated against it: the quote answers with the cause and
        another model that can make the same request.
        """
        model = self.registry.get(model_id)
        if model is None:
            raise UnknownModel(model_id, self.registry.closest_ids(model_id))
        if not model.active:
            raise ModelUnavailable(model.id, SWITCHED_OFF)
        return model


@dataclass(frozen=True)
class ProviderPool:
    """The built provider adapters by provider name."""

    providers: Mapping[str, ImageProvider]

    def for_model(self, model: ModelSpec) -> ImageProvider:
        return self.providers[model.provider]

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()


@dataclass(frozen=True)
class OnlineCheck:
    """What asking the providers found: models they do not offer, and providers that could not be asked."""

    catalog: ModelCatalog
    """The catalog with the missing models made unavailable."""
    missing: Mapping[str, str]
    """Model id → why it was disabled."""
    unreachable: Mapping[str, str]
    """Provider name → why it could not be asked (its models stay as they were)."""


async def check_models_online(
    catalog: ModelCatalog, pool: ProviderPool, timeout_seconds: float = 20
) -> OnlineCheck:
    """Ask every built provider whether the usable models' ids exist; disable those that do not."""
    by_provider: dict[str, list[ModelSpec]] = {}
    for model in catalog.usable():
        if model.provider in pool.providers:
            by_provider.setdefault(model.provider, []).append(model)

    async def ask(name: str, models: list[ModelSpec]) -> dict[str, str] | str:
        ids = list(dict.fromkeys(model.provider_model for model in models))
        try:
            async with asyncio.timeout(timeout_seconds):
                return await pool.providers[name].missing_models(ids)
        except TimeoutError:
            return f"no answer within {timeout_seconds:g} seconds"
        except ProviderError as error:
            return str(error)

    answers = await asyncio.gather(*(ask(name, models) for name, models in by_provider.items()))
    missing: dict[str, str] = {}
    unreachable: dict[str, str] = {}
    for (name, models), answer in zip(by_provider.items(), answers, strict=True):
        if isinstance(answer, str):
            logger.warning("could not ask the %s provider which models it offers: %s", name, answer)
            unreachable[name] = answer
            continue
        for model in models:
            if model.provider_model in answer:
                missing[model.id] = answer[model.provider_model]
                logger.warning("model %s disabled: %s", model.id, missing[model.id])
    checked = replace(catalog, unavailable={**catalog.unavailable, **missing})
    return OnlineCheck(checked, missing, unreachable)


def build_catalog(
    registry: Registry,
    settings: Settings,
    specs: Mapping[str, ProviderSpec] = PROVIDERS,
) -> tuple[ModelCatalog, ProviderPool]:
    """Build every provider the active models use; models whose provider cannot be built are unavailable."""
    built: dict[str, ImageProvider] = {}
    provider_problems: dict[str, str] = {}
    for name in dict.fromkeys(model.provider for model in registry if model.active):
        spec = specs[name]
        config, missing = _provider_config(spec, settings)
        if missing:
            provider_problems[name] = missing
            continue
        try:
            built[name] = spec.build(config)
        except (ImportError, ValueError) as error:
            logger.warning("provider %s cannot be used: %s", name, error)
            provider_problems[name] = f"the {name} provider could not start ({error})"
    unavailable = {
        model.id: provider_problems[model.provider]
        for model in registry
        if model.provider in provider_problems
    }
    return ModelCatalog(registry, unavailable), ProviderPool(built)


def _provider_config(spec: ProviderSpec, settings: Settings) -> tuple[ProviderConfig, str | None]:
    api_key = next(
        (value for name in spec.api_key_env if (value := settings.environment_value(name))), None
    )
    if spec.api_key_env and api_key is None:
        return ProviderConfig(), f"no API key is configured (set {spec.api_key_env[0]})"
    base_url = settings.environment_value(spec.base_url_env) if spec.base_url_env else None
    options = {
        option: value
        for option, variable in spec.option_env
        if (value := settings.environment_value(variable)) is not None
    }
    return ProviderConfig(api_key=api_key, base_url=base_url, options=options), None
