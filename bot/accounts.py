"""Account ids: who a chat user is, whatever the platform."""

from __future__ import annotations

import re

from bot.errors import InvalidAccount

CONSOLE_OWNER = "console:local"

_ACCOUNT = re.compile(
    r"^(?:discord:[1-9][0-9]{0,19}|slack:[A-Z0-9]{1,20}:[A-Z0-9]{1,20}|console:[A-Za-z0-9_.\-]{1,64})$"
)


def parse_account(text: str) -> str:
    """Return ``text`` as a canonical account id or raise ``InvalidAccount``."""
    account = text.strip()
    if account.startswith("console:"):
        account = "console:" + account.removeprefix("console:")
    if not _ACCOUNT.match(account):
        raise InvalidAccount(text)
    return account
