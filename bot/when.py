"""When something ends, as an admin types it: a duration (``7d``) or a date (ISO 8601)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from bot import messages
from bot.errors import RequestError

_DURATION = re.compile(r"([0-9]{1,6})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
LONGEST = timedelta(days=3650)
"""Ten years: longer is surely a typo, and nothing in a ledger should wait that long."""


def parse_duration(text: str) -> timedelta:
    """A positive duration like ``90s``, ``30m``, ``12h`` or ``7d``, at most ten years."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise RequestError(messages.bad_duration(text))
    duration = timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    if not timedelta(0) < duration <= LONGEST:
        raise RequestError(messages.bad_duration(text))
    return duration


def parse_moment(text: str) -> datetime:
    """An ISO 8601 date or time, UTC unless it gives an offset; a date alone is its first moment."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RequestError(messages.bad_date(text)) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def parse_until(text: str, now: datetime) -> datetime:
    """``parse_moment``, for a time that must still be to come."""
    when = parse_moment(text)
    if when <= now:
        raise RequestError(messages.date_in_the_past(when))
    return when


def parse_expiry(text: str, now: datetime) -> datetime:
    """When granted credits expire: a duration from ``now`` (``parse_duration``) or a date or
    time still to come (``parse_until``)."""
    typed = text.strip()
    if _DURATION.fullmatch(typed.lower()):
        return now + parse_duration(typed)
    try:
        parse_moment(typed)
    except RequestError:
        # Neither form: one sentence naming both, not the date's alone.
        raise RequestError(messages.bad_expiry(text)) from None
    return parse_until(typed, now)
