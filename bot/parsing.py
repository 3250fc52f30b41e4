"""The /imagine request: the text form parsed, and every form validated by one set of rules.

Text form (Slack, the console)::

    model:gemini-3-pro count:2 resolution:2K aspect:16:9 a fox in snow

Options are ``key:value`` words in any order; a value may be quoted
(``prompt:"a fox: in snow"``, straight or curly quotes); every other word is the
prompt. Discord passes the same options natively and shares ``validate_request``.

``price`` as the first word asks for the price alone (``estimate_only``)::

    price model:gemini-3-pro count:4 a fox in snow
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace

from bot import messages
from bot.catalog import ModelCatalog
from bot.errors import RequestError
from bot.registry import ModelSpec
from providers.base import ReferenceImage

_OPTION_ALIASES = {
    "model": "model",
    "m": "model",
    "count": "count",
    "n": "count",
    "resolution": "resolution",
    "res": "resolution",
    "size": "resolution",
    "aspect": "aspect",
    "ar": "aspect",
    "aspect_ratio": "aspect",
    "ratio": "aspect",
    "prompt": "prompt",
    "subject": "subject",
}

# An option is a word of letters and underscores directly followed by a colon,
# at the start of the text or after whitespace, but not by "//": that is a web
# address. Its value runs to the next whitespace, or to the closing quote when
# it opens with one.
_COMPARE_ALIASES = {
    **{key: option for key, option in _OPTION_ALIASES.items() if option not in ("model", "count")},
    "models": "models",
}
"""/compare takes the models as one list, and makes one image with each."""

COMPARE_MIN_MODELS = 2
COMPARE_MAX_MODELS = 4

_OPTION = re.compile(
    r"""(?<!\S)(?P<key>[A-Za-z_]+):(?!//)(?:"(?P<straight>[^"]*)"|“(?P<curly>[^”]*)”|(?P<bare>[^\s"“]\S*)?)"""
)
_UNCLOSED_QUOTE = re.compile(r"""(?<!\S)(?P<key>[A-Za-z_]+):["“]""")


@dataclass(frozen=True)
class ImagineOptions:
    """What the user typed, before validation; ``None`` means "use the default"."""

    prompt: str | None = None
    model: str | None = None
    count: str | int | None = None
    resolution: str | None = None
    aspect: str | None = None
    reference_images: tuple[ReferenceImage, ...] = ()
    subject: str | None = None
    """A saved subject's name; ``ImagineService.request`` adds its images to ``reference_images``."""


@dataclass(frozen=True)
class ImagineRequest:
    """A request every rule has accepted: ready to be quoted."""

    model: ModelSpec
    prompt: str
    count: int
    resolution: str
    aspect_ratio: str
    reference_images: tuple[ReferenceImage, ...] = ()

    @property
    def credits_per_image(self) -> int:
        """The list price of one image at the chosen resolution (``bot.pricing`` makes the price)."""
        return self.model.credits_for(self.resolution)


ESTIMATE_WORD = "price"


def estimate_only(text: str) -> tuple[bool, str]:
    """Whether ``text`` asks for the price alone, and the request without that word.

    Only ``price`` standing first counts, so a prompt may still use the word;
    one that starts with it is written ``prompt:"price tags on a fox"``.
    """
    words = text.split(maxsplit=1)
    if words and words[0].lower() == ESTIMATE_WORD:
        return True, words[1] if len(words) > 1 else ""
    return False, text


def parse_imagine_text(text: str) -> ImagineOptions:
    values, prompt = _split_options(text, _OPTION_ALIASES)
    return ImagineOptions(prompt=prompt, **values)


