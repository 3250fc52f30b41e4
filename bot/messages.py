"""Every sentence the bot says to a user, in one module.

Adapters format these for their platform (bold, code spans, Block Kit) but do
not write their own wording, so the same situation reads the same everywhere.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from bot.platform_limits import BUTTON_CHARACTERS
from bot.progress import Delivering, Generating, ProgressEvent, Queued
from ledger.values import major_units

if TYPE_CHECKING:
    from decimal import Decimal

    from bot.pricing import Price
    from bot.registry import ModelSpec
    from bot.stats import Headline
    from ledger import Balance, Generation, Lot, PriceOverride, Purchase

PROMPT_MAX_CHARS = 2000
"""The longest prompt accepted, in characters (documented in the README)."""
REASON_MAX_CHARS = 500
"""The longest reason a grant or revoke records (the ledger's column)."""

OPTION_NAMES = ("model", "count", "resolution", "aspect", "prompt")

QUOTE_NOT_FOUND = "That request no longer exists; start again with /imagine."
QUOTE_EXPIRED = (
    "This quote has expired and nothing was charged; run /imagine again for a fresh one."
)
NOT_YOUR_REQUEST = "This isn't your request; run /imagine to make your own."
NOT_ADMIN = "Only bot admins can grant or revoke credits or set prices (ADMIN_ACCOUNTS lists them)."
EMPTY_PROMPT = "Tell me what to draw, for example: /imagine a lighthouse at dusk"
NO_MODEL_AVAILABLE = (
    "No model is available right now; an admin can run `imagine-bot models` to see why."
)
CANCELLED = "Cancelled; nothing was charged."
NOT_SERVED_HERE = "This bot is not enabled here; its operator can allow this server or workspace."
"""For a command, click or autocomplete from outside DISCORD_GUILD_ALLOWLIST or
SLACK_TEAM_ALLOWLIST; at most 100 characters, so it fits an autocomplete choice."""
SHUTTING_DOWN = "The bot is restarting; nothing was charged, so try again in a minute."
REFERENCE_STORAGE_FULL = (
    "The bot is holding all the reference images it can for requests not yet generated; "
    "try again in a few minutes, or without a reference image."
)


ECHO_MAX_CHARS = 40
"""The most of a user's own input a sentence repeats back: a 100 KB value must not come back whole."""


def _echo(text: str) -> str:
    """What the user typed, as a sentence quotes it: on one line, and shortened."""
    return _shorten(" ".join(text.split()), ECHO_MAX_CHARS)


def reason_too_long(length: int) -> str:
    return (
        f"The reason is {length} characters long; the limit is {REASON_MAX_CHARS}. "
        "Shorten it and try again."
    )


def invalid_account(text: str) -> str:
    return (
        f"'{_echo(text)}' is not an account; use discord:<user id>, slack:<team id>:<user id> "
        "or console:<name>."
    )


def invalid_amount(text: str) -> str:
    return f"'{_echo(text)}' is not an amount; give a whole number of credits greater than 0."


def unknown_model(model_id: str, suggestions: Sequence[str]) -> str:
    hint = f" Did you mean {_either(suggestions)}?" if suggestions else ""
    return f"There is no model called '{_echo(model_id)}'.{hint} /models lists them all."


def model_unavailable(model_id: str, reason: str) -> str:
    return f"{model_id} is unavailable: {reason}. /models lists the ones you can use."


def unknown_option(key: str) -> str:
    return (
        f"'{_echo(key)}:' is not an option; the options are {', '.join(o + ':' for o in OPTION_NAMES)}. "
        f'If it is part of your prompt, quote the prompt: prompt:"..."'
    )


def repeated_option(key: str) -> str:
    return f"{key}: is given more than once; give each option once."


def empty_option(key: str) -> str:
    return f"{key}: has no value; write it like {key}:value with no space after the colon."


def unclosed_quote(key: str) -> str:
    return f'The quote after {key}: is never closed; end it with another ".'


def prompt_given_twice() -> str:
    return 'The prompt is given twice: use prompt:"..." or plain text after the options, not both.'


def bad_count(text: str, max_images: int, model_id: str) -> str:
    return (
        f"count must be a whole number from 1 to {max_images} for {model_id}, not '{_echo(text)}'."
    )


def unsupported_resolution(resolution: str, model_id: str, supported: Sequence[str]) -> str:
    return f"{model_id} does not make {_echo(resolution)} images; it supports {_either(supported)}."


def unsupported_aspect(aspect: str, model_id: str, supported: Sequence[str]) -> str:
    return f"{model_id} does not make {_echo(aspect)} images; it supports {_either(supported)}."


def compare_model_count(count: int) -> str:
    return (
        f"/compare takes 2 to 4 different models, e.g. models:gemini-3-pro,gpt-image; "
        f"you gave {count}."
    )


def compare_repeated_model(model_id: str) -> str:
    return f"{_echo(model_id)} is named twice in models:; name each model once."


def prompt_too_long(length: int) -> str:
    return (
        f"The prompt is {length} characters long; the limit is {PROMPT_MAX_CHARS}. "
        "Shorten it and try again."
    )


def reference_images_not_accepted(model_id: str) -> str:
    return f"{model_id} does not accept reference images; choose another model or drop them."


def reference_not_an_image(filename: str) -> str:
    return (
        f"{_echo(filename)} is not a PNG, JPEG or WebP image; attach one of those as the reference."
    )


def reference_too_large(filename: str, size: int, limit: int) -> str:
    return (
        f"{_echo(filename)} is {size / 1_048_576:.1f} MB; reference images may be up to "
        f"{limit // 1_048_576} MB, so attach a smaller one."
    )


def reference_empty(filename: str) -> str:
    return f"{_echo(filename)} is empty (0 bytes); attach the image file itself."


def reference_too_many_pixels(filename: str, limit: int) -> str:
    return (
        f"{_echo(filename)} has more than {limit // 1_000_000} megapixels; "
        "scale it down and attach it again."
    )


def reference_type_mismatch(filename: str, actual: str, claimed: str) -> str:
    return (
        f"{_echo(filename)} holds a {actual} image, not the {claimed} its name or type says; "
        f"save it again as {claimed} (or name it as a {actual}) and attach it again."
    )


def reference_unreadable(filename: str) -> str:
    return f"Could not download {_echo(filename)} from the chat; attach it again and retry."


def too_many_reference_images(
    count: int, model_id: str, limit: int, subject: str | None = None
) -> str:
    if subject is not None:
        return (
            f"{model_id} accepts at most {limit} reference images, and subject"
            f" {_echo(subject)} brings this request to {count}; attach fewer or choose another model."
        )
    return f"{model_id} accepts at most {limit} reference images, not {count}."


def too_many_quotes(limit: int) -> str:
    return (
        f"You have started {limit} requests in the last minute, the most allowed; "
        "wait a minute, then run /imagine again."
    )


def account_references_full(pending: int, adding: int, limit: int) -> str:
    if not pending:
        return (
            f"These reference images come to {adding / 1_048_576:.1f} MB, more than the "
            f"{limit // 1_048_576} MB allowed at once; attach fewer or smaller ones."
        )
    return (
        f"Your requests not yet generated hold {pending / 1_048_576:.1f} MB of reference "
        f"images already, and {limit // 1_048_576} MB is the most allowed; generate or cancel "
        "one of them (or let it expire), then try again."
    )


def insufficient_credits(need: int, have: int) -> str:
    return (
        f"Insufficient credits: need {need}, you have {have}. "
        "Ask an admin for more, or choose fewer images or a cheaper model."
    )


def over_budget(provider: str, budget: Decimal) -> str:
    return (
        f"The bot's monthly budget for {provider} (${budget:,.2f}) is used up, so its models "
        "take no new requests until next month; try another model (/models lists them)."
    )


def over_budget_reason(provider: str, budget: Decimal) -> str:
    return f"the bot's monthly budget for {provider} (${budget:,.2f}) is used up for this month"


def circuit_open_reason(failures: int) -> str:
    return f"its provider failed its last {failures} requests"


def circuit_open(model_name: str, failures: int) -> str:
    return (
        f"{model_name} is unavailable right now: {circuit_open_reason(failures)}; try again in "
        "a few minutes, or another model (/models lists them)."
    )


def alternative_offered(model_name: str, reason: str, alternative: str, price: int) -> str:
    """The first line of a quote offered in place of a model that cannot be used now."""
    return f"{model_name} is unavailable right now: {reason} · Try {alternative} · {credits(price)}"


def alternative_refused(model_name: str, reason: str, alternative: str, refusal: str) -> str:
    """A model cannot be used now, and the one that could replace it cannot take the request."""
    return (
        f"{model_name} is unavailable right now: {reason}. "
        f"{alternative} could make it instead, but: {refusal}"
    )


def try_button(model_name: str, price: int) -> str:
    """The Generate button of an alternative, short enough for every platform's buttons."""
    price_part = f" · {credits(price)}"
    room = BUTTON_CHARACTERS - len("Try ") - len(price_part)
    return f"Try {_shorten(model_name, room)}{price_part}"


def try_question(model_name: str, price: int) -> str:
    return f"Try {model_name} for {credits(price)}?"


def budget_warning(provider: str, committed: Decimal, budget: Decimal) -> str:
    return (
        f"Budget alert: {provider} has ${committed:,.2f} of its ${budget:,.2f} monthly budget"
        " committed (80% or more); at 100% its models refuse new requests."
    )


def credits_owed(owed: int) -> str:
    return (
        f"You owe {owed} credits taken back after a payment was refunded or disputed, "
        "so you cannot generate until they are paid: your next purchase or grant pays them first."
    )


def owed_line(owed: int) -> str:
    return f"  owed: {credits(owed)}, paid first from the next credits that come in"


def already_handled(status: str) -> str:
    if status == "cancelled":
        return "This request was cancelled; run /imagine to start a new one."
    if status == "expired":
        return QUOTE_EXPIRED
    return "This request was already confirmed; it is generating or done."


def unknown_account(account: str) -> str:
    return f"{account} has never used the bot, so it has no balance or history."


def revoke_exceeds_balance(amount: int, available: int) -> str:
    return (
        f"Cannot revoke {amount} credits: only {available} are available "
        "(credits held for running generations cannot be revoked)."
    )


def registry_unusable(problems: Sequence[str]) -> str:
    return "The models file has problems:\n" + "\n".join(f"  - {p}" for p in problems)


def pricing_unusable(problems: Sequence[str]) -> str:
    return "The pricing file has problems:\n" + "\n".join(f"  - {p}" for p in problems)


def pricing_checked(loaded: Path | None, setting: Path) -> str:
    if loaded is None:
        return f"{setting}: no such file, so no allowance and no batch discounts."
    return f"{loaded}: no problems found."


def credits(amount: int) -> str:
    return f"{amount} credit" if amount == 1 else f"{amount} credits"


def images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def _either(values: Sequence[str]) -> str:
    values = list(values)
    if len(values) <= 1:
        return "".join(values)
    return ", ".join(values[:-1]) + f" or {values[-1]}"


# -- generation outcomes ------------------------------------------------------

INTERRUPTED_RELEASED = (
    "The bot stopped while this generation was running; the held credits were returned."
)
INTERRUPTED_AFTER_POSTING = (
    "The bot stopped just after posting the images; they were charged and the rest returned."
)

_FAILURES = {
    "blocked": "The provider's safety filter blocked this request{detail}",
    "rate_limited": "The provider is rate-limiting us right now; wait a minute and try again",
    "unavailable": "The provider is unavailable right now{detail}; try again in a few minutes",
    "bad_request": "The provider rejected the request{detail}",
    "no_image": "The model answered without an image{detail}; try describing the picture you want more plainly",
    "timeout": "The provider took too long to answer; try again, perhaps with fewer images",
    "not_configured": "This model's provider is not configured{detail}",
    "delivery_failed": "The images were made but could not be posted here{detail}",
    "interrupted": "The bot stopped while this was generating",
    "shutting_down": "The bot began stopping as this was confirmed, so it never started",
    "references_lost": "This request's reference images could not be read back; run /imagine again with them",
    "queued_too_long": "So many images are being made right now that this one could not start in time to reach you; try again in a few minutes",
}


SOMETHING_WENT_WRONG = (
    "Something went wrong on our side and nothing was charged; please try again in a minute."
)
"""For a command or click that failed unexpectedly (a bug, the database unreachable)."""


def failure(code: str, detail: str = "", *, returned_later: bool = False) -> str:
    """One sentence for a generation that delivered nothing; always says nothing was charged.

    ``returned_later``: the database could not be reached to release the hold
    now; the sweep returns it.
    """
    template = _FAILURES.get(code, "Something went wrong while generating{detail}")
    shown = f" ({detail.rstrip('.')})" if detail and detail != code else ""
    if returned_later:
        return (
            template.format(detail=shown)
            + "; no credits were charged, and the held credits will be returned"
            " automatically once the bot's database is reachable again."
        )
    return template.format(detail=shown) + "; no credits were charged."


def upload_refused(platform: str, code: object) -> str:
    """Why images could not be posted: the platform said no (``code``: its status or error)."""
    return f"{platform} refused the upload ({code})"


def upload_lost(platform: str) -> str:
    """Why images could not be posted: the platform's answer was lost, and it does not show them."""
    return f"the connection to {platform} failed during the upload"


CAPTURE_DELAYED = (
    "The images are posted, but the bot's database could not be reached to record"
    " their cost; it will be settled automatically, at no more than the price you were shown."
)


def settled_before_capture(posted: int, settled: Generation) -> str:
    """The images were posted after the bot had already settled the request as interrupted.

    Says what the user got and what it actually cost, which the settlement decided.
    """
    return (
        f"{images(posted).capitalize()} posted, but this request had already been settled"
        f" as interrupted while the bot was not answering for it:"
        f" charged {credits(settled.credits_charged)}."
    )


def outcome(
    generation: Generation, shortfall: str = "", auto_confirmed_under: int | None = None
) -> str:
    """What a captured generation delivered and cost; ``shortfall`` is the code of why
    any images are missing: a provider's (``ProviderError.code``), or one of posting them.
    ``auto_confirmed_under``: the account's limit, when no button was asked."""
    delivered, requested = generation.images_delivered, generation.images_requested
    charged = credits(generation.credits_charged)
    if delivered == requested:
        # No button told them the price: this sentence must.
        unasked = (
            ""
            if auto_confirmed_under is None
            else f" (auto-confirmed under {auto_confirmed_under})"
        )
        return f"Done: {images(delivered)} for {charged}{unasked}."
    if shortfall in _NOT_POSTED:
        done, why = "posted here", _NOT_POSTED[shortfall]
    else:
        done, why = (
            "made",
            _PARTIAL_REASONS.get(shortfall, "the provider could not make the others"),
        )
    return (
        f"Only {delivered} of {requested} images could be {done} ({why}); "
        f"you were charged {charged} for {'it' if delivered == 1 else 'those'} "
        "and the rest was returned."
    )


_NOT_POSTED = {
    "delivery_failed": "the upload failed part-way",
    "interrupted": "the bot stopped while posting them",
}


_PARTIAL_REASONS = {
    "blocked": "the provider's safety filter blocked the others",
    "rate_limited": "the provider rate-limited the others",
    "timeout": "the others took too long",
    "unavailable": "the provider failed on the others",
    "no_image": "the model answered the others without an image",
}


def progress(event: ProgressEvent) -> str:
    if isinstance(event, Queued):
        return f"Queued: {event.position} ahead of you…"
    if isinstance(event, Generating):
        if event.finished == 0:
            return f"Generating {images(event.total)} with {event.model_name}…"
        return f"Generating with {event.model_name}: {event.finished} of {event.total} done…"
    if isinstance(event, Delivering):
        return f"Posting {images(event.count)}…"
    raise TypeError(event)


# -- quotes, balances, history ------------------------------------------------


def generate_button(count: int, price: int) -> str:
    return f"Generate {images(count)} · {credits(price)}"


def compare_button(models: int, price: int) -> str:
    return f"Compare {models} models · {credits(price)}"


def compare_summary(
    prices: Sequence[tuple[str, Price]],
    resolution: str,
    aspect_ratio: str,
    total: int,
    available: int,
) -> str:
    """Each model's price on a line of its own, then the total held by the one button."""
    lines = [f"Compare · {images(1)} per model · {resolution} · {aspect_ratio}"]
    lines += [f"  {name}: {price_breakdown(price)}" for name, price in prices]
    lines.append(f"Total: {credits(total)} · your balance: {credits(available)}")
    return "\n".join(lines)


COMPARE_GRID_NAME = "Compare"
"""The name the compare grid is posted under: it is no single model's image."""


def compare_cell(model_name: str, price: int, seconds: float) -> str:
    return f"{model_name} · {credits(price)} · {seconds:.1f} s"


def compare_cell_failed(model_name: str) -> str:
    return f"{model_name} · failed, no charge"


def compare_report(
    sentences: Sequence[tuple[str, str]], charged: int, balance: Balance | None
) -> str:
    """Each model's outcome sentence, then what the compare cost in all."""
    lines = [f"{name}: {sentence}" for name, sentence in sentences]
    lines.append(f"Compare done: {credits(charged)} in all.")
    return outcome_report("\n".join(lines), balance)


GENERATE_BUTTON = "Generate"
"""A Generate button with no price on it: an expired quote's, disabled."""
CANCEL_BUTTON = "Cancel"


def quote_summary(
    model_name: str, count: int, resolution: str, aspect_ratio: str, price: Price, available: int
) -> str:
    summary = (
        f"{model_name} · {images(count)} · {resolution} · {aspect_ratio}\n"
        f"Price: {price_breakdown(price)} · your balance: {credits(available)}"
    )
    if price.override is None:
        return summary
    return f"{summary}\n{your_price(price, price.override)}"


def estimate_summary(summary: str) -> str:
    return (
        f"{summary}\nAn estimate: nothing is held. "
        "Leave out the word price to get the Generate button."
    )


def discord_count_choice(count: int, price: int, available: int) -> str:
    """A count offered while /imagine is typed, with what it costs: under 100 characters."""
    return f"{images(count)} · {credits(price)} · you have {available}"


def discord_resolution_choice(resolution: str, count: int, price: int, available: int) -> str:
    return f"{resolution} · {discord_count_choice(count, price, available)}"


def price_breakdown(price: Price) -> str:
    """The price, and when a rule made it other than the list price, the arithmetic:
    "4 × 10 = 40 · batch −10% → 36 credits"."""
    if not price.rules:
        return credits(price.total)
    product = f"{price.count} × {_number(price.per_image)} = {_number(price.subtotal)}"
    if not price.batch_percent and price.subtotal == price.total:
        return f"{price.count} × {_number(price.per_image)} = {credits(price.total)}"
    batch = f" · batch −{price.batch_percent}%" if price.batch_percent else ""
    least = " (the least a request costs)" if price.at_minimum else ""
    return f"{product}{batch} → {credits(price.total)}{least}"


def your_price(price: Price, override: PriceOverride) -> str:
    """The account's own price, beside the list price it replaces."""
    terms = [f"{override.percent_off}% off"] if override.percent_off is not None else []
    if override.until is not None:
        terms.append(f"until {moment(override.until)}")
    detail = f" ({', '.join(terms)})" if terms else ""
    return f"Your price {_number(price.per_image)} per image, list {price.list_per_image}{detail}."


def moment(when: datetime) -> str:
    """A time as every sentence shows it: to the minute, in UTC, saying so."""
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _number(value: Fraction) -> str:
    """A price in credits: whole, or with the hundredths a percent off leaves."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.2f}".rstrip("0")


def balance_line(available: int, held: int) -> str:
    line = f"Balance: {credits(available)} available"
    return line + (f", {held} held for running generations." if held else ".")


def outcome_report(sentence: str, balance: Balance | None) -> str:
    """A generation's outcome and the balance after it, when the balance could be read."""
    if balance is None:
        return sentence
    return f"{sentence}\n{balance_line(balance.available, balance.held)}"


def history_line(generation: Generation) -> str:
    when = generation.created_at.strftime("%Y-%m-%d %H:%M")
    status = str(generation.status)
    if generation.error_code:
        status += f" ({generation.error_code.replace('_', ' ')})"
    return (
        f"{when}  {generation.model_id}  {generation.images_delivered}/{generation.images_requested} "
        f"images  {credits(generation.credits_charged)}  {status}  “{_shorten(generation.prompt, 50)}”"
    )


NO_STATEMENT = "No entries yet: nothing has been granted to or spent by this account."


def statement_attached(changes: int, available: int) -> str:
    """The line beside a statement sent as a file."""
    noun = "change" if changes == 1 else "changes"
    return (
        f"Your statement: {changes} {noun} to your credits, each with the balance after it;"
        f" {credits(available)} available now."
    )


NO_HISTORY = "No generations yet; try /imagine a lighthouse at dusk"

HISTORY_LENGTH = 10
"""How many generations ``/history`` lists, each with its Again button."""


def history_entries(
    recent: Sequence[Generation], link: Callable[[str], str] = lambda url: url
) -> str:
    """``/history``: the newest generations numbered as their Again buttons are, each with
    where its images were posted, written by ``link`` as the platform shows a link."""
    if not recent:
        return NO_HISTORY
    lines = [f"Your last {len(recent)} generations (Again makes a new quote):"]
    for number, generation in enumerate(recent, start=1):
        where = "" if generation.posted_link is None else f"  {link(generation.posted_link)}"
        lines.append(f"{number}. {history_line(generation)}{where}")
    return "\n".join(lines)


def again_button(number: int) -> str:
    return f"Again {number}"


AGAIN_NEEDS_REFERENCES = (
    "That generation used reference images, which are not kept after it ends; "
    "run /imagine again with them attached."
)
AGAIN_NOT_FOUND = "That generation is no longer on record, so it cannot be repeated."

# The buttons under a posted result (Discord): each click that costs credits is a new quote.
RESULT_AGAIN_BUTTON = "Again"
RESULT_VARY_BUTTON = "Vary"
RESULT_EDIT_BUTTON = "Edit"
RESULT_DELETE_BUTTON = "Delete"
VARY_UNSUPPORTED = "That model takes no reference image, so its results cannot be varied."
VARY_NO_IMAGE = "That message holds no image to vary any more."
EDIT_FORM_TITLE = "Edit the prompt"
EDIT_FORM_PROMPT = "Prompt"
EDIT_FORM_SUBMIT = "Get a quote"
RESULT_BUTTONS = "More with these images:"
VARY_UNREADABLE = "The posted image could not be fetched from Slack, so it cannot be varied."
DELETE_NOT_YOURS = "Only the person who asked for these images, or an admin, can delete them."
DELETE_NOT_FOUND = "That generation is no longer on record, so its message cannot be deleted here."
DELETE_GONE = "That message is already gone."
DELETED = "Deleted. Deleting does not refund the credits it cost."

AUTO_CONFIRM_MAX = 1_000_000
AUTO_CONFIRM_USAGE = (
    "Usage: /settings auto_confirm_under:<credits>: requests costing at most that many credits "
    f"generate without asking (0 to {AUTO_CONFIRM_MAX:,}; 0 always asks)."
)


DISCORD_AUTO_CONFIRM_DESCRIPTION = "Generate without asking at or under this many credits (0: ask)"


def bad_auto_confirm(value: str) -> str:
    return (
        f"“{_shorten(value, 20)}” is not a number of credits from 0 to {AUTO_CONFIRM_MAX:,}; "
        "your settings were not changed."
    )


def auto_confirm_setting(under: int) -> str:
    if under == 0:
        return "Auto-confirm is off: every request asks before it generates."
    return (
        f"Auto-confirm: requests costing at most {credits(under)} generate without asking; "
        "the result says what each cost."
    )


def allowance_renewal(amount: int, period: str, renews: datetime) -> str:
    return (
        f"Free credits: {credits(amount)} a {period}, renewed {moment(renews)} "
        "(unused ones do not carry over)."
    )


def credits_statement(
    balance: Balance, recent: Sequence[Generation], allowance_renewal: str | None = None
) -> str:
    """The balance and its lots, the free allowance's renewal if there is one, recent history."""
    history = "\n".join(map(history_line, recent)) or NO_HISTORY
    balance_lines = balance_with_lots(balance.available, balance.held, balance.lots)
    owing = credits_owed(balance.owed) if balance.owed else None
    return "\n".join(filter(None, [balance_lines, owing, allowance_renewal, history]))


def granted(account: str, amount: int, available: int, expires_at: datetime | None = None) -> str:
    expiring = "" if expires_at is None else f", expiring {moment(expires_at)}"
    return (
        f"Granted {credits(amount)} to {account}{expiring}; "
        f"their balance is now {credits(available)}."
    )


EXPIRY_ON_REVOKE = "Only granted credits can expire; a revoke takes no expiry. Nothing was changed."


def revoked(account: str, amount: int, available: int) -> str:
    return f"Revoked {credits(amount)} from {account}; their balance is now {credits(available)}."


def already_granted(account: str, amount: int, available: int) -> str:
    return (
        f"Already granted {credits(amount)} to {account} with this key, so nothing changed;"
        f" their balance is {credits(available)}."
    )


def already_revoked(account: str, amount: int, available: int) -> str:
    return (
        f"Already revoked {credits(amount)} from {account} with this key, so nothing changed;"
        f" their balance is {credits(available)}."
    )


# -- price overrides ----------------------------------------------------------

# Said by every surface (the CLI's options, chat's words), so they name none of their syntax.
PRICE_ONE_RULE = (
    "Give either a model and its credits per image, or a percent off every model, not both;"
    " nothing was changed."
)
PRICE_REASON_NEEDED = "Give a reason for the price, to be recorded with it; nothing was changed."
CONSOLE_PRICE_USAGE = (
    "Usage: /price set <account> <model> <credits> [until:<date>] <reason>, /price set <account>"
    " <N>% [until:<date>] <reason>, /price list [<account>] or /price clear <account> [<model>]."
)


def bad_percent(text: str) -> str:
    return f"'{_echo(text)}' is not a percent; give a whole number from 1 to 100."


def bad_date(text: str) -> str:
    return (
        f"'{_echo(text)}' is not a date; give an ISO 8601 date or time such as 2026-12-31"
        " or 2026-12-31T18:00+01:00 (UTC unless an offset is given)."
    )


def bad_duration(text: str) -> str:
    return (
        f"'{_echo(text)}' is not a duration; give a whole number and a unit, such as 90s, "
        "30m, 12h or 7d, of at most ten years."
    )


def bad_expiry(text: str) -> str:
    return (
        f"'{_echo(text)}' is not when credits can expire; give a duration such as 12h or 7d,"
        " or a date or time such as 2027-01-01 or 2027-01-01T18:00 (UTC unless an offset is"
        " given). Nothing was changed."
    )


def lot_line(lot: Lot) -> str:
    """One lot of a balance: what is left of it, of what kind, and until when."""
    held = f", {lot.held} held" if lot.held else ""
    ends = "never expires" if lot.expires_at is None else f"expires {moment(lot.expires_at)}"
    return f"  {credits(lot.available)} {lot.kind}{held} · {ends}"


def balance_with_lots(available: int, held: int, lots: Sequence[Lot]) -> str:
    """The balance, then its lots when there is more than one or one expires."""
    line = balance_line(available, held)
    if len(lots) <= 1 and all(lot.expires_at is None for lot in lots):
        return line
    return "\n".join([line, *map(lot_line, lots)])


def date_in_the_past(when: datetime) -> str:
    return f"{moment(when)} has already passed; give a date still to come. Nothing was changed."


def _until(until: datetime | None) -> str:
    return "" if until is None else f" until {moment(until)}"


def model_price_set(account: str, model_id: str, price: int, until: datetime | None) -> str:
    return (
        f"{account} now pays {credits(price)} per image of {model_id}{_until(until)},"
        " in place of the list price and any earlier price for that model."
    )


def percent_off_set(account: str, percent: int, until: datetime | None) -> str:
    return (
        f"{account} now gets {percent}% off every model{_until(until)}, in place of any earlier"
        " percent off (a model with its own price for them keeps that price)."
    )


def no_price_overrides(account: str | None) -> str:
    if account is None:
        return "No account has a price of its own; everyone pays list prices."
    return f"{account} has no price of its own; they pay list prices."


def price_override_line(
    override: PriceOverride, in_force: bool, *, name: Callable[[str], str] = str
) -> str:
    """One override; ``name`` shows its account and who set it (a platform's mention)."""
    if override.credits_per_image is not None:
        rule = f"{override.model_id}: {credits(override.credits_per_image)} per image"
    else:
        rule = f"every model: {override.percent_off}% off"
    state = "" if in_force else " (expired, ignored)"
    return (
        f"{name(override.account_id)}  {rule}{_until(override.until)}{state}"
        f"  set by {name(override.actor)} on {moment(override.created_at)}: {override.reason}"
    )


def price_overrides_cleared(account: str, model_id: str | None, cleared: int) -> str:
    scope = f" for {model_id}" if model_id is not None else ""
    if not cleared:
        return f"{account} had no price of its own{scope}; nothing was changed."
    rules = "price override" if cleared == 1 else "price overrides"
    return f"Cleared {cleared} {rules} of {account}{scope}; they pay list prices there now."


IDEMPOTENCY_KEY_REUSED = (
    "That idempotency key was already used for a different grant or revoke (another account,"
    " amount or action), so this one was not made; use a new key for a new change."
)


def delivered_caption(account: str, prompt: str, model_name: str, charged: int) -> str:
    return f"{account} asked for “{_shorten(prompt, 300)}” · {model_name} · {credits(charged)}"


_DISCORD_MARKUP = re.compile(r"([\\`*_~|>#\[\]()<@:-])")


def discord_inert(text: str) -> str:
    """``text`` as Discord shows it to the letter, on one line: no masked link, heading,
    mention, emoji, list or formatting can be made of it."""
    return _DISCORD_MARKUP.sub(r"\\\1", " ".join(text.split()))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- help and listings --------------------------------------------------------


def help_text(*, is_admin: bool, default_model: str | None) -> str:
    default = f" (default {default_model})" if default_model else ""
    lines = [
        "Commands:",
        "  /imagine <prompt> [model:<id>] [count:<n>] [resolution:<1K|2K|4K>] [aspect:<w:h>]",
        f"      make images{default}; you see the price and confirm before anything is charged",
        '      e.g. /imagine model:local-sketch count:2 aspect:16:9 "a lighthouse at dusk"',
        "  /imagine price <prompt> [options]   the price alone; nothing is held",
        "  /compare models:<id>,<id>[,<id>,<id>] [resolution:…] [aspect:…] [subject:<name>] <prompt>",
        "      one image from each of 2-4 models, one confirm for the total, posted as a"
        " labelled grid plus the originals; a model that fails charges nothing",
        "  /imagine <prompt> subject:<name>     add a saved subject's images as references",
        "  /subject save <name> <image file>... save 1-6 images of a person as a subject",
        "  /subject list | delete <name>        your subjects (only you can see or use them)",
        "  /credits          your balance and recent generations",
        "  /statement        every change to your credits, with the balance after each",
        "  /history          your last 10 generations, with where their images were saved",
        "  /settings auto_confirm_under:<credits>   generate without asking at or under"
        " that price (0: always ask)",
        "  /buy              credit packs, each with a payment link",
        "  /models           the models, their prices (and yours) and what they support",
        "  /help             this help",
    ]
    if is_admin:
        lines += [
            "Admin:",
            "  /grant <account> <amount> [expires:<when>] [reason]",
            "      add credits, expiring after a duration or on a date if you like, e.g."
            " /grant discord:1234 50 expires:7d welcome",
            "  /revoke <account> <amount> [reason]   take available credits back",
            "  /price set <account> <model> <credits> [until:<date>] <reason>",
            "      the account's own price per image of a model, e.g."
            " /price set discord:1234 gemini-3-pro 8 loyal customer",
            "  /price set <account> <N>% [until:<date>] <reason>",
            "      N% (1-100) off every model's list price, e.g."
            " /price set discord:1234 20% until:2027-01-01 beta tester",
            "  /price list [<account>]                the accounts' own prices",
            "  /price clear <account> [<model>]       back to list prices",
            "  /stats [model:<id>]",
            "      the last 30 days: generations, credits, provider cost, revenue, margin and"
            " failures, with a chart of the credits spent each day by model saved as a PNG",
        ]
    return "\n".join(lines)


def admin_usage(command: str) -> str:
    if command == "grant":
        return (
            "Usage: /grant <account> <amount> [expires:<7d|2027-01-01>] [reason],"
            " e.g. /grant discord:1234 50 expires:30d contest prize"
        )
    return f"Usage: /{command} <account> <amount> [reason], e.g. /{command} discord:1234 50 refund"


def models_table(
    rows: Sequence[tuple[ModelSpec, str | None]],
    own_prices: Mapping[str, Mapping[str, Fraction]] | None = None,
) -> str:
    """One line per model: id, name, provider, price, resolutions, aspect ratios, availability.

    ``own_prices``: per model id and resolution, the reader's own price per image
    where it differs from the list price, shown beside it.
    """
    header = ("model", "name", "provider", "credits", "resolutions", "aspect ratios", "status")
    table = [header]
    for model, unavailable in rows:
        price = _per_resolution({r: Fraction(model.credits_for(r)) for r in model.resolutions})
        own = (own_prices or {}).get(model.id)
        if own:
            yours = {r: own.get(r, Fraction(model.credits_for(r))) for r in model.resolutions}
            price = f"{price} (your price {_per_resolution(yours)})"
        table.append(
            (
                model.id,
                model.display_name,
                model.provider,
                price,
                ",".join(model.resolutions),
                ",".join(model.aspect_ratios),
                "available" if unavailable is None else f"unavailable: {unavailable}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in table
    )


def _per_resolution(prices: Mapping[str, Fraction]) -> str:
    """One price if every resolution costs the same, else each: "1@1K 2@2K"."""
    if len(set(prices.values())) == 1:
        return _number(next(iter(prices.values())))
    return " ".join(f"{_number(price)}@{resolution}" for resolution, price in prices.items())


def console_greeting(account: str, is_admin: bool, available: int) -> str:
    role = " (admin)" if is_admin else ""
    return (
        f"Imagine console · chatting as {account}{role} · {credits(available)} available.\n"
        "Type /help for commands, /quit to leave."
    )


NOT_A_COMMAND = "Commands start with a slash; to draw that, type /imagine followed by your prompt."


def unknown_command(command: str) -> str:
    return f"There is no /{_echo(command)} command; /help lists them."


def saved_to(path: str) -> str:
    return f"  saved {path}"


def system_error(error: OSError) -> str:
    return f"Stopped: {error}."


NO_CHAT_PLATFORM = (
    "No chat platform is configured and there is no terminal to chat in: set DISCORD_TOKEN"
    " or SLACK_BOT_TOKEN (see README), or run `imagine-bot console` to chat from a pipe."
)


def backed_up(source: str, target: str) -> str:
    return (
        f"Backed up {source} to {target}; to restore it, follow"
        " “Backing up and restoring” in docs/ledger.md."
    )


def backup_exists(target: str) -> str:
    return f"{target} already exists; back up to a new path so no earlier backup is overwritten."


def backup_with_pg_dump(target: str) -> str:
    return (
        "On PostgreSQL, back up with pg_dump instead, which copies a running database"
        f" consistently: pg_dump -Fc -d <database> -f {target} (docs/ledger.md says how to restore)."
    )


def nothing_to_back_up(shown_url: str) -> str:
    return f"There is no database file at {shown_url} to back up; check DATABASE_URL."


def database_outdated(shown_url: str, revision: str) -> str:
    return (
        f"The database at {shown_url} is from an older version of the bot (revision {revision});"
        " upgrade it with `imagine-bot db upgrade` (starting the bot does it too), then try again."
    )


def database_too_new(shown_url: str, revision: str) -> str:
    return (
        f"The database at {shown_url} was written by a newer version of the bot"
        f" (revision {revision}, unknown to this one); run that version instead."
    )


def database_unreachable(url: str, error: BaseException) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"Cannot use the database at {url}: {first_line}. "
        "Check DATABASE_URL and that the database server is running."
    )


# -- report -------------------------------------------------------------------


def report(tables: Mapping[str, Sequence[Mapping[str, object]]], output: str) -> str:
    """``imagine-bot report`` as aligned text, CSV (one block per table) or JSON."""
    if output == "json":
        return json.dumps(tables, indent=2) + "\n"
    if output == "csv":
        blocks = []
        for name, rows in tables.items():
            buffer = io.StringIO()
            columns = ["table", *(rows[0] if rows else [])]
            writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows({"table": name, **row} for row in rows)
            blocks.append(buffer.getvalue())
        return "\n".join(blocks)
    sections = []
    for name, rows in tables.items():
        title = name.replace("_", " ").capitalize()
        if not rows:
            sections.append(f"{title}: nothing yet\n")
            continue
        columns = list(rows[0])
        cells = [columns, *([str(row[column]) for column in columns] for row in rows)]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            for line in cells
        ]
        sections.append(f"{title}\n" + "\n".join(lines) + "\n")
    return "\n".join(sections)


