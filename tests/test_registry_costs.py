"""Provider costs, per-model provider options and the price-below-cost warning in the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.registry import Registry, RegistryError, load_registry, price_warnings
from providers import PROVIDERS

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "models.toml"

BASE = """
provider = "{provider}"
provider_model = "m-1"
name = "M"
credits_per_image = 10
resolutions = ["1K", "4K"]
aspect_ratios = ["1:1"]
max_images = 2
"""


def load(
    tmp_path: Path, extra: str = "", provider: str = "google", model_id: str = "m"
) -> Registry:
    path = tmp_path / "models.toml"
    path.write_text(f"[models.{model_id}]" + BASE.format(provider=provider) + extra)
    return load_registry(path, PROVIDERS)


def problems(tmp_path: Path, extra: str, provider: str = "google") -> list[str]:
    with pytest.raises(RegistryError) as refused:
        load(tmp_path, extra, provider)
    return refused.value.problems


def test_the_shipped_registry_has_the_current_gemini_and_gpt_image_models() -> None:
    registry = load_registry(SHIPPED, PROVIDERS)

    by_id = {model.id: model for model in registry}
    assert by_id["gemini-3.1-flash"].provider_model == "gemini-3.1-flash-image"
    assert by_id["gemini-3-pro"].provider_model == "gemini-3-pro-image"
    assert by_id["gpt-image-mini"].provider_model == "gpt-image-1-mini"
    assert by_id["gpt-image"].provider_model in ("gpt-image-2", "gpt-image-1.5")


def test_every_shipped_model_records_its_provider_cost() -> None:
    registry = load_registry(SHIPPED, PROVIDERS)

    assert all(
        model.cost_for(resolution) is not None
        for model in registry
        for resolution in model.resolutions
    )


def test_shipped_prices_cover_their_costs_at_the_default_credit_value() -> None:
    assert price_warnings(load_registry(SHIPPED, PROVIDERS), 0.02) == []


def test_the_cost_of_a_resolution_falls_back_to_the_per_image_cost(tmp_path: Path) -> None:
    [model] = load(tmp_path, 'cost_per_image_usd = 0.1\nresolution_cost_usd = { "4K" = 0.3 }\n')

    assert (model.cost_for("1K"), model.cost_for("4K")) == (0.1, 0.3)


def test_an_unrecorded_cost_is_none(tmp_path: Path) -> None:
    [model] = load(tmp_path)

    assert model.cost_for("1K") is None


def test_a_cost_for_a_resolution_not_offered_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, 'cost_per_image_usd = 0.1\nresolution_cost_usd = { "2K" = 0.3 }\n')

    assert any("resolution_cost_usd prices 2K, which is not in resolutions" in p for p in found)


def test_a_resolution_cost_needs_the_per_image_cost(tmp_path: Path) -> None:
    found = problems(tmp_path, 'resolution_cost_usd = { "4K" = 0.3 }\n')

    assert any("resolution_cost_usd needs cost_per_image_usd" in p for p in found)


def test_a_negative_cost_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, "cost_per_image_usd = -0.1\n")

    assert any("key 'cost_per_image_usd'" in p for p in found)


def test_declared_provider_options_are_kept(tmp_path: Path) -> None:
    [model] = load(tmp_path, 'provider_options = { quality = "high" }\n', provider="openai")

    assert model.provider_options == {"quality": "high"}


@pytest.mark.parametrize(
    ("provider", "options", "complaint"),
    [
        ("google", "{ colour = true }", "unknown option 'colour' for the google provider"),
        ("google", '{ image_size = "no" }', "option 'image_size' must be a bool"),
        ("openai", '{ quality = "ultra" }', "option 'quality' must be one of low, medium, high"),
        ("local", "{ image_size = false }", "(allowed: none)"),
    ],
)
def test_a_bad_provider_option_names_the_file_model_and_key(
    tmp_path: Path, provider: str, options: str, complaint: str
) -> None:
    [problem] = problems(tmp_path, f"provider_options = {options}\n", provider)

    assert problem.startswith(f"{tmp_path / 'models.toml'}: model 'm': key 'provider_options': ")
    assert complaint in problem


def test_an_unquoted_id_with_a_dot_says_to_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text("[models.gemini-3.1-flash]" + BASE.format(provider="google"))

    with pytest.raises(RegistryError) as refused:
        load_registry(path, PROVIDERS)

    assert refused.value.problems == [
        f"{path}: model 'gemini-3.1-flash': an id with a dot must be quoted, "
        'as in [models."gemini-3.1-flash"]'
    ]


def test_a_mistyped_table_inside_a_model_is_an_unknown_key_not_a_dotted_id(
    tmp_path: Path,
) -> None:
    [problem] = problems(tmp_path, "[models.m.provider_option]\nquality = 'high'\n", "openai")

    assert problem.startswith(f"{tmp_path / 'models.toml'}: model 'm': key 'provider_option': ")
    assert "unknown key" in problem
    assert "provider_options" in problem


@pytest.mark.parametrize("cost", ["nan", "inf"])
def test_a_cost_that_is_not_a_number_says_so(tmp_path: Path, cost: str) -> None:
    [problem] = problems(tmp_path, f"cost_per_image_usd = {cost}\n", "google")

    assert problem.endswith("key 'cost_per_image_usd': Input should be a finite number")


def test_a_price_below_cost_warns_with_both_amounts(tmp_path: Path) -> None:
    registry = load(tmp_path, 'cost_per_image_usd = 0.1\nresolution_cost_usd = { "4K" = 0.3 }\n')

    [warning] = price_warnings(registry, 0.02)

    assert "model 'm' at 4K" in warning
    assert "10 credits, is $0.200 at CREDIT_VALUE_USD=0.02" in warning
    assert "cost of $0.300 per image" in warning


def test_a_price_below_a_cost_of_a_fraction_of_a_cent_warns(tmp_path: Path) -> None:
    registry = load(tmp_path, "cost_per_image_usd = 0.00005\n")

    at_1k, _at_4k = price_warnings(registry, 0.000001)

    assert "10 credits, is $0.000010 at CREDIT_VALUE_USD=1e-06" in at_1k
    assert "cost of $0.000050 per image" in at_1k


def test_a_price_equal_to_cost_does_not_warn(tmp_path: Path) -> None:
    registry = load(tmp_path, "cost_per_image_usd = 0.2\n")

    assert price_warnings(registry, 0.02) == []


def test_an_inactive_model_is_not_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        "[models.m]"
        + BASE.format(provider="google")
        + "cost_per_image_usd = 5.0\nactive = false\n"
        + "[models.n]"
        + BASE.format(provider="local")
    )

    assert price_warnings(load_registry(path, PROVIDERS), 0.02) == []


def test_a_model_without_a_cost_is_not_warned_about(tmp_path: Path) -> None:
    assert price_warnings(load(tmp_path), 0.0001) == []


def test_an_unquoted_id_with_two_dots_is_named_in_full(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text("[models.flux-1.1.pro]" + BASE.format(provider="google"))

    with pytest.raises(RegistryError) as refused:
        load_registry(path, PROVIDERS)

    assert refused.value.problems == [
        f"{path}: model 'flux-1.1.pro': an id with a dot must be quoted, "
        'as in [models."flux-1.1.pro"]'
    ]
