"""The /imagine text form and the validation rules every platform shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot import messages
from bot.catalog import ModelCatalog
from bot.errors import ModelUnavailable, RequestError, UnknownModel
from bot.options import take_option
from bot.parsing import (
    ImagineOptions,
    estimate_only,
    parse_compare,
    parse_imagine,
    parse_imagine_text,
    validate_request,
    visible_text,
)
from bot.registry import Registry, load_registry
from bot.when import parse_expiry
from providers import PROVIDERS
from providers.base import ReferenceImage

# In file order: an inactive model and an unavailable one come first, so the
# default has to skip both to reach "pro".
MODELS = """
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
"""

KEYLESS_REASON = "no API key is configured (set OPENAI_API_KEY)"
REFERENCE = ReferenceImage(b"x", "image/png")


def load_models(folder: Path) -> Registry:
    path = folder / "models.toml"
    path.write_text(MODELS, encoding="utf-8")
    return load_registry(path, PROVIDERS)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return load_models(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def catalog(registry: Registry) -> ModelCatalog:
    return ModelCatalog(registry, unavailable={"keyless": KEYLESS_REASON})


def refusal(catalog: ModelCatalog, typed: ImagineOptions | str) -> RequestError:
    """The error a request is refused with, from the text form or from options."""
    with pytest.raises(RequestError) as raised:
        if isinstance(typed, str):
            parse_imagine(typed, catalog)
        else:
            validate_request(typed, catalog)
    return raised.value


def text_refusal(text: str) -> str:
    with pytest.raises(RequestError) as raised:
        parse_imagine_text(text)
    return raised.value.message


# -- the text form: options and prompt -----------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("a fox in snow", ImagineOptions(prompt="a fox in snow"), id="prompt-only"),
        pytest.param(
            "model:pro count:2 resolution:2K aspect:16:9 a fox in snow",
            ImagineOptions("a fox in snow", "pro", "2", "2K", "16:9"),
            id="options-first",
        ),
        pytest.param(
            "aspect:16:9 resolution:2K count:2 model:pro a fox in snow",
            ImagineOptions("a fox in snow", "pro", "2", "2K", "16:9"),
            id="options-in-another-order",
        ),
        pytest.param(
            "a fox in snow model:pro count:2",
            ImagineOptions("a fox in snow", "pro", "2"),
            id="options-after-the-prompt",
        ),
        pytest.param(
            "a fox count:2 in snow model:pro",
            ImagineOptions("a fox in snow", "pro", "2"),
            id="options-between-prompt-words",
        ),
        pytest.param(
            'prompt:"a fox in snow" model:pro',
            ImagineOptions("a fox in snow", "pro"),
            id="prompt-option",
        ),
        pytest.param(
            'prompt:"a fox: in snow" count:3',
            ImagineOptions("a fox: in snow", count="3"),
            id="straight-quoted-prompt-with-a-colon",
        ),
        pytest.param(
            "prompt:“a curly fox” n:2",
            ImagineOptions("a curly fox", count="2"),
            id="curly-quoted-prompt",
        ),
        pytest.param(
            'model:"pro" aspect:“16:9” a fox',
            ImagineOptions("a fox", "pro", aspect="16:9"),
            id="quoted-option-values",
        ),
        pytest.param("a fox's tail", ImagineOptions("a fox's tail"), id="apostrophe"),
        pytest.param(
            "a fox's tail, the fox's den model:pro",
            ImagineOptions("a fox's tail, the fox's den", "pro"),
            id="apostrophes-with-an-option",
        ),
        pytest.param(
            "a clock showing 10:30 ar:9:16",
            ImagineOptions("a clock showing 10:30", aspect="9:16"),
            id="time-in-the-prompt",
        ),
        pytest.param(
            "a 3:2 photo print", ImagineOptions("a 3:2 photo print"), id="ratio-in-the-prompt"
        ),
        pytest.param(
            "a smiley :) on a wall", ImagineOptions("a smiley :) on a wall"), id="bare-colon"
        ),
        pytest.param(
            "a poster that says: open late",
            ImagineOptions("a poster that says: open late"),
            id="prose-colon-before-a-space",
        ),
        pytest.param(
            "the end of a fox's tail:", ImagineOptions("the end of a fox's tail:"), id="last-colon"
        ),
        pytest.param(
            "m:flash n:1 res:1K ar:1:1 a fox",
            ImagineOptions("a fox", "flash", "1", "1K", "1:1"),
            id="short-aliases",
        ),
        pytest.param(
            "size:4K ratio:16:9 a fox",
            ImagineOptions("a fox", resolution="4K", aspect="16:9"),
            id="long-aliases",
        ),
        pytest.param(
            "aspect_ratio:9:16 a fox", ImagineOptions("a fox", aspect="9:16"), id="aspect_ratio"
        ),
        pytest.param(
            "MODEL:pro Count:2 RES:2k a fox",
            ImagineOptions("a fox", "pro", "2", "2k"),
            id="keys-in-any-case",
        ),
        pytest.param(
            "  a   fox \n\t in  snow  ", ImagineOptions("a fox in snow"), id="whitespace-collapsed"
        ),
        pytest.param(
            'model:pro "a lighthouse at dusk"',
            ImagineOptions("a lighthouse at dusk", "pro"),
            id="wholly-quoted-prompt",
        ),
        pytest.param(
            "“a lighthouse at dusk”",
            ImagineOptions("a lighthouse at dusk"),
            id="wholly-curly-quoted-prompt",
        ),
        pytest.param(
            'a sign saying "open" at night',
            ImagineOptions('a sign saying "open" at night'),
            id="quotes-inside-the-prompt-stay",
        ),
        pytest.param(
            "count:2 the logo of https://example.com/a in http://x.co style",
            ImagineOptions("the logo of https://example.com/a in http://x.co style", count="2"),
            id="web-addresses-are-prompt",
        ),
    ],
)
def test_text_form_splits_options_from_prompt(text: str, expected: ImagineOptions) -> None:
    assert parse_imagine_text(text) == expected


# -- the text form: malformed options ------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("price model:pro count:4 a fox", (True, "model:pro count:4 a fox")),
        ("Price a fox", (True, "a fox")),
        ("price", (True, "")),
        ("a price tag on a fox", (False, "a price tag on a fox")),
        ("model:pro price a fox", (False, "model:pro price a fox")),
        ('prompt:"price tags on a fox"', (False, 'prompt:"price tags on a fox"')),
    ],
)
def test_only_a_first_word_price_asks_for_the_price_alone(
    text: str, expected: tuple[bool, str]
) -> None:
    assert estimate_only(text) == expected


def test_an_unknown_option_lists_the_options_and_hints_at_quoting_the_prompt() -> None:
    message = text_refusal("style:anime a fox")
    assert message.startswith("'style:' is not an option")
    assert "model:, count:, resolution:, aspect:, prompt:" in message
    assert 'quote the prompt: prompt:"..."' in message


@pytest.mark.parametrize("text", ["count:1 count:2 a fox", "n:1 count:2 a fox", "m:pro model:pro"])
def test_a_repeated_option_says_to_give_it_once(text: str) -> None:
    message = text_refusal(text)
    assert "is given more than once; give each option once" in message


@pytest.mark.parametrize(
    ("text", "option"),
    [("a fox count:", "count"), ("a fox count: 2", "count"), ("a fox res:", "resolution")],
)
def test_an_option_without_a_value_shows_how_to_write_it(text: str, option: str) -> None:
    assert text_refusal(text) == (
        f"{option}: has no value; write it like {option}:value with no space after the colon."
    )


@pytest.mark.parametrize(
    ("text", "option"), [('model:"" a fox', "model"), ("res:“ ” a fox", "resolution")]
)
def test_an_empty_quoted_value_is_refused_rather_than_taken_as_the_default(
    text: str, option: str
) -> None:
    assert text_refusal(text) == messages.empty_option(option)


@pytest.mark.parametrize("text", ['prompt:"a fox', "prompt:“a fox", 'count:2 prompt:"a fox in'])
def test_an_unclosed_quote_says_to_close_it(text: str) -> None:
    assert text_refusal(text) == messages.unclosed_quote("prompt")
    assert "never closed" in text_refusal(text)


def test_a_prompt_given_as_option_and_as_text_says_to_pick_one() -> None:
    message = text_refusal('prompt:"a fox" in snow')
    assert message.startswith("The prompt is given twice")
    assert 'use prompt:"..." or plain text' in message


# -- validation: defaults and accepted values ----------------------------------


def test_defaults_are_the_first_usable_model_one_image_and_its_first_offers(
    catalog: ModelCatalog,
) -> None:
    request = parse_imagine("a fox", catalog)
    assert (request.model.id, request.count, request.resolution, request.aspect_ratio) == (
        "pro",
        1,
        "1K",
        "1:1",
    )


def test_the_default_model_skips_models_that_are_unavailable(tmp_path: Path) -> None:
    catalog = ModelCatalog(
        load_models(tmp_path),
        unavailable={"keyless": KEYLESS_REASON, "pro": "no API key is configured"},
    )
    assert parse_imagine("a fox", catalog).model.id == "flash"


def test_every_option_is_applied(catalog: ModelCatalog) -> None:
    request = parse_imagine("model:pro count:3 resolution:2K aspect:9:16 a fox", catalog)
    assert (request.model.id, request.count, request.resolution, request.aspect_ratio) == (
        "pro",
        3,
        "2K",
        "9:16",
    )


def test_the_list_price_per_image_is_the_one_at_the_chosen_resolution(
    catalog: ModelCatalog,
) -> None:
    at_1k = parse_imagine("model:pro count:3 res:1K a fox", catalog)
    at_4k = parse_imagine("model:pro count:3 res:4K a fox", catalog)
    assert (at_1k.credits_per_image, at_4k.credits_per_image) == (10, 20)


@pytest.mark.parametrize(("typed", "meant"), [("2k", "2K"), (" 4K ", "4K"), ("1k", "1K")])
def test_resolution_is_read_in_any_case(catalog: ModelCatalog, typed: str, meant: str) -> None:
    options = ImagineOptions(prompt="a fox", model="pro", resolution=typed)
    assert validate_request(options, catalog).resolution == meant


@pytest.mark.parametrize("typed", ["16x9", "16X9", "16×9", "16/9", "16 : 9"])
def test_aspect_ratio_accepts_common_spellings(catalog: ModelCatalog, typed: str) -> None:
    options = ImagineOptions(prompt="a fox", aspect=typed)
    assert validate_request(options, catalog).aspect_ratio == "16:9"


def test_an_aspect_typed_with_an_x_in_the_text_form_is_normalised(catalog: ModelCatalog) -> None:
    assert parse_imagine("ar:16x9 a fox", catalog).aspect_ratio == "16:9"


@pytest.mark.parametrize("typed", ["FLASH", "Flash", " flash "])
def test_model_ids_are_read_in_any_case(catalog: ModelCatalog, typed: str) -> None:
    options = ImagineOptions(prompt="a fox", model=typed)
    assert validate_request(options, catalog).model.id == "flash"


def test_a_count_given_as_a_number_is_accepted(catalog: ModelCatalog) -> None:
    options = ImagineOptions(prompt="a fox", model="pro", count=4)
    assert validate_request(options, catalog).count == 4


def test_whitespace_in_a_prompt_from_options_is_collapsed(catalog: ModelCatalog) -> None:
    options = ImagineOptions(prompt="  a   fox\n\tin snow ")
    assert validate_request(options, catalog).prompt == "a fox in snow"


def test_a_prompt_exactly_at_the_limit_is_accepted(catalog: ModelCatalog) -> None:
    prompt = "x" * messages.PROMPT_MAX_CHARS
    assert parse_imagine(prompt, catalog).prompt == prompt


def test_collapsed_whitespace_does_not_count_towards_the_limit(catalog: ModelCatalog) -> None:
    half = "x" * (messages.PROMPT_MAX_CHARS // 2 - 1)
    prompt = validate_request(ImagineOptions(prompt=f"{half}     {half}"), catalog).prompt
    assert len(prompt) == messages.PROMPT_MAX_CHARS - 1


def test_reference_images_up_to_the_models_limit_are_kept(catalog: ModelCatalog) -> None:
    options = ImagineOptions(prompt="a fox", model="pro", reference_images=(REFERENCE, REFERENCE))
    assert validate_request(options, catalog).reference_images == (REFERENCE, REFERENCE)


# -- validation: refusals that say what to do ----------------------------------


def test_an_unknown_model_suggests_the_closest_id(catalog: ModelCatalog) -> None:
    error = refusal(catalog, "model:flsh a fox")
    assert isinstance(error, UnknownModel)
    assert error.message == (
        "There is no model called 'flsh'. Did you mean flash? /models lists them all."
    )


def test_an_unknown_model_without_a_close_id_points_to_the_model_list(
    catalog: ModelCatalog,
) -> None:
    error = refusal(catalog, "model:zzzzzz a fox")
    assert isinstance(error, UnknownModel)
    assert "Did you mean" not in error.message
    assert "/models lists them all" in error.message


def test_an_inactive_model_is_refused_as_switched_off(catalog: ModelCatalog) -> None:
    error = refusal(catalog, "model:retired a fox")
    assert isinstance(error, ModelUnavailable)
    assert error.message == (
        "retired is unavailable: it is switched off in the models file. "
        "/models lists the ones you can use."
    )


def test_a_model_unavailable_now_is_still_validated_for_its_quote_to_offer_another(
    catalog: ModelCatalog,
) -> None:
    request = parse_imagine("model:keyless a fox", catalog)
    assert request.model.id == "keyless"


def test_a_model_unavailable_now_is_held_to_its_own_options(catalog: ModelCatalog) -> None:
    error = refusal(catalog, "model:keyless count:2 a fox")
    assert error.message == messages.bad_count("2", 1, "keyless")


@pytest.mark.parametrize("count", ["0", "5", "two", "-1", "1.5", "9999"])
def test_a_count_outside_the_models_range_gives_the_range(
    catalog: ModelCatalog, count: str
) -> None:
    message = refusal(catalog, f"model:pro count:{count} a fox").message
    assert message == f"count must be a whole number from 1 to 4 for pro, not '{count}'."


def test_the_count_limit_is_the_chosen_models(catalog: ModelCatalog) -> None:
    message = refusal(catalog, "model:flash count:3 a fox").message
    assert "from 1 to 2 for flash" in message


def test_an_unsupported_resolution_lists_the_supported_ones(catalog: ModelCatalog) -> None:
    message = refusal(catalog, "model:flash resolution:2K a fox").message
    assert message == "flash does not make 2K images; it supports 1K."


def test_a_malformed_resolution_lists_the_supported_ones(catalog: ModelCatalog) -> None:
    message = refusal(catalog, "model:pro res:1080p a fox").message
    assert message == "pro does not make 1080p images; it supports 1K, 2K or 4K."


def test_an_unsupported_aspect_ratio_lists_the_supported_ones(catalog: ModelCatalog) -> None:
    message = refusal(catalog, "model:pro aspect:4:3 a fox").message
    assert message == "pro does not make 4:3 images; it supports 1:1, 16:9 or 9:16."


@pytest.mark.parametrize("text", ["", "   ", " \n\t ", "model:pro", "model:pro count:2  "])
def test_an_empty_prompt_gives_an_example(catalog: ModelCatalog, text: str) -> None:
    message = refusal(catalog, text).message
    assert message == "Tell me what to draw, for example: /imagine a lighthouse at dusk"


def test_a_prompt_one_over_the_limit_gives_its_length_and_the_limit(
    catalog: ModelCatalog,
) -> None:
    prompt = "x" * (messages.PROMPT_MAX_CHARS + 1)
    message = refusal(catalog, prompt).message
    assert message == (
        f"The prompt is {messages.PROMPT_MAX_CHARS + 1} characters long; "
        f"the limit is {messages.PROMPT_MAX_CHARS}. Shorten it and try again."
    )


def test_reference_images_on_a_model_that_takes_none_are_refused(catalog: ModelCatalog) -> None:
    options = ImagineOptions(prompt="a fox", model="flash", reference_images=(REFERENCE,))
    assert refusal(catalog, options).message == (
        "flash does not accept reference images; choose another model or drop them."
    )


def test_too_many_reference_images_give_the_models_limit(catalog: ModelCatalog) -> None:
    options = ImagineOptions(prompt="a fox", model="pro", reference_images=(REFERENCE,) * 3)
    assert refusal(catalog, options).message == ("pro accepts at most 2 reference images, not 3.")


def test_a_catalog_with_nothing_usable_says_so(registry: Registry) -> None:
    nothing = ModelCatalog(registry, {model.id: "no key" for model in registry})
    assert refusal(nothing, "a fox").message == messages.NO_MODEL_AVAILABLE


# -- properties -----------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("typed", "kept"),
    [
        ("a\x00 fox", "a fox"),
        ("\x1b[31mred", "[31mred"),
        ("a \u202eevil\u202c cat", "a evil cat"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("tag\U000e0041\U000e0042s", "tags"),
        ("astronaut \U0001f469\u200d\U0001f680", "astronaut \U0001f469\u200d\U0001f680"),
        ("tab\tand\nnewline", "tab\tand\nnewline"),
    ],
)
def test_control_and_invisible_characters_are_removed_but_not_the_emoji_joiner(
    typed: str, kept: str
) -> None:
    assert visible_text(typed) == kept


# -- when granted credits expire ------------------------------------------------

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("typed", "after"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_an_expiry_given_as_a_duration_counts_from_now(typed: str, after: timedelta) -> None:
    assert parse_expiry(typed, NOW) == NOW + after


@pytest.mark.parametrize(
    ("typed", "when"),
    [
        ("2027-01-01", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01-01T18:00", datetime(2027, 1, 1, 18, 0, tzinfo=UTC)),
        ("2027-01-01T18:00+01:00", datetime(2027, 1, 1, 17, 0, tzinfo=UTC)),
    ],
)
def test_an_expiry_given_as_a_date_is_that_moment_in_utc(typed: str, when: datetime) -> None:
    assert parse_expiry(typed, NOW) == when


def test_an_expiry_already_past_is_refused_with_the_date() -> None:
    with pytest.raises(RequestError) as refused:
        parse_expiry("2026-11-24", NOW)
    assert refused.value.message == messages.date_in_the_past(datetime(2026, 11, 24, tzinfo=UTC))


@pytest.mark.parametrize("typed", ["0d", "3651d"])
def test_a_duration_out_of_range_is_refused_as_a_duration(typed: str) -> None:
    with pytest.raises(RequestError) as refused:
        parse_expiry(typed, NOW)
    assert refused.value.message == messages.bad_duration(typed)


@pytest.mark.parametrize("typed", ["next week", "7 days", "", "-7d"])
def test_an_expiry_that_is_neither_a_duration_nor_a_date_is_one_sentence(typed: str) -> None:
    with pytest.raises(RequestError) as refused:
        parse_expiry(typed, NOW)
    assert refused.value.message == messages.bad_expiry(typed)


# -- an option among an admin command's words ------------------------------------


def test_an_option_is_taken_from_anywhere_among_the_words() -> None:
    words = ["contest", "Expires:7d", "prize"]
    assert take_option(words, "expires") == ("7d", ["contest", "prize"])


def test_words_without_the_option_are_left_as_they_are() -> None:
    assert take_option(["contest", "prize"], "expires") == (None, ["contest", "prize"])


def test_an_option_given_twice_is_refused() -> None:
    with pytest.raises(RequestError) as refused:
        take_option(["expires:7d", "expires:2027-01-01"], "expires")
    assert refused.value.message == messages.repeated_option("expires")


def test_an_option_without_a_value_is_refused() -> None:
    with pytest.raises(RequestError) as refused:
        take_option(["expires:", "prize"], "expires")
    assert refused.value.message == messages.empty_option("expires")


def test_compare_makes_one_image_per_model_at_one_resolution_and_aspect(
    catalog: ModelCatalog,
) -> None:
    compare = parse_compare("models:pro,flash aspect:16:9 a fox", catalog)
    assert [(r.model.id, r.count, r.resolution, r.aspect_ratio) for r in compare.requests] == [
        ("pro", 1, "1K", "16:9"),
        ("flash", 1, "1K", "16:9"),
    ]


@pytest.mark.parametrize("models", ["pro", "pro,flash,pro,flash,pro", ""])
def test_compare_takes_two_to_four_models(catalog: ModelCatalog, models: str) -> None:
    with pytest.raises(RequestError, match="2 to 4 different models"):
        parse_compare(f"models:{models} a fox" if models else "a fox", catalog)


def test_compare_refuses_a_model_named_twice(catalog: ModelCatalog) -> None:
    with pytest.raises(RequestError) as refused:
        parse_compare("models:pro,flash,PRO a fox", catalog)
    assert refused.value.message == messages.compare_repeated_model("PRO")


def test_compare_refuses_an_unknown_model(catalog: ModelCatalog) -> None:
    with pytest.raises(UnknownModel):
        parse_compare("models:pro,nope a fox", catalog)


def test_compare_names_the_model_lacking_the_resolution(catalog: ModelCatalog) -> None:
    with pytest.raises(RequestError) as refused:
        parse_compare("models:pro,flash resolution:2K a fox", catalog)
    assert refused.value.message.startswith("flash ")
