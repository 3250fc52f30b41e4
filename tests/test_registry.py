"""The model registry: the shipped file, prices, and every validation error naming file, model and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.registry import Registry, RegistryError, load_registry
from providers import PROVIDERS

REPO = Path(__file__).resolve().parent.parent
KNOWN = {"local", "google", "openai"}

VALID = """
[models.sketch]
provider = "local"
provider_model = "procedural-v1"
name = "Sketch"
credits_per_image = 2
resolutions = ["1K", "4K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4
"""


def load(tmp_path: Path, text: str) -> Registry:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return load_registry(path, KNOWN)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(RegistryError) as refusal:
        load(tmp_path, text)
    return refusal.value.problems


def with_key(line: str, removing: str | None = None) -> str:
    lines = [row for row in VALID.splitlines() if removing is None or not row.startswith(removing)]
    return "\n".join([*lines, line])


def test_the_shipped_registry_loads() -> None:
    registry = load_registry(REPO / "config" / "models.toml", PROVIDERS)
    pro = registry.get("gemini-3-pro")
    flash = registry.get("gemini-flash")
    sketch = registry.get("local-sketch")
    assert pro is not None and flash is not None and sketch is not None
    assert (pro.provider, pro.provider_model, pro.credits_per_image) == (
        "google",
        "gemini-3-pro-image",
        10,
    )
    assert pro.resolutions == ("1K", "2K", "4K")
    assert {"1:1", "9:16", "16:9"} <= set(pro.aspect_ratios)
    assert pro.max_reference_images == 14
    assert (flash.provider_model, flash.credits_per_image, flash.resolutions) == (
        "gemini-2.5-flash-image",
        5,
        ("1K",),
    )
    assert (sketch.provider, sketch.credits_per_image) == ("local", 1)


def test_a_per_resolution_price_overrides_the_base_price(tmp_path: Path) -> None:
    model = load(tmp_path, with_key('resolution_credits = { "4K" = 5 }')).models[0]
    assert (model.credits_for("1K"), model.credits_for("4K")) == (2, 5)
    assert model.price("4K", 3) == 15


def test_models_keep_the_file_order(tmp_path: Path) -> None:
    second = VALID.replace("[models.sketch]", "[models.another]")
    registry = load(tmp_path, VALID + second)
    assert [model.id for model in registry] == ["sketch", "another"]


def test_optional_keys_have_defaults(tmp_path: Path) -> None:
    model = load(tmp_path, VALID).models[0]
    assert (model.active, model.max_reference_images, model.description) == (True, 0, "")


def test_lookup_ignores_case_and_suggests_close_ids(tmp_path: Path) -> None:
    registry = load(tmp_path, VALID)
    assert registry.get("SKETCH") is registry.models[0]
    assert registry.closest_ids("skech") == ["sketch"]


@pytest.mark.parametrize(
    ("change", "removing", "key", "says"),
    [
        ('credits_per_image = "10"', "credits_per_image", "credits_per_image", "integer"),
        (
            "credits_per_image = 0",
            "credits_per_image",
            "credits_per_image",
            "greater than or equal to 1",
        ),
        ("max_images = 11", "max_images", "max_images", "less than or equal to 10"),
        ("colour = 'red'", None, "colour", "unknown key"),
        ("", "provider_model", "provider_model", "required but missing"),
        ("resolutions = []", "resolutions", "resolutions", "at least 1 item"),
        ("aspect_ratios = []", "aspect_ratios", "aspect_ratios", "at least 1 item"),
        ('resolutions = ["1080p"]', "resolutions", "resolutions[0]", "not a resolution like 1K"),
        (
            'aspect_ratios = ["16-9"]',
            "aspect_ratios",
            "aspect_ratios[0]",
            "not an aspect ratio like 16:9",
        ),
        ('resolutions = ["1K", "1K"]', "resolutions", "resolutions", "lists 1K more than once"),
        ("active = 'yes'", None, "active", "boolean"),
        ('resolution_credits = { "2K" = 5 }', None, "resolution_credits", "not in resolutions"),
        ("max_reference_images = -1", None, "max_reference_images", "greater than or equal to 0"),
    ],
)
def test_a_bad_value_names_file_model_and_key(
    tmp_path: Path, change: str, removing: str | None, key: str, says: str
) -> None:
    [problem] = problems(tmp_path, with_key(change, removing))
    assert problem.startswith(f"{tmp_path / 'models.toml'}: model 'sketch': ")
    assert f"'{key}'" in problem or key in problem
    assert says in problem


def test_an_unknown_provider_lists_the_known_ones(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, VALID.replace('provider = "local"', 'provider = "acme"'))
    assert "model 'sketch': key 'provider': unknown provider 'acme'" in problem
    assert "known: google, local, openai" in problem


def test_ids_differing_only_in_case_are_duplicates(tmp_path: Path) -> None:
    upper = VALID.replace("[models.sketch]", '[models."Sketch"]')
    found = problems(tmp_path, VALID + upper)
    assert any("model 'Sketch'" in problem for problem in found)


def test_an_id_with_spaces_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, VALID.replace("[models.sketch]", '[models."my model"]'))
    assert "model 'my model': the id must be lowercase letters" in problem


def test_a_file_with_no_models_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, "# nothing here\n")
    assert "no models" in problem


def test_a_file_with_no_active_model_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, with_key("active = false"))
    assert "no model is active" in problem


def test_an_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, "default = 'sketch'\n" + VALID)
    assert any("unknown top-level key 'default'" in problem for problem in found)


def test_invalid_toml_is_refused_with_the_parser_message(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, VALID + "\nbroken = = 1\n")
    assert "not valid TOML" in problem


def test_a_missing_file_mentions_the_setting(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as refusal:
        load_registry(tmp_path / "absent.toml", KNOWN)
    assert "MODELS_FILE" in refusal.value.problems[0]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    second = VALID.replace("[models.sketch]", "[models.other]").replace(
        "max_images = 4", "max_images = 0"
    )
    first = VALID.replace("credits_per_image = 2", "credits_per_image = -1")
    found = problems(tmp_path, first + second)
    assert len(found) == 2
    assert "model 'sketch': key 'credits_per_image'" in found[0]
    assert "model 'other': key 'max_images'" in found[1]
