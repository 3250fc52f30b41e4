"""The /imagine text form and the validation rules every platform shares."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot import messages
from bot.catalog import ModelCatalog
from bot.errors import ModelUnavailable, RequestError, UnknownModel
from bot.parsing import ImagineOptions, parse_imagine, parse_imagine_text, validate_request
from bot.registry import load_registry
from providers.base import ReferenceImage

MODELS = """
[models.pro]
provider = "google"
provider_model = "pro-image"
name = "Pro"
credits_per_image = 10
resolution_credits = { "4K" = 20 }
resolutions = ["1K", "2K", "4K"]
aspect_ratios = ["1:1", "16:9", "9:16"]
max_images = 4
max_reference_images = 2

[models.flash]
provider = "google"
provider_model = "flash-image"
name = "Flash"
credits_per_image = 5
resolutions = ["1K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 2

[models.retired]
provider = "google"
provider_model = "old-image"
name = "Retired"
credits_per_image = 1
active = false
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 1

[models.keyless]
provider = "openai"
provider_model = "gpt-image"
name = "Keyless"
credits_per_image = 3
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 1
"""

REFERENCE = ReferenceImage(b"\x89PNG", "image/png")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> ModelCatalog:
    path: Path = tmp_path_factory.mktemp("registry") / "models.toml"
    path.write_text(MODELS)
    registry = load_registry(path, {"google", "openai"})
    return ModelCatalog(registry, {"keyless": "no API key is configured (set OPENAI_API_KEY)"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a fox in snow", ImagineOptions(prompt="a fox in snow")),
        (
            "model:pro count:2 resolution:2K aspect:16:9 a fox in snow",
            ImagineOptions("a fox in snow", "pro", "2", "2K", "16:9"),
        ),
        ("a fox count:2 in snow model:pro", ImagineOptions("a fox in snow", "pro", "2")),
        ('prompt:"a fox: in snow" count:3', ImagineOptions("a fox: in snow", count="3")),
        ("prompt:“a curly fox” n:2", ImagineOptions("a curly fox", count="2")),
        ('model:"pro" a fox', ImagineOptions("a fox", "pro")),
        ("a fox's tail", ImagineOptions("a fox's tail")),
        ("a clock showing 10:30 ar:9:16", ImagineOptions("a clock showing 10:30", aspect="9:16")),
        ("m:flash n:1 res:1K ar:1:1 a fox", ImagineOptions("a fox", "flash", "1", "1K", "1:1")),
        ("MODEL:pro Count:2 a fox", ImagineOptions("a fox", "pro", "2")),
        ("  a   fox \n in  snow  ", ImagineOptions("a fox in snow")),
        ("a poster that says: open late", ImagineOptions("a poster that says: open late")),
        ('model:pro "a lighthouse at dusk"', ImagineOptions("a lighthouse at dusk", "pro")),
        ("size:4K ratio:16:9 a fox", ImagineOptions("a fox", resolution="4K", aspect="16:9")),
    ],
)
def test_text_form_splits_options_from_prompt(text: str, expected: ImagineOptions) -> None:
    assert parse_imagine_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("style:anime a fox", messages.unknown_option("style")),
        ("count:1 count:2 a fox", messages.repeated_option("count")),
        ("n:1 count:2 a fox", messages.repeated_option("count")),
        ("a fox count:", messages.empty_option("count")),
        ("a fox count: 2", messages.empty_option("count")),
        ('prompt:"a fox', messages.unclosed_quote("prompt")),
        ('prompt:"a fox" in snow', messages.prompt_given_twice()),
    ],
)
def test_malformed_options_are_explained(text: str, expected: str) -> None:
    with pytest.raises(RequestError) as refusal:
        parse_imagine_text(text)
    assert refusal.value.message == expected


def test_defaults_come_from_the_registry(catalog: ModelCatalog) -> None:
    request = parse_imagine("a fox", catalog)
    assert (request.model.id, request.count, request.resolution, request.aspect_ratio) == (
        "pro",
        1,
        "1K",
        "1:1",
    )


def test_the_default_model_is_the_first_usable_one(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    registry = load_registry(path, {"google", "openai"})
    catalog = ModelCatalog(registry, {"pro": "no API key is configured (set GEMINI_API_KEY)"})
    assert parse_imagine("a fox", catalog).model.id == "flash"


def test_every_option_is_applied(catalog: ModelCatalog) -> None:
    request = parse_imagine("model:pro count:3 resolution:4K aspect:9:16 a fox", catalog)
    assert (request.model.id, request.count, request.resolution, request.aspect_ratio) == (
        "pro",
        3,
        "4K",
        "9:16",
    )
    assert (request.credits_per_image, request.price) == (20, 60)


@pytest.mark.parametrize(("typed", "meant"), [("2k", "2K"), (" 4K ", "4K")])
def test_resolution_is_read_in_any_case(catalog: ModelCatalog, typed: str, meant: str) -> None:
    options = ImagineOptions(prompt="a fox", resolution=typed)
    assert validate_request(options, catalog).resolution == meant


@pytest.mark.parametrize("typed", ["16x9", "16X9", "16/9", "16 : 9"])
def test_aspect_ratio_accepts_common_spellings(catalog: ModelCatalog, typed: str) -> None:
    options = ImagineOptions(prompt="a fox", aspect=typed)
    assert validate_request(options, catalog).aspect_ratio == "16:9"


def test_model_ids_are_read_in_any_case(catalog: ModelCatalog) -> None:
    assert parse_imagine("model:FLASH a fox", catalog).model.id == "flash"


def test_a_prompt_at_the_limit_is_accepted(catalog: ModelCatalog) -> None:
    prompt = "x" * messages.PROMPT_MAX_CHARS
    assert parse_imagine(prompt, catalog).prompt == prompt


def test_reference_images_go_to_models_that_take_them(catalog: ModelCatalog) -> None:
    options = ImagineOptions(prompt="a fox", model="pro", reference_images=(REFERENCE, REFERENCE))
    assert validate_request(options, catalog).reference_images == (REFERENCE, REFERENCE)


def refusal(catalog: ModelCatalog, options: ImagineOptions | str) -> RequestError:
    with pytest.raises(RequestError) as raised:
        if isinstance(options, str):
            parse_imagine(options, catalog)
        else:
            validate_request(options, catalog)
    return raised.value


def test_an_unknown_model_suggests_close_ids(catalog: ModelCatalog) -> None:
    error = refusal(catalog, "model:flsh a fox")
    assert isinstance(error, UnknownModel)
    assert error.message == messages.unknown_model("flsh", ["flash"])
    assert "Did you mean flash?" in error.message


def test_an_unknown_model_without_a_close_id_points_to_models(catalog: ModelCatalog) -> None:
    assert "/models lists them all" in refusal(catalog, "model:zzzzzz a fox").message


def test_an_inactive_model_is_refused(catalog: ModelCatalog) -> None:
    error = refusal(catalog, "model:retired a fox")
    assert isinstance(error, ModelUnavailable)
    assert "switched off" in error.message


def test_a_model_without_its_key_says_what_to_set(catalog: ModelCatalog) -> None:
    error = refusal(catalog, "model:keyless a fox")
    assert error.message == messages.model_unavailable(
        "keyless", "no API key is configured (set OPENAI_API_KEY)"
    )


@pytest.mark.parametrize("count", ["0", "5", "two", "-1", "1.5", "9999"])
def test_count_must_be_within_the_models_limit(catalog: ModelCatalog, count: str) -> None:
    assert refusal(catalog, f"model:pro count:{count} a fox").message == messages.bad_count(
        count, 4, "pro"
    )


def test_an_unsupported_resolution_lists_the_supported_ones(catalog: ModelCatalog) -> None:
    message = refusal(catalog, "model:flash resolution:2K a fox").message
    assert message == "flash does not make 2K images; it supports 1K."


def test_an_unsupported_aspect_ratio_lists_the_supported_ones(catalog: ModelCatalog) -> None:
    message = refusal(catalog, "model:pro aspect:4:3 a fox").message
    assert message == "pro does not make 4:3 images; it supports 1:1, 16:9 or 9:16."


@pytest.mark.parametrize("text", ["", "   ", "model:pro", "model:pro count:2  "])
def test_an_empty_prompt_says_what_to_type(catalog: ModelCatalog, text: str) -> None:
    assert refusal(catalog, text).message == messages.EMPTY_PROMPT


def test_a_prompt_over_the_limit_is_refused_with_its_length(catalog: ModelCatalog) -> None:
    prompt = "x" * (messages.PROMPT_MAX_CHARS + 1)
    assert refusal(catalog, prompt).message == messages.prompt_too_long(len(prompt))


def test_reference_images_are_refused_by_models_that_take_none(catalog: ModelCatalog) -> None:
    options = ImagineOptions(prompt="a fox", model="flash", reference_images=(REFERENCE,))
    assert refusal(catalog, options).message == messages.reference_images_not_accepted("flash")


def test_too_many_reference_images_are_refused(catalog: ModelCatalog) -> None:
    options = ImagineOptions(prompt="a fox", model="pro", reference_images=(REFERENCE,) * 3)
    assert refusal(catalog, options).message == messages.too_many_reference_images(3, "pro", 2)


def test_a_catalog_with_nothing_usable_says_so(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    registry = load_registry(path, {"google", "openai"})
    nothing = ModelCatalog(registry, {model.id: "no key" for model in registry})
    assert refusal(nothing, "a fox").message == messages.NO_MODEL_AVAILABLE


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_text_either_parses_or_is_refused_with_a_sentence(text: str) -> None:
    try:
        options = parse_imagine_text(text)
    except RequestError as error:
        assert error.message.strip()
    else:
        assert options.prompt is not None
        assert options.prompt == options.prompt.strip()


@given(
    prompt=st.text(alphabet=st.characters(categories=("L", "N", "Zs")), min_size=1, max_size=80),
    count=st.integers(min_value=1, max_value=4),
    aspect=st.sampled_from(["1:1", "16:9", "9:16"]),
)
@settings(max_examples=100, deadline=None)
def test_options_survive_any_plain_prompt(prompt: str, count: int, aspect: str) -> None:
    words = " ".join(prompt.split())
    assume(words)
    options = parse_imagine_text(f"count:{count} {words} aspect:{aspect}")
    assert (options.prompt, options.count, options.aspect) == (words, str(count), aspect)
