"""Provider adapters: one module per provider API, each registered here with one line.

A provider is found by the ``provider`` key of a model in ``config/models.toml``.
Its module is imported only when a model of it is used, so an SDK that is not
installed makes that provider unavailable instead of breaking start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from providers.base import ImageProvider, OptionValue, ProviderConfig


@dataclass(frozen=True)
class ModelOption:
    """A per-model setting a provider accepts under ``provider_options`` in the models file."""

    name: str
    kind: type[bool] | type[int] | type[float] | type[str]
    choices: tuple[OptionValue, ...] = ()
    """The values allowed, when only some are."""
    help: str = ""

    def problem(self, value: object) -> str | None:
        """Why ``value`` cannot be this option's value, or None if it can."""
        # bool is an int in Python, and TOML integers are fine where a float is wanted.
        fits = type(value) is self.kind or (self.kind is float and type(value) is int)
        if not fits:
            return f"option '{self.name}' must be a {self.kind.__name__}, not {value!r}"
        if self.choices and value not in self.choices:
            allowed = ", ".join(str(choice) for choice in self.choices)
            return f"option '{self.name}' must be one of {allowed}, not {value!r}"
        return None


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
    model_options: tuple[ModelOption, ...] = ()
    """What a model of this provider may set under ``provider_options``; anything else is refused."""

    @property
    def variables(self) -> tuple[str, ...]:
        """Every environment variable this provider reads."""
        base_url = (self.base_url_env,) if self.base_url_env else ()
        return (*self.api_key_env, *base_url, *(variable for _, variable in self.option_env))

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
        option_env=(
            ("api_version", "GEMINI_API_VERSION"),
            ("concurrency", "GEMINI_CONCURRENCY"),
            ("max_attempts", "GEMINI_MAX_ATTEMPTS"),
            ("request_timeout_seconds", "GEMINI_REQUEST_TIMEOUT_SECONDS"),
        ),
        model_options=(
            ModelOption(
                "image_size",
                bool,
                help="send the resolution as image_config.image_size (false for 1K-only models)",
            ),
            ModelOption(
                "aspect_ratio", bool, help="send the aspect ratio as image_config.aspect_ratio"
            ),
        ),
    )
)
register(
    ProviderSpec(
        "openai",
        "providers.openai_images:OpenAIProvider",
        api_key_env=("OPENAI_API_KEY",),
        base_url_env="OPENAI_BASE_URL",
        option_env=(
            ("concurrency", "OPENAI_CONCURRENCY"),
            ("max_retries", "OPENAI_MAX_RETRIES"),
            ("request_timeout_seconds", "OPENAI_REQUEST_TIMEOUT_SECONDS"),
        ),
        model_options=(
            ModelOption(
                "quality",
                str,
                choices=("low", "medium", "high", "auto"),
                help="the quality tier the price was set for",
            ),
        ),
    )
)