def _split_options(text: str, aliases: dict[str, str]) -> tuple[dict[str, str], str]:
    """Split the text form into options and prompt; raises ``RequestError`` on malformed options.

    A word ending in a colon with a space after it ("the words: hello") is prose
    unless it names an option; an unknown ``key:value`` is an error, since it is
    most likely a mistyped option.
    """
    values: dict[str, str] = {}
    prompt_parts: list[str] = []
    position = 0
    for match in _OPTION.finditer(text):
        key = match.group("key").lower()
        value = next(
            (
                group
                for group in (match.group("straight"), match.group("curly"), match.group("bare"))
                if group is not None
            ),
            None,
        )
        option = aliases.get(key)
        if option is None:
            if value is None and not _UNCLOSED_QUOTE.match(text, match.start()):
                continue
            raise RequestError(messages.unknown_option(match.group("key")))
        if option in values:
            raise RequestError(messages.repeated_option(option))
        if value is None:
            unclosed = _UNCLOSED_QUOTE.match(text, match.start())
            raise RequestError(
                messages.unclosed_quote(option) if unclosed else messages.empty_option(option)
            )
        if not value.strip():
            raise RequestError(messages.empty_option(option))
        values[option] = value.strip()
        prompt_parts.append(text[position : match.start()])
        position = match.end()
    prompt_parts.append(text[position:])

    rest = _unquote(" ".join(" ".join(prompt_parts).split()))
    if "prompt" in values and rest:
        raise RequestError(messages.prompt_given_twice())
    prompt = values.pop("prompt", rest)
    return values, prompt


def validate_request(options: ImagineOptions, catalog: ModelCatalog) -> ImagineRequest:
    """Apply every rule and the registry's defaults; raises ``RequestError`` with what to fix."""
    options = _visible(options)
    # A model that cannot be used right now is still validated: its quote offers another.
    model = catalog.active(options.model) if options.model else catalog.default_model()

    prompt = " ".join((options.prompt or "").split())
    if not prompt:
        raise RequestError(messages.EMPTY_PROMPT)
    if len(prompt) > messages.PROMPT_MAX_CHARS:
        raise RequestError(messages.prompt_too_long(len(prompt)))

    count = _count(options.count, model)
    resolution = _pick(
        options.resolution,
        model.resolutions,
        model.default_resolution,
        str.upper,
        lambda value: messages.unsupported_resolution(value, model.id, model.resolutions),
    )
    aspect_ratio = _pick(
        options.aspect,
        model.aspect_ratios,
        model.default_aspect_ratio,
        _normalise_aspect,
        lambda value: messages.unsupported_aspect(value, model.id, model.aspect_ratios),
    )

    references = options.reference_images
    if references and not model.accepts_reference_images:
        raise RequestError(messages.reference_images_not_accepted(model.id))
    if len(references) > model.max_reference_images:
        raise RequestError(
            messages.too_many_reference_images(
                len(references), model.id, model.max_reference_images, options.subject
            )
        )
    return ImagineRequest(model, prompt, count, resolution, aspect_ratio, references)


@dataclass(frozen=True)
class CompareRequest:
    """One prompt for 2–4 models, one image each, at one resolution and aspect ratio."""

    requests: tuple[ImagineRequest, ...]

    @property
    def prompt(self) -> str:
        return self.requests[0].prompt

    @property
    def resolution(self) -> str:
        return self.requests[0].resolution

    @property
    def aspect_ratio(self) -> str:
        return self.requests[0].aspect_ratio


@dataclass(frozen=True)
class CompareOptions:
    """What the user typed for /compare, before validation; ``None`` means "use the default"."""

    models: str | None
    prompt: str | None
    resolution: str | None = None
    aspect: str | None = None
    subject: str | None = None
    """A saved subject's name; ``ImagineService.compare_request`` adds its images to every
    model's request."""


def parse_compare_text(text: str) -> CompareOptions:
    """The text form of /compare:
    ``models:a,b[,c,d] [resolution:…] [aspect:…] [subject:<name>] prompt``."""
    values, prompt = _split_options(text, _COMPARE_ALIASES)
    return CompareOptions(
        values.get("models"),
        prompt,
        values.get("resolution"),
        values.get("aspect"),
        values.get("subject"),
    )


def parse_compare(text: str, catalog: ModelCatalog) -> CompareRequest:
    """``parse_compare_text`` validated, for a compare without a subject."""
    options = parse_compare_text(text)
    return validate_compare(
        options.models, options.prompt, options.resolution, options.aspect, catalog
    )


