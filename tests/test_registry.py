"""The model registry: the shipped file, prices, and every validation error naming file, model and key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot import messages
from bot.platform_limits import DISCORD_CHOICE_CHARACTERS
from bot.pricing import BatchDiscounts, Pricing, price
from bot.registry import Registry, RegistryError, load_registry
from providers import PROVIDERS

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config" / "models.toml"
KNOWN = {name: PROVIDERS[name] for name in ("local", "google", "openai")}
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

VALID = """
[models.sketch]
provider = "local"
provider_model = "procedural-v1"
name = "Sketch"
credits_per_image = 2
resolutions = ["1K", "2K", "4K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4
"""

OTHER = VALID.replace("[models.sketch]", "[models.other]")


def registry_file(tmp_path: Path) -> Path:
    return tmp_path / "models.toml"


def load(tmp_path: Path, text: str) -> Registry:
    path = registry_file(tmp_path)
    path.write_text(text, encoding="utf-8")
    return load_registry(path, KNOWN)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(RegistryError) as refusal:
        load(tmp_path, text)
    assert refusal.value.path == registry_file(tmp_path)
    return refusal.value.problems


def at(tmp_path: Path, model_id: str) -> str:
    """How every problem with one model begins: the file, then the model id."""
    return f"{registry_file(tmp_path)}: model '{model_id}': "


def with_key(line: str, removing: str | None = None) -> str:
    """``VALID`` with one line added, after dropping the line that sets ``removing``."""
    kept = [
        row for row in VALID.splitlines() if removing is None or not row.startswith(f"{removing} ")
    ]
    return "\n".join([*kept, line, ""])


# -- the shipped file ---------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Registry:
    return load_registry(SHIPPED, PROVIDERS)


def test_the_shipped_registry_loads_with_the_registered_providers(shipped: Registry) -> None:
    assert {"gemini-3-pro", "gemini-flash", "local-sketch"} <= {model.id for model in shipped}


def test_shipped_gemini_3_pro_is_googles_pro_image_model(shipped: Registry) -> None:
    pro = shipped.get("gemini-3-pro")
    assert pro is not None
    assert (pro.provider, pro.provider_model, pro.active) == ("google", "gemini-3-pro-image", True)
    assert pro.credits_per_image == 10
    assert pro.credits_for("1K") == 10


def test_shipped_gemini_3_pro_offers_up_to_4k_and_the_common_aspects(shipped: Registry) -> None:
    pro = shipped.get("gemini-3-pro")
    assert pro is not None
    assert pro.resolutions == ("1K", "2K", "4K")
    assert {"1:1", "9:16", "16:9"} <= set(pro.aspect_ratios)


def test_shipped_gemini_3_pro_takes_fourteen_reference_images(shipped: Registry) -> None:
    pro = shipped.get("gemini-3-pro")
    assert pro is not None
    assert pro.max_reference_images == 14
    assert pro.accepts_reference_images


def test_shipped_gemini_flash_is_the_cheaper_1k_only_model(shipped: Registry) -> None:
    flash = shipped.get("gemini-flash")
    assert flash is not None
    assert (flash.provider, flash.provider_model) == ("google", "gemini-2.5-flash-image")
    assert flash.credits_per_image == 5
    assert list(flash.resolutions) == ["1K"]


def test_shipped_local_sketch_costs_one_credit_on_the_local_provider(shipped: Registry) -> None:
    sketch = shipped.get("local-sketch")
    assert sketch is not None
    assert (sketch.provider, sketch.credits_per_image) == ("local", 1)


def test_a_typo_of_a_shipped_id_suggests_the_real_one(shipped: Registry) -> None:
    assert shipped.closest_ids("gemni-3-pro")[0] == "gemini-3-pro"


# -- loading and prices -------------------------------------------------------


def test_a_valid_file_becomes_model_specs(tmp_path: Path) -> None:
    [model] = load(tmp_path, VALID).models
    assert (model.id, model.provider, model.provider_model, model.display_name) == (
        "sketch",
        "local",
        "procedural-v1",
        "Sketch",
    )
    assert (model.resolutions, model.aspect_ratios, model.max_images) == (
        ("1K", "2K", "4K"),
        ("1:1", "16:9"),
        4,
    )


def test_optional_keys_have_defaults(tmp_path: Path) -> None:
    [model] = load(tmp_path, VALID).models
    assert (model.active, model.max_reference_images, model.description) == (True, 0, "")
    assert dict(model.resolution_credits) == {}


def test_the_first_resolution_and_aspect_are_the_defaults(tmp_path: Path) -> None:
    [model] = load(tmp_path, VALID).models
    assert (model.default_resolution, model.default_aspect_ratio) == ("1K", "1:1")


def test_models_keep_the_file_order(tmp_path: Path) -> None:
    registry = load(tmp_path, VALID + OTHER)
    assert [model.id for model in registry] == ["sketch", "other"]


def test_without_resolution_credits_every_resolution_costs_the_base_price(tmp_path: Path) -> None:
    [model] = load(tmp_path, VALID).models
    assert [model.credits_for(r) for r in model.resolutions] == [2, 2, 2]


def test_a_per_resolution_price_overrides_the_base_price_at_that_resolution(
    tmp_path: Path,
) -> None:
    [model] = load(tmp_path, with_key('resolution_credits = { "4K" = 5 }')).models
    assert [model.credits_for(r) for r in ("1K", "2K", "4K")] == [2, 2, 5]


def test_lookup_ignores_case_and_surrounding_spaces(tmp_path: Path) -> None:
    registry = load(tmp_path, VALID)
    assert registry.get("  SKETCH ") is registry.models[0]


def test_lookup_of_an_unknown_id_finds_nothing(tmp_path: Path) -> None:
    assert load(tmp_path, VALID).get("nope") is None


def test_close_ids_suggest_only_active_models(tmp_path: Path) -> None:
    retired = OTHER.replace("[models.other]", "[models.sketches]") + "active = false\n"
    registry = load(tmp_path, VALID + retired)
    assert registry.closest_ids("sketche") == ["sketch"]


# -- every problem names the file, the model and the key ----------------------


@pytest.mark.parametrize(
    ("change", "removing", "key", "says"),
    [
        ('credits_per_image = "10"', "credits_per_image", "credits_per_image", "valid integer"),
        ("credits_per_image = 2.5", "credits_per_image", "credits_per_image", "valid integer"),
        (
            "credits_per_image = 0",
            "credits_per_image",
            "credits_per_image",
            "greater than or equal to 1",
        ),
        ("max_images = 0", "max_images", "max_images", "greater than or equal to 1"),
        ("max_images = 11", "max_images", "max_images", "less than or equal to 10"),
        ("max_reference_images = -1", None, "max_reference_images", "greater than or equal to 0"),
        ("active = 'yes'", None, "active", "valid boolean"),
        ('resolutions = "1K"', "resolutions", "resolutions", "valid list"),
        ("name = ''", "name", "name", "at least 1 character"),
        (
            'resolution_credits = { "4K" = 0 }',
            None,
            "resolution_credits[4K]",
            "greater than or equal to 1",
        ),
    ],
    ids=[
        "credits-as-string",
        "credits-as-float",
        "credits-zero",
        "max-images-zero",
        "max-images-eleven",
        "negative-reference-images",
        "active-as-string",
        "resolutions-not-a-list",
        "empty-name",
        "zero-resolution-price",
    ],
)
def test_a_value_of_the_wrong_type_or_range_names_file_model_and_key(
    tmp_path: Path, change: str, removing: str | None, key: str, says: str
) -> None:
    [problem] = problems(tmp_path, with_key(change, removing))
    assert problem.startswith(at(tmp_path, "sketch") + f"key '{key}': ")
    assert says in problem


def test_an_unknown_key_names_file_model_and_key_and_lists_the_allowed_ones(
    tmp_path: Path,
) -> None:
    [problem] = problems(tmp_path, with_key("colour = 'red'"))
    assert problem.startswith(at(tmp_path, "sketch") + "key 'colour': unknown key")
    assert "credits_per_image" in problem
    assert "max_reference_images" in problem


@pytest.mark.parametrize(
    "key",
    [
        "provider",
        "provider_model",
        "name",
        "credits_per_image",
        "resolutions",
        "aspect_ratios",
        "max_images",
    ],
)
def test_a_missing_required_key_names_file_model_and_key(tmp_path: Path, key: str) -> None:
    [problem] = problems(tmp_path, with_key("", removing=key))
    assert problem == at(tmp_path, "sketch") + f"key '{key}': required but missing"


@pytest.mark.parametrize("key", ["resolutions", "aspect_ratios"])
def test_an_empty_list_of_offers_names_file_model_and_key(tmp_path: Path, key: str) -> None:
    [problem] = problems(tmp_path, with_key(f"{key} = []", removing=key))
    assert problem.startswith(at(tmp_path, "sketch") + f"key '{key}': ")
    assert "at least 1 item" in problem


@pytest.mark.parametrize("resolution", ["1080p", "2k", "0K", "4 K", ""])
def test_a_malformed_resolution_names_file_model_key_and_value(
    tmp_path: Path, resolution: str
) -> None:
    [problem] = problems(tmp_path, with_key(f'resolutions = ["1K", "{resolution}"]', "resolutions"))
    assert problem == (
        at(tmp_path, "sketch")
        + f"key 'resolutions[1]': '{resolution}' is not a resolution like 1K, 2K or 4K"
    )


@pytest.mark.parametrize("aspect", ["16-9", "16x9", "0:1", "16:9:1", "square"])
def test_a_malformed_aspect_ratio_names_file_model_key_and_value(
    tmp_path: Path, aspect: str
) -> None:
    [problem] = problems(tmp_path, with_key(f'aspect_ratios = ["{aspect}"]', "aspect_ratios"))
    assert problem == (
        at(tmp_path, "sketch")
        + f"key 'aspect_ratios[0]': '{aspect}' is not an aspect ratio like 16:9"
    )


def test_a_resolution_listed_twice_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, with_key('resolutions = ["1K", "2K", "1K"]', "resolutions"))
    assert problem == at(tmp_path, "sketch") + "key 'resolutions': lists 1K more than once"


def test_a_price_for_a_resolution_not_offered_names_file_model_and_key(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, with_key('resolution_credits = { "8K" = 50 }'))
    assert problem.startswith(at(tmp_path, "sketch"))
    assert "resolution_credits prices 8K, which is not in resolutions" in problem


def test_an_unknown_provider_names_file_model_and_key_and_lists_the_known_ones(
    tmp_path: Path,
) -> None:
    [problem] = problems(tmp_path, VALID.replace('provider = "local"', 'provider = "acme"'))
    assert problem == (
        at(tmp_path, "sketch")
        + "key 'provider': unknown provider 'acme' (known: google, local, openai)"
    )


def test_a_model_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, '[models]\nsketch = "local"\n')
    assert problem.startswith(at(tmp_path, "sketch") + "must be a table")


# -- ids ----------------------------------------------------------------------


def test_an_uppercase_id_is_refused_because_ids_are_what_users_type(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, VALID.replace("[models.sketch]", "[models.Sketch]"))
    assert problem == (
        at(tmp_path, "Sketch") + "the id must be lowercase letters, digits, '.' and '-', "
        "starting with a letter or digit"
    )


def test_ids_differing_only_in_case_cannot_both_be_defined(tmp_path: Path) -> None:
    """``Foo`` and ``foo`` would be the same model to a user; the uppercase one is refused."""
    upper = VALID.replace("[models.sketch]", "[models.Foo]")
    lower = VALID.replace("[models.sketch]", "[models.foo]")
    [problem] = problems(tmp_path, upper + lower)
    assert problem.startswith(at(tmp_path, "Foo") + "the id must be lowercase")


def test_an_id_defined_twice_is_refused_by_the_toml_parser(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, VALID + VALID.replace("[models.sketch]", '[models."sketch"]'))
    assert problem.startswith(f"{registry_file(tmp_path)}: not valid TOML: ")
    assert "sketch" in problem


def test_an_id_with_spaces_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, VALID.replace("[models.sketch]", '[models."my model"]'))
    assert problem.startswith(at(tmp_path, "my model") + "the id must be lowercase letters")


# -- what Discord accepts -------------------------------------------------------
# One choice too long and Discord refuses the whole command sync, leaving a server with
# no commands; so such text is refused at load, like any other mistake in the file.


def test_an_id_longer_than_a_discord_choice_value_is_refused(tmp_path: Path) -> None:
    long_id = "m" * (DISCORD_CHOICE_CHARACTERS + 1)
    [problem] = problems(tmp_path, VALID.replace("[models.sketch]", f"[models.{long_id}]"))
    assert problem == (
        at(tmp_path, long_id) + "the id is 101 characters long; "
        "Discord takes at most 100 as a model choice"
    )


def test_an_id_exactly_as_long_as_a_discord_choice_value_is_accepted(tmp_path: Path) -> None:
    long_id = "m" * DISCORD_CHOICE_CHARACTERS
    [model] = load(tmp_path, VALID.replace("[models.sketch]", f"[models.{long_id}]")).models
    assert model.id == long_id


def priced_name(name: str) -> str:
    """``VALID`` named ``name`` at the highest price, the longest a choice's price can be."""
    return VALID.replace('name = "Sketch"', f'name = "{name}"').replace(
        "credits_per_image = 2", "credits_per_image = 1000000"
    )


def test_a_name_that_makes_the_discord_choice_too_long_is_refused(tmp_path: Path) -> None:
    """The choice reads "<name> · 1000000 credits/image": 24 characters besides the name."""
    name = "N" * 77
    [problem] = problems(tmp_path, priced_name(name))
    assert problem == (
        at(tmp_path, "sketch") + f"key 'name': the model choice '{name} · 1000000 credits/image' "
        "is 101 characters long; Discord takes at most 100, so shorten the name by 1"
    )


def test_a_name_that_makes_the_discord_choice_exactly_fit_is_accepted(tmp_path: Path) -> None:
    [model] = load(tmp_path, priced_name("N" * 76)).models
    choice = messages.discord_model_choice(model.display_name, model.credits_per_image)
    assert len(choice) == DISCORD_CHOICE_CHARACTERS


def test_a_resolution_longer_than_a_discord_choice_is_refused(tmp_path: Path) -> None:
    resolution = "1" * DISCORD_CHOICE_CHARACTERS + "K"
    [problem] = problems(tmp_path, VALID.replace('"4K"]', f'"{resolution}"]'))
    assert problem == (
        at(tmp_path, "sketch") + f"key 'resolutions': '{resolution}' is 101 characters long; "
        "Discord takes at most 100 as a choice"
    )


# -- the file as a whole -------------------------------------------------------


@pytest.mark.parametrize("text", ["# nothing here\n", "[models]\n", "models = 3\n"])
def test_a_file_with_no_models_is_refused(tmp_path: Path, text: str) -> None:
    [problem] = problems(tmp_path, text)
    assert problem == (
        f"{registry_file(tmp_path)}: no models: add at least one [models.<id>] table"
    )


def test_a_file_with_no_active_model_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, with_key("active = false"))
    assert problem == (
        f"{registry_file(tmp_path)}: no model is active: set active = true on at least one"
    )


