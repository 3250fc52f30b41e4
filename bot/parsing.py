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
        option = _OPTION_ALIASES.get(key)
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
    return ImagineOptions(prompt=prompt, **values)


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