def validate_compare(
    models: str | None,
    prompt: str | None,
    resolution: str | None,
    aspect: str | None,
    catalog: ModelCatalog,
    *,
    references: tuple[ReferenceImage, ...] = (),
) -> CompareRequest:
    """Each model's request as /imagine would validate it, all at one resolution and aspect,
    each with ``references`` (a subject's images), so a model that cannot take them is named."""
    ids = [each.strip() for each in visible_text(models or "").split(",") if each.strip()]
    if not COMPARE_MIN_MODELS <= len(ids) <= COMPARE_MAX_MODELS:
        raise RequestError(messages.compare_model_count(len(ids)))
    seen: set[str] = set()
    for model_id in ids:
        if model_id.lower() in seen:
            raise RequestError(messages.compare_repeated_model(model_id))
        seen.add(model_id.lower())
    specs = [catalog.active(model_id) for model_id in ids]
    # Unasked, the first model's default where every model makes it; else each
    # model's own check below names the one that does not.
    resolution = resolution or _shared(
        specs[0].default_resolution, [spec.resolutions for spec in specs]
    )
    aspect = aspect or _shared(
        specs[0].default_aspect_ratio, [spec.aspect_ratios for spec in specs]
    )
    return CompareRequest(
        tuple(
            validate_request(
                ImagineOptions(prompt, spec.id, 1, resolution, aspect, references), catalog
            )
            for spec in specs
        )
    )


def _shared(preferred: str, supported: list[tuple[str, ...]]) -> str:
    """``preferred`` if every model supports it, else the first value they all do; else
    ``preferred``, for the model lacking it to be named."""
    candidates = [preferred, *supported[0]]
    return next(
        (value for value in candidates if all(value in each for each in supported)), preferred
    )


_KEPT_FORMAT_CHARACTERS = frozenset("\u200d")
"""The zero-width joiner: emoji such as 👩‍🚀 are made with it."""


def visible_text(text: str) -> str:
    """``text`` without control and invisible formatting characters.

    Zero-width spaces, bidi overrides, tag characters, terminal escapes and NUL
    can hide words from the person reading a caption or a log, smuggle
    instructions past them to the model, or be refused by the database; no
    prompt needs them. Whitespace controls (tab, newline) stay for the caller
    to fold into spaces.
    """
    return "".join(
        character
        for character in text
        if character.isspace()
        or character in _KEPT_FORMAT_CHARACTERS
        or unicodedata.category(character) not in ("Cc", "Cf")
    )


def _visible(options: ImagineOptions) -> ImagineOptions:
    def cleaned(value: str | None) -> str | None:
        return None if value is None else visible_text(value)

    return replace(
        options,
        prompt=cleaned(options.prompt),
        model=cleaned(options.model),
        count=cleaned(options.count) if isinstance(options.count, str) else options.count,
        resolution=cleaned(options.resolution),
        aspect=cleaned(options.aspect),
        subject=cleaned(options.subject),
    )


def parse_imagine(text: str, catalog: ModelCatalog) -> ImagineRequest:
    return validate_request(parse_imagine_text(text), catalog)


def _count(value: str | int | None, model: ModelSpec) -> int:
    if value is None:
        return 1
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{1,3}", text) or not 1 <= int(text) <= model.max_images:
        raise RequestError(messages.bad_count(text, model.max_images, model.id))
    return int(text)


def _pick(
    value: str | None,
    supported: tuple[str, ...],
    default: str,
    normalise: Callable[[str], str],
    complaint: Callable[[str], str],
) -> str:
    if value is None or not value.strip():
        return default
    wanted = normalise(value.strip())
    if wanted not in supported:
        raise RequestError(complaint(value.strip()))
    return wanted


def _unquote(text: str) -> str:
    """A prompt typed wholly in quotes means the words inside them."""
    for opening, closing in (('"', '"'), ("“", "”")):
        inner = text[1:-1]
        if len(text) >= 2 and text[0] == opening and text[-1] == closing and opening not in inner:
            return inner.strip()
    return text


def _normalise_aspect(value: str) -> str:
    return re.sub(r"\s*[x×/:]\s*", ":", value.lower())
