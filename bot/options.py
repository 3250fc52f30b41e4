"""Options among an admin command's words (``until:2027-01-01``, ``expires:7d``), taken
out by one rule for every command that has them.

Apart from ``bot.parsing`` (the /imagine text form): ``bot.credits`` needs this, and
the registry and settings that module reads need ``bot.credits``.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot import messages
from bot.errors import RequestError


def take_option(words: Sequence[str], name: str) -> tuple[str | None, list[str]]:
    """The value of the one ``name:value`` word among ``words`` (None if there is none), and
    the other words in order.

    Admins' commands (``/price``, ``/grant``) take such an option anywhere among their
    words, so that it is never silently read as part of a reason; given twice or with no
    value, it is refused.
    """
    prefix = f"{name}:"
    given = [word for word in words if word.lower().startswith(prefix)]
    if len(given) > 1:
        raise RequestError(messages.repeated_option(name))
    rest = [word for word in words if not word.lower().startswith(prefix)]
    if not given:
        return None, rest
    value = given[0][len(prefix) :]
    if not value:
        raise RequestError(messages.empty_option(name))
    return value, rest