def test_an_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, "default = 'sketch'\n" + VALID)
    assert problem.startswith(f"{registry_file(tmp_path)}: unknown top-level key 'default'")


def test_invalid_toml_is_refused_with_the_file_and_the_parsers_position(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, VALID + "\nbroken = = 1\n")
    assert problem.startswith(f"{registry_file(tmp_path)}: not valid TOML: ")
    assert "line 11" in problem


def test_a_missing_file_is_named_and_points_to_models_file(tmp_path: Path) -> None:
    absent = tmp_path / "absent.toml"
    with pytest.raises(RegistryError) as refusal:
        load_registry(absent, KNOWN)
    assert refusal.value.problems == [f"{absent}: file not found (set MODELS_FILE to use another)"]


def test_every_problem_in_the_file_is_reported_at_once(tmp_path: Path) -> None:
    first = VALID.replace("credits_per_image = 2", "credits_per_image = -1")
    second = OTHER.replace("max_images = 4", "max_images = 0")
    third = VALID.replace("[models.sketch]", "[models.third]").replace('"local"', '"acme"')
    found = problems(tmp_path, first + second + third)
    assert len(found) == 3
    assert found[0].startswith(at(tmp_path, "sketch") + "key 'credits_per_image'")
    assert found[1].startswith(at(tmp_path, "other") + "key 'max_images'")
    assert found[2].startswith(at(tmp_path, "third") + "key 'provider'")