# -- statistics -------------------------------------------------------------------

STATS_NOT_ADMIN = "Only bot admins can see the bot's statistics (ADMIN_ACCOUNTS lists them)."
STATS_USAGE = "Usage: /stats [model:<id>], e.g. /stats model:gemini-3-pro for one model."
STATS_CHART_AXIS = "credits"
SLACK_STATS_CHART_SENT = "The chart is in your direct messages with me."


def no_stats(days: int, model_id: str | None) -> str:
    if model_id is None:
        return (
            f"No generation was settled in the last {days} days, so there is nothing to chart yet."
        )
    return (
        f"No generation with {model_id} was settled in the last {days} days,"
        " so there is nothing to chart yet."
    )


def _dollars(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.01'))} USD"


def stats_headline(
    days: int,
    first: date,
    last: date,
    model_id: str | None,
    headline: Headline,
    credit_value_usd: Decimal,
) -> str:
    """The figures beside a /stats chart."""
    generations = "generation" if headline.generations == 1 else "generations"
    return "\n".join(
        [
            f"Last {days} days ({first:%Y-%m-%d} to {last:%Y-%m-%d}, UTC),"
            f" {'all models' if model_id is None else model_id}:",
            f"{headline.generations} {generations} · {images(headline.images)}"
            f" · {credits(headline.credits)} spent",
            f"Provider cost {_dollars(headline.provider_cost_usd)}"
            f" · revenue {_dollars(headline.revenue_usd)}"
            f" (credits at {credit_value_usd.normalize():f} USD)"
            f" · margin {_dollars(headline.margin_usd)}",
            f"Failed: {headline.failed} of {headline.generations}"
            f" ({headline.failure_rate:.1%}) delivered no image.",
        ]
    )


def stats_chart_title(model_id: str | None, first: date, last: date) -> str:
    scope = "by model" if model_id is None else f"with {model_id}"
    return f"Credits spent per day {scope}, {first:%Y-%m-%d} to {last:%Y-%m-%d} (UTC)"


def stats_chart_not_sent(why: str) -> str:
    return f"The chart could not be sent to you ({why}); the figures above are complete."


def chart_not_saved(folder: str, why: str) -> str:
    return f"The chart could not be saved in {folder} ({why}); the figures above are complete."


# -- Discord --------------------------------------------------------------------
# Sentences only the Discord adapter shows.

DISCORD_QUOTE_EXPIRED_BUTTONS = "This quote expired; nothing was charged. Run /imagine again."
DISCORD_STARTING = "Starting…"
DISCORD_COMPARE_MODELS_DESCRIPTION = (
    "2 to 4 model ids, separated by commas, e.g. gemini-3-pro,gpt-image"
)
DISCORD_GRANT_USAGE = (
    "Pick a user and an amount: /credits action:grant user:@someone amount:50"
    " [expires:7d] reason:contest prize"
)
DISCORD_EXPIRES_DESCRIPTION = (
    "When the granted credits expire: 7d, 12h or a date such as 2027-01-01"
)
DISCORD_REVOKE_USAGE = (
    "Pick a user and an amount: /credits action:revoke user:@someone amount:50 reason:refund"
)
DISCORD_PRICE_USAGE = (
    "Pick a user, then a model and its credits or a percent off, and a reason:"
    " /price action:set user:@someone model:gemini-3-pro credits:8 reason:loyal customer"
)
DISCORD_CLEAR_USAGE = "Pick whose price to clear: /price action:clear user:@someone [model]"
DISCORD_MODEL_DESCRIPTION = "Which model draws it (default: the first one listed)"
DISCORD_RESOLUTION_DESCRIPTION = "Image size; the choices follow the model you picked"
DISCORD_ASPECT_DESCRIPTION = "Width:height; the choices follow the model you picked"
DISCORD_REFERENCE_DESCRIPTION = "An image for the model to work from (PNG, JPEG or WebP)"
DISCORD_STATS_MODEL_DESCRIPTION = "One model's figures alone (default: every model)"


def discord_model_choice(model_name: str, price: int) -> str:
    # Not shortened: the registry refuses a name that makes this too long, so the price always shows.
    return f"{model_name} · {credits(price)}/image"


def discord_help(*, is_admin: bool, default_model: str | None, max_images: int) -> str:
    default = f" (default **{default_model}**)" if default_model else ""
    lines = [
        "**/imagine** `prompt` `[model]` `[count]` `[resolution]` `[aspect]` `[reference]`"
        " `[subject]`",
        f"Make up to {images(max_images)}{default}. You see the price and press "
        "**Generate** before anything is charged; the images are posted in the channel. "
        "The `count` and `resolution` choices show what each costs you.",
        "Under posted images: **Again** (a new quote of the same request, for you), **Vary** "
        "(the image as a reference, for models that take one), **Edit** (change the prompt, "
        "then a new quote), **Delete** (the requester or an admin; no refund).",
        "**/credits**: your balance and recent generations.",
        "**/history**: your last 10 generations, with links to their images and Again buttons"
        " (a new quote of the same request).",
        "**/settings** `auto_confirm_under`: generate without the button at or under that many"
        " credits (0 always asks); the result says what it cost.",
        "**/statement**: every change to your credits, with the balance after each,"
        " as a CSV file only you see.",
        "**/buy**: credit packs; paid credits never expire.",
        "**/models**: the models, their prices (and yours, where it differs) and what they "
        "support.",
        "**/subject** `action:save|list|delete` `[name]` `[image1…image6]`: save 1 to 6 images "
        "of a person under a name, then add them to **/imagine** with `subject`; only you "
        "can see or use your subjects.",
    ]
    if is_admin:
        lines.append(
            "**/credits** `action:grant|revoke` `user` `amount` `[expires]` `[reason]`: "
            "add credits, expiring after a duration or on a date if you like, or take them "
            "back (bot admins only)."
        )
        lines.append(
            "**/price** `action:set|list|clear` `user` `[model]` `[credits]` `[percent_off]` "
            "`[until]` `[reason]`: give someone their own price per image of a model, or a "
            "percent off every model, until a date if you like; list or clear them "
            "(bot admins only)."
        )
        lines.append(
            "**/stats** `[model]`: the last 30 days' generations, credits, provider cost, "
            "revenue, margin and failures, with a chart of the credits spent each day by "
            "model, only you see (bot admins only)."
        )
    return "\n".join(lines)


def discord_account_name(user_id: int) -> str:
    return f"<@{user_id}>"


# -- Slack ----------------------------------------------------------------------
# Sentences only the Slack adapter shows.

SLACK_NO_SIGNING_SECRET = (
    "SLACK_SIGNING_SECRET is not set: copy the Signing Secret from the app's Basic Information "
    "page, or set SLACK_APP_TOKEN to use Socket Mode instead."
)
INCOMPLETE_REQUEST = (
    "Slack sent this without saying who you are or which workspace you are in; "
    "run the command again."
)
SLACK_STARTING = "Starting…"
SLACK_PREPARING = "Working on it…"
SLACK_INVITE_ME = (
    "I am not in this channel, so I cannot post the images here; invite me with "
    "/invite @Imagine and try again"
)


def slack_help(*, is_admin: bool, default_model: str | None, models_table: str) -> str:
    default = f" (default `{default_model}`)" if default_model else ""
    lines = [
        "*/imagine* `[model:<id>] [count:<n>] [resolution:<1K|2K|4K>] [aspect:<w:h>]"
        " [subject:<name>] <prompt>`",
        f"Make images{default}. You see the price and press *Generate* before anything is "
        "charged; the images are posted in the channel.",
        "Example: `/imagine model:local-sketch count:2 aspect:16:9 a lighthouse at dusk`",
        "*/imagine price* `[options] <prompt>`: the price alone, with no button; nothing is held.",
        "*/compare* `models:<id>,<id>[,<id>,<id>] [resolution:…] [aspect:…] <prompt>`: one image "
        "from each of 2-4 models for one total, posted as a labelled grid plus the originals; "
        "a model that fails charges nothing.",
        "*/credits*: your balance and recent generations; "
        "*/credits statement*: your last 30 changes, with the balance after each.",
        "*/buy*: credit packs, each with a payment link only you see; paid credits never expire.",
        "*/history*: your last 10 generations, each with a link to its images and an *Again*"
        " button that makes a new quote of it for whoever presses it.",
        "*/settings* `auto_confirm_under:<credits>`: requests at or under that price generate"
        " without the *Generate* button, and the result says what it cost; 0 always asks.",
        "*/subject list* and *delete <name>*: your subjects, sets of a person's images added to"
        " /imagine with `subject:<name>`; save one with /subject on Discord or the console.",
    ]
    if is_admin:
        lines.append(
            "*/credits grant @someone 50 [expires:7d] reason* and *revoke*: change someone's "
            "credits; granted ones expire after a duration or on a date if you like "
            "(bot admins only)."
        )
        lines.append(
            "*/credits price set @someone <model> <credits> [until:<date>] <reason>*, "
            "*/credits price set @someone <N>% [until:<date>] <reason>*, "
            "*/credits price list [@someone]* and *clear @someone [<model>]*: someone's own "
            "prices (bot admins only)."
        )
        lines.append(
            "*/stats [model:<id>]*: the last 30 days' generations, credits, provider cost, "
            "revenue, margin and failures, only you see, with a chart of the credits spent "
            "each day by model in your direct messages with me (bot admins only)."
        )
    lines.append(f"```{models_table}```")
    return "\n".join(lines)


def discord_sync_refused(scope: str, detail: str) -> str:
    return (
        f"Discord refused the slash commands for {scope} ({detail}); check that the bot is "
        "still in that server and was invited with the applications.commands scope."
    )


def slack_credits_usage(typed: str) -> str:
    return (
        f"/credits does not know “{_echo(typed)}”. Use /credits for your balance and recent "
        "images, /credits statement for your last changes; admins: /credits grant @someone <amount>"
        " [expires:<when>] [reason], or revoke, and /credits price set, list or clear."
    )


def slack_admin_usage(action: str) -> str:
    if action == "grant":
        return (
            "Usage: /credits grant @someone <amount> [expires:<7d|2027-01-01>] [reason],"
            " e.g. /credits grant @ana 50 expires:30d contest prize"
        )
    return f"Usage: /credits {action} @someone <amount> [reason], e.g. /credits {action} @ana 50 refund"


SLACK_PRICE_USAGE = (
    "Usage: /credits price set @someone <model> <credits> [until:<date>] <reason>, /credits price"
    " set @someone <N>% [until:<date>] <reason>, /credits price list [@someone] or /credits price"
    " clear @someone [<model>]."
)


# -- buying credits ---------------------------------------------------------------

STRIPE_NOT_SET_UP = (
    "Buying credits is not set up here: the operator needs STRIPE_API_KEY, "
    "STRIPE_WEBHOOK_SECRET and PUBLIC_URL. Ask an admin for credits meanwhile."
)
NO_PACKS = "No credit packs are for sale here. Ask an admin for credits."
NO_PACKS_ON_DISCORD = "No credit packs are for sale on Discord yet. Ask an admin for credits."


def unknown_pack(typed: str, packs: Sequence[str]) -> str:
    listed = ", ".join(packs) if packs else "none"
    return f"There is no pack called {_echo(typed)}. The packs are: {listed}."


def pack_product_name(pack_id: str, credits_in_pack: int) -> str:
    """What Stripe's checkout page calls the pack."""
    return f"{credits(credits_in_pack)} ({pack_id} pack)"


def pack_line(pack_id: str, credits_in_pack: int, price: str) -> str:
    return f"{pack_id}: {credits(credits_in_pack)} for {price}"


def checkout_line(pack_id: str, credits_in_pack: int, price: str, url: str) -> str:
    return f"{pack_line(pack_id, credits_in_pack, price)} · pay here: {url}"


def buy_links(lines: Sequence[str], minutes: int) -> str:
    return "\n".join(
        [
            "Credit packs (paid credits never expire):",
            *lines,
            f"Each link is yours alone and works for {minutes} minutes; "
            "your credits arrive here once the payment goes through.",
        ]
    )


def discord_buy(lines: Sequence[str]) -> str:
    return "\n".join(
        [
            "Credit packs (paid credits never expire). Buy one with its button;"
            " your credits arrive once Discord confirms the payment:",
            *lines,
        ]
    )


def _owing(owed: int) -> str:
    return f" You still owe {credits(owed)}." if owed else ""


def purchase_paid(pack_id: str, credits_in_pack: int, available: int, owed: int) -> str:
    return (
        f"Payment received: the {pack_id} pack's {credits(credits_in_pack)} are yours;"
        f" you have {credits(available)}.{_owing(owed)}"
    )


def purchase_taken_back(
    pack_id: str, taken: int, event_type: str, available: int, owed: int
) -> str:
    why = "disputed" if "dispute" in event_type else "refunded"
    return (
        f"Your {pack_id} pack's payment was {why}, so {credits(taken)} were taken back;"
        f" you have {credits(available)}.{_owing(owed)}"
    )


def purchase_given_back(pack_id: str, given: int, available: int) -> str:
    return (
        f"The dispute over your {pack_id} pack was settled in your favour: {credits(given)}"
        f" are back; you have {credits(available)}."
    )


CHECKOUT_PAID_PAGE = (
    "Thank you! Your payment is being confirmed; the credits arrive in the chat where you "
    "asked for them, usually within a minute. You can close this page."
)
CHECKOUT_CANCELLED_PAGE = (
    "No payment was taken. You can close this page; /buy in the chat gives you a new link."
)

NO_PURCHASES = "No purchases yet."


def purchase_row(purchase: Purchase) -> dict[str, object]:
    """One purchase as ``imagine-bot purchases`` lists it."""
    return {
        "created": purchase.created_at.isoformat(timespec="seconds"),
        "purchase": purchase.id,
        "source": purchase.source,
        "external_id": purchase.external_id or "",
        "account": purchase.account_id,
        "pack": purchase.pack,
        "credits": purchase.credits,
        "price": f"{major_units(purchase.amount, purchase.currency)} {purchase.currency.upper()}",
        "status": str(purchase.status),
        "refunded": str(major_units(purchase.amount_refunded, purchase.currency)),
        "disputed": "yes" if purchase.disputed else "",
        "taken_back": purchase.credits_taken_back,
    }


DISCORD_PAY_LABEL = "Pay by card"


def discord_stripe_label(pack_id: str, price: str) -> str:
    """A button's label: at most 80 characters, which a pack id and price stay well within."""
    return f"{pack_id} by card · {price}" if price else f"{pack_id} by card"


def discord_shards_recommended(recommended: int, configured: int | None) -> str:
    running = "as many" if configured is None else f"{configured} (DISCORD_SHARD_COUNT)"
    return f"Discord recommends {recommended} shard(s) for this bot; it runs {running}."


def discord_too_few_shards(configured: int, recommended: int) -> str:
    return (
        f"DISCORD_SHARD_COUNT is {configured}, below the {recommended} Discord recommends; "
        "Discord refuses to connect a bot with more than 2,500 servers on a shard, so raise "
        "the count (and split DISCORD_SHARD_IDS across the processes again)."
    )


def pack_hidden_on_discord(pack_id: str) -> str:
    return (
        f"The {pack_id} pack is not offered on Discord: it has no discord_sku, and Discord's "
        "price-parity rule allows selling on Discord only what Discord itself sells too."
    )


# -- the admin dashboard --------------------------------------------------------
# Sentences of `imagine-bot dashboard link` and the dashboard's pages (bot/dashboard).

DASHBOARD_NO_ADMINS = (
    "No admin accounts are set: list them in ADMIN_ACCOUNTS (e.g. ADMIN_ACCOUNTS=discord:123)"
    " to use the dashboard."
)
DASHBOARD_LOG_IN_FIRST = (
    "Log in first: run `imagine-bot dashboard link` where the bot runs, and open the link it"
    " prints."
)
DASHBOARD_LINK_UNUSABLE = (
    "This login link was used already, has expired, or is not for an admin account."
    " Run `imagine-bot dashboard link` for a new one."
)
DASHBOARD_FORM_REFUSED = (
    "This form is not from your current session (it may be from before you logged in again),"
    " so nothing was done. Reload the page and send it again."
)
DASHBOARD_LOGGED_OUT = "You are logged out. Run `imagine-bot dashboard link` to log in again."
DASHBOARD_NO_SUCH_PAGE = "There is no such page on the dashboard."
DASHBOARD_NO_BUDGETS = (
    "No provider has a monthly budget: set one with [providers.<name>] monthly_budget_usd in"
    " the pricing file."
)


def dashboard_not_admin(account: str) -> str:
    return f"{account} is not in ADMIN_ACCOUNTS: only admin accounts can use the dashboard."


def dashboard_link_issued(account: str, expires_at: datetime) -> str:
    return (
        f"Open this link to log in to the dashboard as {account}; it works once, until"
        f" {moment(expires_at)}."
    )


def dashboard_link_local(base_url: str) -> str:
    return (
        f"PUBLIC_URL is not set, so the link names the web server on this machine ({base_url});"
        " set PUBLIC_URL to the address your browser reaches it at."
    )


def dashboard_log_in_as(account: str) -> str:
    return f"Log in to the Imagine bot dashboard as {account}."


def dashboard_new_account(account: str) -> str:
    return f"{account} has not used the bot yet; a grant opens the account."


def dashboard_form_sent_twice(account: str, available: int) -> str:
    return (
        f"This form was sent already, so nothing changed; {account} has"
        f" {credits(available)} available."
    )


def dashboard_last_rows(shown: int, total: int) -> str:
    return f"The last {shown} of {total} rows; the CSV has them all."


DASHBOARD_NOTHING_YET = "Nothing yet."
DASHBOARD_NO_ACCOUNT_MATCHES = "No account matches."
DASHBOARD_LIST_PRICES = "No own prices: this account pays the list prices."
DASHBOARD_NO_REFUNDS = "No purchase was refunded, disputed or taken back."
DASHBOARD_NO_PROVIDERS = "No provider is configured."
DASHBOARD_MODELS_NOTE = (
    "Latency: from the click on Generate to the settlement, over the generations that"
    " delivered an image (nearest-rank percentiles). Credits' worth: the credits spent at"
    " CREDIT_VALUE_USD; margin: that less what the provider charged."
)
DASHBOARD_LIVE_NOTE = (
    "In flight and queued: this process's generations (each bot process has its own provider"
    " slots); running in every process: from the database. This page reloads every 10 seconds."
)
DASHBOARD_ACCEPTING = "Taking new requests."
DASHBOARD_STOPPING = "Stopping: no new requests are taken."


# -- subjects -------------------------------------------------------------------

SUBJECT_MAX_IMAGES = 6
SUBJECT_NAME_MAX_CHARS = 32
NO_SUBJECTS = (
    "You have no subjects yet; save one with /subject save and 1 to 6 images of the person."
)
CONSOLE_SUBJECT_USAGE = (
    "Usage: /subject save <name> <image file>... (1 to 6 files), /subject list,"
    " /subject delete <name>."
)
DISCORD_SUBJECT_USAGE = (
    "Usage: /subject action:save name:<name> image1:<image> … image6:<image> (1 to 6 images),"
    " /subject action:list, /subject action:delete name:<name>."
)
SLACK_SUBJECT_USAGE = "Usage: /subject list, /subject delete <name>."
SLACK_SUBJECT_SAVE = (
    "Slack slash commands cannot carry images, so save a subject with /subject on Discord"
    " or in the console; /subject list and /subject delete <name> work here."
)
DISCORD_SUBJECT_DESCRIPTION = "One of your saved subjects: its images join the references"


def file_unreadable(path: str) -> str:
    return f"Could not read {_echo(path)}; check the path and try again."


def bad_subject_name(typed: str) -> str:
    return (
        f"{_echo(typed)} cannot name a subject: use 1 to {SUBJECT_NAME_MAX_CHARS} letters,"
        " digits, hyphens or underscores."
    )


def subject_image_count(count: int) -> str:
    return f"A subject takes 1 to {SUBJECT_MAX_IMAGES} images, not {count}."


def no_such_subject(name: str) -> str:
    return f"You have no subject named {name}; /subject list shows yours."


def subject_saved(name: str, images: int, replaced: bool) -> str:
    pictures = "image" if images == 1 else "images"
    verb = "replaced" if replaced else "saved"
    return (
        f"Subject {name} {verb} with {images} {pictures}; add it to /imagine with subject:{name}."
    )


def subject_deleted(name: str) -> str:
    return f"Subject {name} deleted."


def subject_storage_full(stored: int, adding: int, limit: int) -> str:
    return (
        f"Your subjects already take {_megabytes(stored)} of your {_megabytes(limit)};"
        f" these images need {_megabytes(adding)} more, so delete a subject or save fewer images."
    )


def subjects_list(rows: Sequence[tuple[str, int, int]]) -> str:
    """``rows``: each subject's name, number of images and bytes."""
    lines = [
        f"• {name}: {images} {'image' if images == 1 else 'images'}, {_megabytes(size)}"
        for name, images, size in rows
    ]
    return "Your subjects:\n" + "\n".join(lines)


def _megabytes(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"
