"""Provider adapters: one module per provider API, each registered here with one line.

A provider is found by the ``provider`` key of a model in ``config/models.toml``.
Its module is imported only when a model of it is used, so an SDK that is not
installed makes that provider unavailable instead of breaking start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from providers.base import ImageProvider, ProviderConfig


@dataclass(frozen=True)
class ProviderSpec:
    """How to build a provider and which settings it needs."""

    name: str
    factory: str
    """``module:attribute`` of a callable taking a ``ProviderConfig`` and returning an ``ImageProvider``."""
    api_key_env: tuple[str, ...] = ()
    """Environment variables that may hold its API key, first set wins; empty if it needs none."""
    base_url_env: str | None = None
    option_env: tuple[tuple[str, str], ...] = ()
    """``(option, VARIABLE)`` pairs: settings passed in ``ProviderConfig.options`` when set."""

    def build(self, config: ProviderConfig) -> ImageProvider:
        module_name, _, attribute = self.factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
        return factory(config)


PROVIDERS: dict[str, ProviderSpec] = {}


def register(spec: ProviderSpec) -> None:
    """Make a provider known to the registry loader; a later registration replaces an earlier one."""
    PROVIDERS[spec.name] = spec


register(
    ProviderSpec(
        "local",
        "providers.local:LocalProvider",
        option_env=(("delay_seconds", "LOCAL_DELAY_SECONDS"),),
    )
)
register(
    ProviderSpec(
        "google",
        "providers.google:GoogleProvider",
        api_key_env=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        base_url_env="GEMINI_BASE_URL",
    )
)
register(
    ProviderSpec(
        "openai",
        "providers.openai_images:OpenAIProvider",
        api_key_env=("OPENAI_API_KEY",),
        base_url_env="OPENAI_BASE_URL",
    )
)