def test_every_problem_with_one_model_is_reported_at_once(tmp_path: Path) -> None:
    text = with_key("max_images = 11", "max_images").replace(
        "credits_per_image = 2", 'credits_per_image = "2"'
    )
    found = problems(tmp_path, text)
    assert sorted(found) == sorted(
        [
            at(tmp_path, "sketch") + "key 'credits_per_image': Input should be a valid integer",
            at(tmp_path, "sketch") + "key 'max_images': Input should be less than or equal to 10",
        ]
    )


def test_the_error_message_is_every_problem_on_its_own_line(tmp_path: Path) -> None:
    first = VALID.replace("credits_per_image = 2", "credits_per_image = 0")
    second = OTHER.replace("max_images = 4", "max_images = 0")
    with pytest.raises(RegistryError) as refusal:
        load(tmp_path, first + second)
    assert str(refusal.value).splitlines() == refusal.value.problems


# -- batch discounts ------------------------------------------------------------


def test_a_model_s_batch_discounts_replace_the_pricing_file_s(tmp_path: Path) -> None:
    [model] = load(tmp_path, with_key("batch_discounts = { 2 = 5, 4 = 15 }")).models
    file_discounts = Pricing(batch=BatchDiscounts({4: 10, 8: 20}))
    discounts = file_discounts.discounts_for(model.batch_discounts)
    assert (discounts.percent_for(2), discounts.percent_for(4)) == (5, 15)
    assert price(10, 4, batch=discounts, model_id=model.id, now=NOW).total == 34


def test_a_model_without_batch_discounts_takes_the_pricing_file_s(tmp_path: Path) -> None:
    [model] = load(tmp_path, VALID).models
    file_discounts = BatchDiscounts({4: 10})
    assert Pricing(batch=file_discounts).discounts_for(model.batch_discounts) is file_discounts


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("{ 1 = 10 }", "key 'batch_discounts': '1' is not a number of images from 2 to 4"),
        ("{ 5 = 10 }", "key 'batch_discounts': '5' is not a number of images from 2 to 4"),
        ("{ 2 = 0 }", "key 'batch_discounts[2]': Input should be greater than or equal to 1"),
        ("{ 2 = 100 }", "key 'batch_discounts[2]': Input should be less than or equal to 99"),
        ("{ 2 = 10, 4 = 5 }", "key 'batch_discounts': 4 images get 5% off, no more than"),
    ],
)
def test_bad_batch_discounts_name_the_file_the_model_and_the_key(
    tmp_path: Path, table: str, problem: str
) -> None:
    [found] = problems(tmp_path, with_key(f"batch_discounts = {table}"))
    assert found.startswith(at(tmp_path, "sketch") + problem)
