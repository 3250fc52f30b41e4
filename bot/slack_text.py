"""Slack's text format, both ways: what a user typed, and text that shows only as typed.

Slack sends a slash command's text with ``&``, ``<`` and ``>`` as entities and,
with ``should_escape`` on (see slack-manifest.yml), wraps mentions, channels,
user groups, special mentions, dates and links in control sequences such as
``<@U123|alice>`` or ``<https://example.com|example.com>``. Slack reads the
same sequences in what the bot posts, and besides them links URLs, names
and emoji it finds, and formats ``*bold*``, ``_italic_``, ``~strike~`` and
`` `code` ``.
"""

from __future__ import annotations

import re

_SEQUENCE = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")
_SCHEMES = re.compile(r"^(?:https?://|mailto:|tel:)")
_ZERO_WIDTH_SPACE = "\u200b"
"""Invisible: placed after a character, it keeps Slack from reading that character
as markup, a mention or part of a link, and the text still reads the same."""
_MARKUP = re.compile(r"[*_~`@#:]|\.(?=\w)")


def typed(text: str) -> str:
    """Slash-command text as the user saw it when typing: ``@alice``, ``#general``, the link."""
    return _unescaped(_SEQUENCE.sub(_as_seen, text))


def _unescaped(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def escaped(text: str) -> str:
    """``text`` with Slack's three control characters as the entities Slack asks for."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def inert(text: str) -> str:
    """``text`` as Slack shows it to the letter, on one line: no mention, link, channel,
    emoji, quote or formatting can be made of it, whatever it holds."""
    one_line = " ".join(text.split())
    return escaped(_MARKUP.sub(lambda found: found.group() + _ZERO_WIDTH_SPACE, one_line))


def _as_seen(sequence: re.Match[str]) -> str:
    target, label = sequence.group(1), sequence.group(2)
    if target.startswith(("@", "#")):
        # A user's or a channel's id, with its name when Slack knows it.
        return target[0] + label if label else target
    if target.startswith("!"):
        return _special(target[1:], label)
    address = target.removeprefix("mailto:")
    if label is None or label in (address, _SCHEMES.sub("", target)):
        return label or address
    # A link whose text differs from its address: both, so the prompt loses neither.
    return f"{label} ({address})"


def _special(name: str, label: str | None) -> str:
    """``<!here>``, ``<!subteam^S123|@team>``, ``<!date^…|fallback>`` as they read."""
    if name.startswith("date^"):
        return label or ""
    shown = label or name.removeprefix("subteam^")
    return shown if shown.startswith("@") else "@" + shown
