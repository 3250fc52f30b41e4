"""The model registry: ``config/models.toml`` loaded, validated and frozen.

Every problem is reported with the file, the model id and the key at fault, so a
bad deployment fails at start-up instead of at generation time.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot import messages
from bot.platform_limits import DISCORD_CHOICE_CHARACTERS
from bot.pricing import (
    MAX_BATCH_THRESHOLD,
    BatchDiscounts,
    Percent,
    batch_discounts,
    batch_problems,
)
from providers import ProviderSpec
from providers.base import OptionValue

RESOLUTION_PATTERN = r"^[1-9][0-9]*K$"
ASPECT_RATIO_PATTERN = r"^[1-9][0-9]*:[1-9][0-9]*$"
MODEL_ID_PATTERN = r"^[a-z0-9][a-z0-9.\-]*$"

Resolution = Annotated[str, Field(pattern=RESOLUTION_PATTERN)]
AspectRatio = Annotated[str, Field(pattern=ASPECT_RATIO_PATTERN)]


class RegistryError(Exception):
    """The registry file cannot be used; ``problems`` lists every fault found."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class ModelSpec:
    """One image model as users see it and as its provider is asked for it."""

    id: str
    provider: str
    provider_model: str
    display_name: str
    description: str
    credits_per_image: int
    resolution_credits: Mapping[str, int]
    active: bool
    resolutions: tuple[str, ...]
    aspect_ratios: tuple[str, ...]
    max_images: int
    max_reference_images: int
    cost_per_image_usd: float | None = None
    """The provider's list price of one image, when recorded."""
    resolution_cost_usd: Mapping[str, float] = field(default_factory=dict)
    provider_options: Mapping[str, OptionValue] = field(default_factory=dict)
    batch_discounts: BatchDiscounts | None = None
    """This model's own batch discounts, replacing the pricing file's; None: the file's."""

    def cost_for(self, resolution: str) -> float | None:
        """What the provider charges us for one image at ``resolution``, if recorded."""
        return self.resolution_cost_usd.get(resolution, self.cost_per_image_usd)

    def credits_for(self, resolution: str) -> int:
        """Credits one image costs at ``resolution``."""
        return self.resolution_credits.get(resolution, self.credits_per_image)

    @property
    def accepts_reference_images(self) -> bool:
        return self.max_reference_images > 0

    @property
    def default_resolution(self) -> str:
        return self.resolutions[0]

    @property
    def default_aspect_ratio(self) -> str:
        return self.aspect_ratios[0]


@dataclass(frozen=True)
class Registry:
    """Every configured model, in file order."""

    path: Path
    models: tuple[ModelSpec, ...]

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.models)

    def get(self, model_id: str) -> ModelSpec | None:
        wanted = model_id.strip().lower()
        return next((model for model in self.models if model.id == wanted), None)

    def closest_ids(self, model_id: str, limit: int = 3) -> list[str]:
        """Ids that look like a mistyped ``model_id``, best first."""
        ids = [model.id for model in self.models if model.active]
        return difflib.get_close_matches(model_id.strip().lower(), ids, n=limit, cutoff=0.5)

    @property
    def max_images(self) -> int:
        return max((model.max_images for model in self.models if model.active), default=1)


class _ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    provider: str = Field(min_length=1)
    provider_model: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=80)
    description: str = Field(default="", max_length=300)
    credits_per_image: int = Field(ge=1, le=1_000_000)
    resolution_credits: dict[str, Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
        default_factory=dict
    )
    active: bool = True
    resolutions: list[Resolution] = Field(min_length=1)
    aspect_ratios: list[AspectRatio] = Field(min_length=1)
    max_images: int = Field(ge=1, le=MAX_BATCH_THRESHOLD)
    max_reference_images: int = Field(default=0, ge=0, le=16)
    cost_per_image_usd: Annotated[float, Field(ge=0, le=1_000, allow_inf_nan=False)] | None = None
    resolution_cost_usd: dict[str, Annotated[float, Field(ge=0, le=1_000, allow_inf_nan=False)]] = (
        Field(default_factory=dict)
    )
    provider_options: dict[str, OptionValue] = Field(default_factory=dict)
    batch_discounts: dict[str, Percent] | None = None

    @field_validator("resolutions", "aspect_ratios")
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return values

    @model_validator(mode="after")
    def _priced_resolutions_are_offered(self) -> _ModelEntry:
        for key, priced in (
            ("resolution_credits", self.resolution_credits),
            ("resolution_cost_usd", self.resolution_cost_usd),
        ):
            unknown = sorted(set(priced) - set(self.resolutions))
            if unknown:
                raise ValueError(f"{key} prices {', '.join(unknown)}, which is not in resolutions")
        if self.resolution_cost_usd and self.cost_per_image_usd is None:
            raise ValueError(
                "resolution_cost_usd needs cost_per_image_usd for the other resolutions"
            )
        return self


def load_registry(path: Path, providers: Mapping[str, ProviderSpec]) -> Registry:
    """Read and validate a registry file, raising ``RegistryError`` with every problem found."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(
            path, [f"{path}: file not found (set MODELS_FILE to use another)"]
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RegistryError(path, [f"{path}: cannot be read: {error}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise RegistryError(path, [f"{path}: not valid TOML: {error}"]) from None

    problems: list[str] = []
    unexpected = sorted(set(document) - {"models"})
    for key in unexpected:
        problems.append(f"{path}: unknown top-level key '{key}' (models go under [models.<id>])")
    entries = document.get("models")
    if not isinstance(entries, dict) or not entries:
        problems.append(f"{path}: no models: add at least one [models.<id>] table")
        raise RegistryError(path, problems)

    models: list[ModelSpec] = []
    seen_ids: set[str] = set()
    for raw_id, raw_entry in entries.items():
        model_id = raw_id.lower()
        where = f"{path}: model '{raw_id}'"
        if not re.match(MODEL_ID_PATTERN, raw_id):
            problems.append(
                f"{where}: the id must be lowercase letters, digits, '.' and '-', "
                "starting with a letter or digit"
            )
            continue
        if len(raw_id) > DISCORD_CHOICE_CHARACTERS:
            problems.append(
                f"{where}: the id is {len(raw_id)} characters long; Discord takes at most "
                f"{DISCORD_CHOICE_CHARACTERS} as a model choice"
            )
        if model_id in seen_ids:
            problems.append(f"{where}: defined more than once")
            continue
        seen_ids.add(model_id)
        if not isinstance(raw_entry, dict):
            problems.append(f"{where}: must be a table of keys, not {type(raw_entry).__name__}")
            continue
        # A table of model keys is a model: a table inside it is a mistyped key, not an id.
        dotted = [] if _is_model_table(raw_entry) else _dotted_ids(raw_id, raw_entry)
        if dotted:
            # TOML reads [models.gemini-3.1-flash] as a table "1-flash" inside "gemini-3".
            problems.extend(
                f"{path}: model '{full_id}': an id with a dot must be quoted, "
                f'as in [models."{full_id}"]'
                for full_id in dotted
            )
            continue
        try:
            entry = _ModelEntry.model_validate(raw_entry)
        except ValidationError as error:
            problems.extend(f"{where}: {_describe(problem)}" for problem in error.errors())
            continue
        spec = providers.get(entry.provider)
        if spec is None:
            problems.append(
                f"{where}: key 'provider': unknown provider '{entry.provider}' "
                f"(known: {', '.join(sorted(providers))})"
            )
            continue
        option_problems = _option_problems(spec, entry.provider_options)
        if option_problems:
            problems.extend(f"{where}: key 'provider_options': {p}" for p in option_problems)
            continue
        choice_problems = _choice_problems(entry)
        if choice_problems:
            problems.extend(f"{where}: {p}" for p in choice_problems)
            continue
        if entry.batch_discounts is not None:
            discount_problems = batch_problems(entry.batch_discounts, entry.max_images)
            if discount_problems:
                problems.extend(f"{where}: key 'batch_discounts': {p}" for p in discount_problems)
                continue
        models.append(_to_spec(model_id, entry))

    if not problems and not any(model.active for model in models):
        problems.append(f"{path}: no model is active: set active = true on at least one")
    if problems:
        raise RegistryError(path, problems)
    return Registry(path=path, models=tuple(models))


def _is_model_table(entry: Mapping[str, Any]) -> bool:
    return bool(set(entry) & set(_ModelEntry.model_fields))


def _dotted_ids(raw_id: str, entry: Mapping[str, Any]) -> list[str]:
    """Full ids of models TOML nested under ``raw_id`` because their ids hold dots."""
    found = []
    for key, value in entry.items():
        if isinstance(value, dict) and key not in _ModelEntry.model_fields:
            full_id = f"{raw_id}.{key}"
            # Keep descending while the table holds no model keys: "flux-1.1.pro" nests twice.
            deeper = [] if _is_model_table(value) else _dotted_ids(full_id, value)
            found.extend(deeper or [full_id])
    return found


def _option_problems(spec: ProviderSpec, options: Mapping[str, OptionValue]) -> list[str]:
    declared = {option.name: option for option in spec.model_options}
    problems: list[str] = []
    for name, value in options.items():
        option = declared.get(name)
        if option is None:
            allowed = ", ".join(declared) or "none"
            problems.append(
                f"unknown option '{name}' for the {spec.name} provider (allowed: {allowed})"
            )
        elif (problem := option.problem(value)) is not None:
            problems.append(problem)
    return problems


def _choice_problems(entry: _ModelEntry) -> list[str]:
    """Text that would become a Discord choice longer than Discord accepts.

    One such choice makes Discord refuse the whole command sync, so it is refused here.
    """
    problems: list[str] = []
    choice = messages.discord_model_choice(entry.name, entry.credits_per_image)
    if len(choice) > DISCORD_CHOICE_CHARACTERS:
        problems.append(
            f"key 'name': the model choice '{choice}' is {len(choice)} characters long; "
            f"Discord takes at most {DISCORD_CHOICE_CHARACTERS}, so shorten the name by "
            f"{len(choice) - DISCORD_CHOICE_CHARACTERS}"
        )
    for key, values in (("resolutions", entry.resolutions), ("aspect_ratios", entry.aspect_ratios)):
        problems.extend(
            f"key '{key}': '{value}' is {len(value)} characters long; Discord takes at most "
            f"{DISCORD_CHOICE_CHARACTERS} as a choice"
            for value in values
            if len(value) > DISCORD_CHOICE_CHARACTERS
        )
    return problems


def _describe(problem: Mapping[str, Any]) -> str:
    location = [str(part) for part in problem["loc"]]
    message = str(problem["msg"])
    if problem["type"] == "extra_forbidden":
        return f"key '{location[0]}': unknown key (allowed: {', '.join(_ModelEntry.model_fields)})"
    if problem["type"] == "missing":
        return f"key '{location[0]}': required but missing"
    if problem["type"] == "string_pattern_mismatch" and location and location[0] == "resolutions":
        message = f"'{problem['input']}' is not a resolution like 1K, 2K or 4K"
    elif (
        problem["type"] == "string_pattern_mismatch" and location and location[0] == "aspect_ratios"
    ):
        message = f"'{problem['input']}' is not an aspect ratio like 16:9"
    message = message.removeprefix("Value error, ")
    if not location:
        return message
    key = location[0] if len(location) == 1 else f"{location[0]}[{']['.join(location[1:])}]"
    return f"key '{key}': {message}"


def _to_spec(model_id: str, entry: _ModelEntry) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        provider=entry.provider,
        provider_model=entry.provider_model,
        display_name=entry.name,
        description=entry.description,
        credits_per_image=entry.credits_per_image,
        resolution_credits=dict(entry.resolution_credits),
        active=entry.active,
        resolutions=tuple(entry.resolutions),
        aspect_ratios=tuple(entry.aspect_ratios),
        max_images=entry.max_images,
        max_reference_images=entry.max_reference_images,
        cost_per_image_usd=entry.cost_per_image_usd,
        resolution_cost_usd=dict(entry.resolution_cost_usd),
        provider_options=dict(entry.provider_options),
        batch_discounts=(
            None if entry.batch_discounts is None else batch_discounts(entry.batch_discounts)
        ),
    )


def price_warnings(registry: Registry, credit_value_usd: float) -> list[str]:
    """One line per active model and resolution whose credit price is below the provider's cost."""
    warnings: list[str] = []
    for model in registry:
        if not model.active:
            continue
        for resolution in model.resolutions:
            cost = model.cost_for(resolution)
            if cost is None:
                continue
            earned = model.credits_for(resolution) * credit_value_usd
            # Prices in cents are not exact in binary: equal must not read as below.
            if earned < cost and not math.isclose(earned, cost, rel_tol=1e-9):
                price = model.credits_for(resolution)
                warnings.append(
                    f"{registry.path}: model '{model.id}' at {resolution}: the price, "
                    f"{price} credit{'' if price == 1 else 's'}, is {_dollars(earned)} "
                    f"at CREDIT_VALUE_USD={credit_value_usd:g}, below the provider's "
                    f"cost of {_dollars(cost)} per image"
                )
    return warnings


def _dollars(amount: float) -> str:
    """Three decimals, or as many as a fraction of a tenth of a cent needs for two digits."""
    decimals = 3 if amount == 0 or amount >= 0.001 else 1 - math.floor(math.log10(amount))
    return f"${amount:.{decimals}f}"
