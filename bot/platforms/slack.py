"""The Slack adapter: slash commands and button clicks in, the shared flow's answers out.

It only translates, with slack-bolt's async app. ``/imagine`` takes the same
text form as the console (``parse_imagine``); the quote is acknowledged at
once as an ephemeral Block Kit message with Generate and Cancel buttons
carrying the request id; a click holds the credits, and the generation runs in
the background while the ephemeral message shows progress; the images are
uploaded to the channel (``files_upload_v2``'s three steps, each file counted
as it is shared), and the ephemeral message ends with the outcome and the
balance; a message of the bot's own under the images carries the result's Again,
Vary, Edit and Delete buttons (Edit opens a modal). An admin's ``/stats`` is
answered privately too, its chart uploaded the same way to their direct messages
with the bot. A response_url takes five messages: every one sent is counted,
progress never takes the last, and an outcome Slack refuses anyway is sent with
``chat.postEphemeral``.

Transports: Socket Mode when ``SLACK_APP_TOKEN`` is set, otherwise HTTP on
``WEB_HOST:WEB_PORT`` at ``/slack/events`` with signature
verification. The web framework only appears in two small translators.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook import WebhookResponse

from bot import messages, references, slack_text, statements
from bot.credits import parse_adjustment, parse_settings
from bot.errors import (
    ImagineError,
    ModelUnusable,
    RequestError,
)
from bot.flow import (
    DeliveryFailed,
    HeldGeneration,
    ImagineService,
    PostedImages,
    Quote,
    charged_for,
)
from bot.parsing import estimate_only, parse_compare_text, parse_imagine_text
from bot.prices import PriceAdmin, PriceCommand, parse_price_command
from bot.progress import Generating, ProgressEvent
from bot.purchases import Notice
from bot.settings import Settings
from bot.stats import Chart, parse_stats_arguments
from bot.tasks import BackgroundTasks, answer_in_time
from bot.web import PublicWeb
from ledger import Generation
from providers.base import GeneratedImage, ReferenceImage

logger = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
GENERATE_ACTION = "imagine_generate"
CANCEL_ACTION = "imagine_cancel"
COMPARE_ACTION = "compare_generate"
COMPARE_CANCEL_ACTION = "compare_cancel"
AGAIN_ACTION = "imagine_again"
"""Numbered (``imagine_again_1``…): Slack wants the buttons of one block told apart."""
AGAIN_ACTIONS = re.compile(rf"^{AGAIN_ACTION}_\d+$")
RESULT_ACTION = "imagine_result"
"""``imagine_result_again``, ``_vary``, ``_edit``, ``_delete``: the buttons under a posted
result (``ImagineService.result_actions``), each valued ``<generation id> <first file id>``."""
EDIT_FORM = "imagine_edit_form"
"""The callback id of the form that edits a result's prompt."""
_EDIT_BLOCK = "prompt"
_EDIT_INPUT = "prompt"
_RESULT_LABELS = {
    "again": messages.RESULT_AGAIN_BUTTON,
    "vary": messages.RESULT_VARY_BUTTON,
    "edit": messages.RESULT_EDIT_BUTTON,
    "delete": messages.RESULT_DELETE_BUTTON,
}
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
RESPONSE_URL_MESSAGES = 5
"""Slack takes at most five messages on one response_url, within 30 minutes of the command or click."""
_RESPONSE_URL_LIFETIME = 30 * 60
# The outcome is the last message of a response_url, and must come before it expires.
_RESPONSE_URL_SECONDS = _RESPONSE_URL_LIFETIME - 60
SLACK_STATEMENT_LINES = 30
"""A statement in Slack is its last lines, as text; the whole one is ``imagine-bot statement``."""
_MENTION = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|[^>]*)?>$")
_NOT_A_MEMBER = frozenset({"not_in_channel", "channel_not_found"})
_UPLOAD_ERRORS = (SlackApiError, SlackRequestError, aiohttp.ClientError, OSError, TimeoutError)
"""What a step of an upload fails with: Slack's refusal, or a connection failing or too slow."""
_ASK_WHEN_STOPPING_SECONDS = 5.0
"""How long a shutdown waits to learn whether the upload it cut short was shared."""

Respond = Callable[..., Awaitable[Any]]


def slack_account(team_id: str, user_id: str) -> str:
    return f"slack:{team_id}:{user_id}"


def slack_shown(team: str) -> Callable[[str], str]:
    """Accounts as Slack shows people in ``team``: its members' mentions, other accounts' ids."""
    members = f"slack:{team}:"

    def shown(account: str) -> str:
        return f"<@{account.removeprefix(members)}>" if account.startswith(members) else account

    return shown


class SlackImagine:
    """The bolt app with the bot's commands and buttons, over one ``ImagineService``."""

    def __init__(
        self, service: ImagineService, settings: Settings, client: AsyncWebClient | None = None
    ) -> None:
        self.service = service
        self.settings = settings
        self.background = BackgroundTasks()
        self.prices = PriceAdmin(service.credits, service.catalog.registry)
        socket_mode = bool(settings.slack_app_token)
        if not socket_mode and not settings.slack_signing_secret:
            raise ValueError(messages.SLACK_NO_SIGNING_SECRET)
        self.client = client or AsyncWebClient(
            token=settings.slack_bot_token,
            base_url=_with_trailing_slash(settings.slack_api_base_url),
        )
        self.app = AsyncApp(
            client=self.client,
            signing_secret=settings.slack_signing_secret or "",
            # Socket Mode connections are authenticated by the app token instead.
            request_verification_enabled=not socket_mode,
        )
        self._response_urls: dict[str, _Sent] = {}
        """Messages sent to each response_url still alive, oldest first."""
        self.app.middleware(self._skip_redeliveries)
        self.app.middleware(self._count_responses)
        self.app.middleware(self._refuse_incomplete)
        self.app.middleware(self._serve_allowed_workspaces)
        self.app.command("/imagine")(self._imagine)
        self.app.command("/compare")(self._compare)
        self.app.command("/credits")(self._credits)
        self.app.command("/buy")(self._buy)
        self.app.command("/stats")(self._stats)
        self.app.command("/subject")(self._subject)
        self.app.command("/history")(self._history)
        self.app.command("/settings")(self._settings)
        self.app.action(GENERATE_ACTION)(self._generate)
        self.app.action(CANCEL_ACTION)(self._cancel)
        self.app.action(COMPARE_ACTION)(self._generate_compare)
        self.app.action(COMPARE_CANCEL_ACTION)(self._cancel_compare)
        self.app.action(AGAIN_ACTIONS)(self._again)
        self.app.action(f"{RESULT_ACTION}_again")(self._result_again)
        self.app.action(f"{RESULT_ACTION}_vary")(self._result_vary)
        self.app.action(f"{RESULT_ACTION}_edit")(self._result_edit)
        self.app.action(f"{RESULT_ACTION}_delete")(self._result_delete)
        self.app.view(EDIT_FORM)(self._edit_submitted)
        self.app.error(self._tell_what_failed)
        service.purchases.notifiers["slack"] = self._told
        alert_channel = settings.alert_channel or ""
        if alert_channel.startswith("slack:"):
            channel = alert_channel.removeprefix("slack:")

            async def alert(text: str) -> None:
                await self.client.chat_postMessage(channel=channel, text=text)

            service.budgets.alerts["slack"] = alert

    async def _told(self, notice: Notice) -> None:
        """A purchase's news for its buyer, privately in the channel where they ran /buy, or in a
        direct message if that channel is gone or the bot is not in it."""
        user = notice.account.rsplit(":", 1)[-1]
        if notice.channel:
            try:
                await self.client.chat_postEphemeral(
                    channel=notice.channel, user=user, text=notice.text
                )
                return
            except SlackApiError as refusal:
                logger.info("could not tell %s in %s: %s", user, notice.channel, refusal)
        await self.client.chat_postMessage(channel=user, text=notice.text)

    async def aclose(self) -> None:
        # Generations still running are cancelled; the flow releases their holds.
        await self.background.aclose()

    # -- middleware -----------------------------------------------------------

    async def _skip_redeliveries(
        self,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse:
        # Slack retries a delivery it thinks timed out; the first one is being handled.
        if req.headers.get("x-slack-retry-num"):
            logger.info("ignoring Slack redelivery %s", req.headers["x-slack-retry-num"])
            return BoltResponse(status=200, body="")
        return await next()

    async def _count_responses(
        self,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse:
        # Every handler's respond() counts against its response_url's five messages.
        url = req.context.response_url
        if url:
            req.context["respond"] = CountedRespond(
                url, self._sent_to(url), proxy=self.client.proxy, ssl=self.client.ssl
            )
        return await next()

    def _sent_to(self, response_url: str) -> _Sent:
        now = time.monotonic()
        # Slack forgets a response_url after 30 minutes, and so can the count.
        for url, sent in list(self._response_urls.items()):
            if now - sent.since < _RESPONSE_URL_LIFETIME:
                break
            del self._response_urls[url]
        return self._response_urls.setdefault(response_url, _Sent(now))

    async def _serve_allowed_workspaces(
        self,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse:
        # Before any listener, so no account is opened (nor starting credits
        # granted) in a workspace the operator did not list.
        context = req.context
        if self.settings.serves_slack(context.team_id, context.enterprise_id):
            return await next()
        logger.info("refused a Slack request from workspace %s: not allowed", context.team_id)
        return await _refuse(req, messages.NOT_SERVED_HERE)

    async def _refuse_incomplete(
        self,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse:
        # Without both there is no account to answer for: never one named "None".
        context = req.context
        if context.user_id and (context.team_id or context.enterprise_id):
            return await next()
        logger.warning("refused a Slack request that names no user or no workspace")
        return await _refuse(req, messages.INCOMPLETE_REQUEST)

    async def _tell_what_failed(
        self,
        error: Exception,
        body: dict[str, Any],
        respond: Respond | None,
        response: BoltResponse | None,
    ) -> BoltResponse | None:
        """A command or click that failed unexpectedly is answered with a sentence.

        Otherwise Slack shows its bare "dispatch_failed" for a command, and
        nothing at all for a click acknowledged already.
        """
        logger.error("Slack %s failed", body.get("command") or body.get("type"), exc_info=error)
        if response is not None:
            # Not acknowledged yet: the sentence is the acknowledgement.
            return _ephemeral_answer(messages.SOMETHING_WENT_WRONG)
        if respond is not None:
            with contextlib.suppress(SlackApiError, SlackRequestError, OSError):
                # A click's quote stays as it was; a command's "Preparing…" is replaced.
                await respond(
                    text=messages.SOMETHING_WENT_WRONG,
                    response_type="ephemeral",
                    replace_original="command" in body,
                )
        return None

    # -- /imagine -------------------------------------------------------------

    async def _imagine(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any], respond: Respond
    ) -> None:
        text = slack_text.typed(command.get("text", "")).strip()
        account = slack_account(command["team_id"], command["user_id"])
        if text.lower() in ("", "help"):
            await ack(response_type="ephemeral", text=self._help(account))
            return
        held: HeldGeneration | None = None

        async def answer() -> dict[str, Any]:
            nonlocal held
            fields, held = await self._quote(account, text, command)
            return fields

        try:
            await _answer_command(ack, respond, answer())
        finally:
            # After the answer, so that progress replaces the "Starting…" and not the reverse;
            # and even if it could not be sent, since only the generation settles the hold.
            if held is not None:
                delivery = self._delivery(respond, command["channel_id"], command["user_id"])
                self.background.spawn(
                    self._run(held, delivery), name=f"slack generation {held.generation.id}"
                )

    async def _quote(
        self, account: str, text: str, command: dict[str, Any]
    ) -> tuple[dict[str, Any], HeldGeneration | None]:
        """The quote as message fields (text and Block Kit buttons), or the refusal's sentence;
        a quote under the account's auto-confirm limit is held instead, to be generated."""
        price_only, text = estimate_only(text)
        if price_only:
            try:
                request = await self.service.request(account, parse_imagine_text(text))
                summary = (await self.service.estimate(account, request)).summary
            except ImagineError as refusal:
                summary = refusal.message
            return {"text": summary}, None

        async def quoting() -> Quote:
            request = await self.service.request(account, parse_imagine_text(text))
            return await self.service.quote(
                account, request, channel=f"slack:{command['team_id']}:{command['channel_id']}"
            )

        return await self._offer(account, quoting())

    async def _offer(
        self, account: str, quoting: Awaitable[Quote]
    ) -> tuple[dict[str, Any], HeldGeneration | None]:
        """The quote with its Generate and Cancel buttons, or the refusal's sentence; a quote
        that confirms itself is held at once, as its Generate button would, and is left for
        the caller to generate once "Starting…" is shown."""
        try:
            quote = await quoting
        except ModelUnusable as unusable:
            if unusable.alternative is None:
                return {"text": unusable.message}, None
            quote, summary = unusable.alternative, unusable.message
        except ImagineError as refusal:
            return {"text": refusal.message}, None
        else:
            summary = quote.summary
        if quote.confirms_itself:
            try:
                held = await self.service.hold(quote.id, account)
            except ImagineError as refusal:
                return {"text": refusal.message}, None
            return {"text": messages.SLACK_STARTING}, held
        return {"text": summary, "blocks": quote_blocks(summary, quote.id, quote.button)}, None

    def _help(self, account: str) -> str:
        catalog = self.service.catalog
        usable = catalog.usable()
        rows = [(model, catalog.reason_unavailable(model)) for model in catalog.listed()]
        return messages.slack_help(
            is_admin=self.service.credits.is_admin(account),
            default_model=usable[0].id if usable else None,
            models_table=messages.models_table(rows),
        )

    async def _generate(
        self,
        ack: Callable[..., Awaitable[None]],
        body: dict[str, Any],
        respond: CountedRespond,
        client: AsyncWebClient,
    ) -> None:
        await ack()
        generation_id = _clicked_request(body)
        try:
            held = await self.service.hold(generation_id, _clicker(body))
        except ImagineError as refusal:
            await _refuse_click(respond, refusal)
            return
        delivery = self._delivery(respond, body["channel"]["id"], body["user"]["id"])
        await self.background.spawn_after(
            respond(text=messages.SLACK_STARTING, replace_original=True),
            self._run(held, delivery),
            name=f"slack generation {generation_id}",
        )

    async def _run(self, held: HeldGeneration, delivery: _UploadToChannel) -> None:
        await self.service.generate(held, delivery, reachable_for=_RESPONSE_URL_SECONDS)

    def _delivery(self, respond: Respond | None, channel: str, user: str) -> _UploadToChannel:
        assert respond is None or isinstance(respond, CountedRespond), (
            "every response_url is counted (middleware)"
        )
        return _UploadToChannel(
            self.client,
            respond,
            channel,
            user,
            self.settings.upload_timeout_seconds,
            self.service.result_actions,
        )

    # -- /history, Again and /settings ----------------------------------------

    async def _history(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any], respond: Respond
    ) -> None:
        await _answer_command(ack, respond, self._history_answer(command))

    async def _history_answer(self, command: dict[str, Any]) -> dict[str, Any]:
        """The last generations, each with a link to its images, and an Again button each."""
        account = slack_account(command["team_id"], command["user_id"])
        recent = await self.service.credits.history_entries(account)
        # A prompt shows as typed, not as Slack's markup; the link is Slack's own sequence.
        shown = [replace(g, prompt=slack_text.escaped(g.prompt)) for g in recent]
        text = messages.history_entries(shown, lambda url: f"<{slack_text.escaped(url)}|view>")
        if not recent:
            return {"text": text}
        return {"text": text, "blocks": history_blocks(text, [g.id for g in recent])}

    async def _again(
        self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], respond: Respond
    ) -> None:
        """A new quote of a past generation for whoever clicked, in a message of its own (the
        history stays); one under the clicker's auto-confirm limit generates at once."""
        await ack()
        account = _clicker(body)
        channel = body["channel"]["id"]
        fields, held = await self._offer(
            account,
            self.service.again(
                _clicked_request(body),
                account,
                channel=f"slack:{_click_team(body)}:{channel}",
            ),
        )
        if held is None:
            await respond(response_type="ephemeral", replace_original=False, **fields)
            return
        # Progress and the outcome can only replace the message clicked (Slack edits no other
        # ephemeral message), so "Starting…" takes the history's place from the first.
        await self.background.spawn_after(
            respond(response_type="ephemeral", replace_original=True, **fields),
            self._run(held, self._delivery(respond, channel, body["user"]["id"])),
            name=f"slack generation {held.generation.id}",
        )

    # -- the buttons under a posted result --------------------------------------

    async def _result_again(
        self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], respond: Respond
    ) -> None:
        """A new quote of the result for whoever clicked, said to them alone."""
        await ack()
        generation_id, _ = _clicked_result(body)
        account = _clicker(body)
        channel = body["channel"]["id"]
        quoting = self.service.again(
            generation_id, account, channel=f"slack:{_click_team(body)}:{channel}"
        )
        await self._offer_privately(body, channel, quoting, _privately(respond))

    async def _result_vary(
        self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], respond: Respond
    ) -> None:
        """A new quote with the result's first image as the reference, for whoever clicked."""
        await ack()
        generation_id, file_id = _clicked_result(body)
        account = _clicker(body)
        channel = body["channel"]["id"]

        async def quoting() -> Quote:
            return await self.service.again(
                generation_id,
                account,
                reference=await self._posted_image(file_id),
                channel=f"slack:{_click_team(body)}:{channel}",
            )

        await self._offer_privately(body, channel, quoting(), _privately(respond))

    async def _posted_image(self, file_id: str) -> ReferenceImage:
        """A posted image, downloaded with the bot's token and checked as any reference is."""
        try:
            async with asyncio.timeout(self.settings.upload_timeout_seconds):
                file = (await self.client.files_info(file=file_id))["file"]
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(
                        str(file["url_private"]),
                        headers={"Authorization": f"Bearer {self.client.token}"},
                    ) as response,
                ):
                    response.raise_for_status()
                    data = await response.read()
        except (*_UPLOAD_ERRORS, KeyError, TypeError):
            logger.warning("could not fetch the posted image %s", file_id, exc_info=True)
            raise RequestError(messages.VARY_UNREADABLE) from None
        filename = str(file.get("name") or f"{file_id}.png")
        claimed = references.check_attachment(filename, file.get("mimetype"), len(data))
        return await references.prepare(filename, claimed, data)

    async def _result_edit(
        self,
        ack: Callable[..., Awaitable[None]],
        body: dict[str, Any],
        respond: Respond,
    ) -> None:
        """The form to edit the result's prompt; its submission is answered by _edit_submitted."""
        await ack()
        generation_id, _ = _clicked_result(body)
        try:
            prompt = await self.service.prompt_of(generation_id)
        except ImagineError as refusal:
            await _privately(respond)(text=refusal.message)
            return
        await self.client.views_open(
            trigger_id=body["trigger_id"],
            view=edit_view(generation_id, body["channel"]["id"], prompt),
        )

    async def _edit_submitted(
        self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], view: dict[str, Any]
    ) -> None:
        """A new quote of the result with the edited prompt, for whoever submitted the form, said
        to them alone in the result's channel."""
        await ack()
        about = json.loads(view["private_metadata"])
        channel = str(about["channel"])
        prompt = str(view["state"]["values"][_EDIT_BLOCK][_EDIT_INPUT].get("value") or "")
        account = _clicker(body)
        quoting = self.service.again(
            str(about["generation"]),
            account,
            prompt=prompt,
            channel=f"slack:{_click_team(body)}:{channel}",
        )

        async def say(**fields: Any) -> None:
            await self.client.chat_postEphemeral(channel=channel, user=body["user"]["id"], **fields)

        await self._offer_privately(body, channel, quoting, say)

    async def _offer_privately(
        self,
        body: dict[str, Any],
        channel: str,
        quoting: Awaitable[Quote],
        say: Callable[..., Awaitable[Any]],
    ) -> None:
        """``quoting``'s quote (or refusal) said with ``say``; one under the auto-confirm limit
        generates at once, its outcome in a message of its own (the clicked message is public,
        or a form, and not the clicker's to replace)."""
        fields, held = await self._offer(_clicker(body), quoting)
        await say(**fields)
        if held is not None:
            self.background.spawn(
                self._run(held, self._delivery(None, channel, body["user"]["id"])),
                name=f"slack generation {held.generation.id}",
            )

    async def _result_delete(
        self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], respond: Respond
    ) -> None:
        """Remove the bot's messages of a result, if the clicker may; a stranger is told so
        privately and nothing changes."""
        await ack()
        generation_id, file_id = _clicked_result(body)
        channel = body["channel"]["id"]
        buttons_ts = str((body.get("container") or {}).get("message_ts") or "")

        async def remove() -> None:
            # The images' message first: once the buttons are gone, nobody can ask again.
            for ts in await self._shared_at(file_id, channel):
                with contextlib.suppress(SlackApiError):
                    await self.client.chat_delete(channel=channel, ts=ts)
            await self.client.chat_delete(channel=channel, ts=buttons_ts)

        say = _privately(respond)
        try:
            await self.service.delete_result(generation_id, _clicker(body), remove)
        except ImagineError as refusal:
            await say(text=refusal.message)
            return
        except SlackApiError as error:
            if _error_code(error.response.data if error.response else {}) != "message_not_found":
                raise
            await say(text=messages.DELETE_GONE)
            return
        await say(text=messages.DELETED)

    async def _shared_at(self, file_id: str, channel: str) -> list[str]:
        """The timestamps of the messages that share ``file_id`` in ``channel``; none if Slack
        cannot say (the buttons' message is deleted all the same)."""
        try:
            async with asyncio.timeout(self.settings.upload_timeout_seconds):
                file = (await self.client.files_info(file=file_id)).get("file") or {}
        except _UPLOAD_ERRORS:
            logger.warning("could not ask Slack where %s was shared", file_id, exc_info=True)
            return []
        shares = file.get("shares") or {}
        return [
            str(share["ts"])
            for kind in ("public", "private")
            for share in (shares.get(kind) or {}).get(channel, ())
            if share.get("ts")
        ]

    async def _settings(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any], respond: Respond
    ) -> None:
        await _answer_command(ack, respond, self._settings_answer(command))

    async def _settings_answer(self, command: dict[str, Any]) -> dict[str, Any]:
        account = slack_account(command["team_id"], command["user_id"])
        try:
            text = await self.service.credits.settings(
                account, parse_settings(slack_text.typed(command.get("text", "")))
            )
        except ImagineError as refusal:
            text = refusal.message
        return {"text": text}

    async def _cancel(
        self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], respond: Respond
    ) -> None:
        await ack()
        try:
            await self.service.cancel(_clicked_request(body), _clicker(body))
        except ImagineError as refusal:
            await _refuse_click(respond, refusal)
            return
        await respond(text=messages.CANCELLED, replace_original=True)

    # -- /compare -------------------------------------------------------------

    async def _compare(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any], respond: Respond
    ) -> None:
        text = slack_text.typed(command.get("text", "")).strip()
        account = slack_account(command["team_id"], command["user_id"])
        await _answer_command(ack, respond, self._compare_quote(account, text, command))

    async def _compare_quote(
        self, account: str, text: str, command: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            quote = await self.service.quote_compare(
                account,
                await self.service.compare_request(account, parse_compare_text(text)),
                channel=f"slack:{command['team_id']}:{command['channel_id']}",
            )
        except ImagineError as refusal:
            return {"text": refusal.message}
        return {
            "text": quote.summary,
            "blocks": quote_blocks(
                quote.summary, quote.id, quote.button, COMPARE_ACTION, COMPARE_CANCEL_ACTION
            ),
        }

    async def _generate_compare(
        self,
        ack: Callable[..., Awaitable[None]],
        body: dict[str, Any],
        respond: CountedRespond,
        client: AsyncWebClient,
    ) -> None:
        await ack()
        compare_id = _clicked_request(body)
        try:
            held = await self.service.hold_compare(compare_id, _clicker(body))
        except ImagineError as refusal:
            await _refuse_click(respond, refusal)
            return
        delivery = self._delivery(respond, body["channel"]["id"], body["user"]["id"])
        await self.background.spawn_after(
            respond(text=messages.SLACK_STARTING, replace_original=True),
            self.service.generate_compare(held, delivery, reachable_for=_RESPONSE_URL_SECONDS),
            name=f"slack compare {compare_id}",
        )

    async def _cancel_compare(
        self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], respond: Respond
    ) -> None:
        await ack()
        try:
            await self.service.cancel_compare(_clicked_request(body), _clicker(body))
        except ImagineError as refusal:
            await _refuse_click(respond, refusal)
            return
        await respond(text=messages.CANCELLED, replace_original=True)

    # -- /buy -----------------------------------------------------------------

    async def _buy(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any], respond: Respond
    ) -> None:
        await _answer_command(ack, respond, self._buy_answer(command))

    async def _buy_answer(self, command: dict[str, Any]) -> dict[str, Any]:
        """Every pack with a Checkout link for this member alone (the answer is ephemeral)."""
        account = slack_account(command["team_id"], command["user_id"])
        try:
            text = await self.service.purchases.offer(account, command.get("channel_id"))
        except ImagineError as refusal:
            text = refusal.message
        return {"text": text}

    # -- /subject -------------------------------------------------------------

    async def _subject(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any], respond: Respond
    ) -> None:
        await _answer_command(ack, respond, self._subject_answer(command))

    async def _subject_answer(self, command: dict[str, Any]) -> dict[str, Any]:
        """``list`` or ``delete <name>``; ``save`` needs images, which a slash command cannot carry."""
        account = slack_account(command["team_id"], command["user_id"])
        subjects = self.service.subjects
        try:
            match slack_text.typed(command.get("text", "")).split():
                case ["list"]:
                    text = await subjects.listing(account)
                case ["delete", name]:
                    text = await subjects.delete(account, name)
                case ["save", *_]:
                    text = messages.SLACK_SUBJECT_SAVE
                case _:
                    text = messages.SLACK_SUBJECT_USAGE
        except ImagineError as refusal:
            text = refusal.message
        return {"text": text}

    # -- /stats ---------------------------------------------------------------

    async def _stats(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any], respond: Respond
    ) -> None:
        await _answer_command(ack, respond, self._stats_answer(command))

    async def _stats_answer(self, command: dict[str, Any]) -> dict[str, Any]:
        """An admin's figures, said privately, and the chart sent to their direct messages with
        the bot: uploaded to the channel it was asked in, it would show revenue and margins to
        everyone there, and Slack cannot share a file with one member of a channel alone."""
        account = slack_account(command["team_id"], command["user_id"])
        try:
            model = parse_stats_arguments(slack_text.typed(command.get("text", "")))
            answer = await self.service.stats.answer(account, model)
        except ImagineError as refusal:
            return {"text": refusal.message}
        if answer.chart is None:
            return {"text": answer.text}
        try:
            await self._send_privately(command["user_id"], answer.chart, answer.text)
        except (*_UPLOAD_ERRORS, DeliveryFailed) as error:
            logger.warning("could not send the /stats chart to %s: %r", command["user_id"], error)
            why = str(error) if isinstance(error, DeliveryFailed) else _why_not_posted(error)
            return {"text": f"{answer.text}\n{messages.stats_chart_not_sent(why)}"}
        return {"text": f"{answer.text}\n{messages.SLACK_STATS_CHART_SENT}"}

    async def _send_privately(self, user: str, chart: Chart, caption: str) -> None:
        """``chart`` in the member's direct messages with the bot, with ``caption``."""
        timeout = self.settings.upload_timeout_seconds
        async with asyncio.timeout(timeout):
            opened = await self.client.conversations_open(users=user)
        channel = str(opened["channel"]["id"])
        async with aiohttp.ClientSession() as session:
            file_id = await _upload_file(self.client, session, chart.png, chart.filename, timeout)
        async with asyncio.timeout(timeout):
            await self.client.files_completeUploadExternal(
                files=[{"id": file_id, "title": chart.filename}],
                channel_id=channel,
                initial_comment=caption,
            )

    # -- /credits -------------------------------------------------------------

    async def _credits(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any], respond: Respond
    ) -> None:
        await _answer_command(ack, respond, self._credits_answer(command))

    async def _credits_answer(self, command: dict[str, Any]) -> dict[str, Any]:
        """The balance and history, or an admin's grant, revoke or price change reported, as
        message fields."""
        team = command["team_id"]
        account = slack_account(team, command["user_id"])
        words = command.get("text", "").split()
        try:
            if words and words[0].lower() in ("grant", "revoke"):
                action = words[0].lower()
                usage = messages.slack_admin_usage(action)
                typed = parse_adjustment(words[1:], usage)
                mention = _MENTION.match(typed.target)
                if mention is None:
                    raise RequestError(usage)
                text = await self.service.credits.adjust(
                    action,
                    account,
                    slack_account(team, mention.group(1)),
                    typed.amount,
                    # Recorded as the admin saw it typed, not in Slack's escaped form.
                    slack_text.typed(typed.reason),
                    expires=typed.expires,
                    shown_as=f"<@{mention.group(1)}>",
                    # The same command delivered again must not grant again.
                    idempotency_key=f"{action}:slack:{command['trigger_id']}",
                )
            elif words and words[0].lower() == "statement":
                lines = await self.service.credits.own_statement(
                    account, last=SLACK_STATEMENT_LINES
                )
                text = f"```{statements.as_table(lines)}```"
            elif words and words[0].lower() == "price":
                price = _price_command(team, " ".join(words[1:]))
                text = await self.prices.run(account, price, name=slack_shown(team))
            elif words:
                raise RequestError(messages.slack_credits_usage(words[0]))
            else:
                text = await self.service.credits.statement(account)
        except ImagineError as refusal:
            text = refusal.message
        return {"text": text}


def _price_command(team: str, typed: str) -> PriceCommand:
    """``/credits price …`` in the console's text form, with a mention in place of the account."""
    command = parse_price_command(typed, messages.SLACK_PRICE_USAGE)
    if command.account is not None:
        mention = _MENTION.match(command.account)
        if mention is None:
            raise RequestError(messages.SLACK_PRICE_USAGE)
        command = replace(command, account=slack_account(team, mention.group(1)))
    # Recorded in the ledger as the admin saw it typed, not in Slack's escaped form.
    return replace(command, reason=slack_text.typed(command.reason))


@dataclass
class _Sent:
    """How many messages went to one response_url, first counted at ``since`` (monotonic)."""

    since: float
    count: int = 0


class ResponseUrlUsedUp(SlackRequestError):
    """Slack would refuse this message: its response_url has taken all it takes."""


class CountedRespond(AsyncRespond):
    """Bolt's ``respond``, counting the messages sent to its response_url.

    The count is shared by everything answering through the same URL in this
    process; each command and click has a URL of its own, and a click's (its
    progress and outcome) is only used by the process running its generation.
    """

    def __init__(self, response_url: str, sent: _Sent, **connection: Any) -> None:
        super().__init__(response_url=response_url, **connection)
        self._sent = sent

    @property
    def left(self) -> int:
        return RESPONSE_URL_MESSAGES - self._sent.count

    async def __call__(self, *args: Any, **kwargs: Any) -> WebhookResponse:
        if self.left <= 0:
            raise ResponseUrlUsedUp(f"{RESPONSE_URL_MESSAGES} messages already sent")
        # Counted before the first await, so messages sent at once cannot overdraw.
        self._sent.count += 1
        return await super().__call__(*args, **kwargs)

    async def unless_last(self, **fields: Any) -> None:
        """Send, unless only one message is left: that one is kept for the outcome."""
        if self.left > 1:
            await self(**fields)


class _UploadToChannel:
    """Delivery on Slack: progress in the ephemeral message, images uploaded to the channel."""

    def __init__(
        self,
        client: AsyncWebClient,
        respond: CountedRespond | None,
        channel: str,
        user: str,
        upload_timeout: float,
        actions: Callable[[Generation], Sequence[str]],
    ) -> None:
        self.client = client
        self.respond = respond
        """None when there is no message of the user's own to edit (a click on a public
        message, a form): progress is not shown, and the outcome is a message of its own."""
        self.channel = channel
        self.user = user
        self.upload_timeout = upload_timeout
        self.actions = actions
        self._shown = ""

    async def progress(self, event: ProgressEvent) -> None:
        if self.respond is None:
            return
        # The last image done is followed at once by "Posting…" (or the outcome): not worth
        # one of the five messages.
        if isinstance(event, Generating) and event.finished == event.total:
            return
        text = slack_text.escaped(messages.progress(event))
        if text != self._shown:
            self._shown = text
            await self.respond.unless_last(text=text, replace_original=True)

    async def conclude(self, report: str) -> None:
        text = slack_text.escaped(report)
        if self.respond is not None and self.respond.left > 0:
            answer = await self.respond(text=text, replace_original=True)
            if answer.status_code == 200:
                return
            logger.warning(
                "Slack refused the outcome on the response_url (%s %s); sending it privately",
                answer.status_code,
                answer.body,
            )
        # The user must learn how it ended and what it cost, even with the response_url spent.
        await self.client.chat_postEphemeral(channel=self.channel, user=self.user, text=text)

    async def deliver(
        self, images: Sequence[GeneratedImage], generation: Generation, posted: PostedImages
    ) -> None:
        caption = messages.delivered_caption(
            f"<@{self.user}>",
            # The prompt is anyone's text, shown in the channel under the bot's name.
            slack_text.inert(generation.prompt),
            str(generation.options.get("model_name", generation.model_id)),
            charged_for(generation, len(images)),
        )
        # files_upload_v2's three steps, taken here so that the file ids are known
        # when the last step's answer is lost and Slack has to be asked what it shared.
        files: list[dict[str, str]] = []
        try:
            async with aiohttp.ClientSession() as session:
                for number, image in enumerate(images, start=1):
                    extension = _EXTENSIONS.get(image.mime_type, "png")
                    file_id = await _upload_file(
                        self.client,
                        session,
                        image.data,
                        f"{generation.id}-{number}.{extension}",
                        self.upload_timeout,
                    )
                    files.append({"id": file_id, "title": f"{generation.prompt[:60]} ({number})"})
        except _UPLOAD_ERRORS as error:
            # Nothing is in the channel until the upload is completed.
            raise DeliveryFailed(_why_not_posted(error)) from error
        await self._share(files, caption, posted)
        # Only once every image is in the channel: the buttons act on the first one.
        await self._post_buttons(generation, files[0]["id"])

    async def _post_buttons(self, generation: Generation, file_id: str) -> None:
        """The result's buttons, in a message of their own under the images (a file share's
        message cannot carry blocks); the images are delivered even if this fails."""
        actions = self.actions(generation)
        if not actions:
            return
        try:
            async with asyncio.timeout(self.upload_timeout):
                await self.client.chat_postMessage(
                    channel=self.channel,
                    text=messages.RESULT_BUTTONS,
                    blocks=result_blocks(generation.id, file_id, actions),
                )
        except _UPLOAD_ERRORS:
            logger.warning("could not post the buttons under %s", generation.id, exc_info=True)

    async def _share(self, files: list[dict[str, str]], caption: str, posted: PostedImages) -> None:
        """``files.completeUploadExternal``: the files appear in the channel, with the caption."""
        file_ids = [file["id"] for file in files]
        try:
            try:
                await self._complete(files, caption)
            except SlackApiError as error:
                if _error_code(error.response.data if error.response else {}) not in _NOT_A_MEMBER:
                    raise
                await self._join()
                await self._complete(files, caption)
        except asyncio.CancelledError:
            # Stopped mid-upload: Slack may have shared the files all the same.
            posted.landed(await self._count_shared(file_ids, _ASK_WHEN_STOPPING_SECONDS))
            raise
        except _UPLOAD_ERRORS as error:
            # Slack may have shared some or all of them before the failure reached here.
            logger.warning("completing the upload of %s failed (%r); asking Slack", file_ids, error)
            shared = await self._count_shared(file_ids, self.upload_timeout)
            posted.landed(shared)
            if shared < len(file_ids):
                raise DeliveryFailed(_why_not_posted(error)) from error
        else:
            # Counted before asking for the link: a shutdown meanwhile must not lose the count.
            posted.landed(len(file_ids))
            posted.landed(0, await self._permalink(file_ids[0]))

    async def _permalink(self, file_id: str) -> str | None:
        """Where the first image can be seen again, for /history; None if Slack cannot say
        (no ``files:read`` scope, the connection down): the images are delivered all the same."""
        try:
            async with asyncio.timeout(self.upload_timeout):
                answer = await self.client.files_info(file=file_id)
        except _UPLOAD_ERRORS:
            logger.warning("could not ask Slack for the link to %s", file_id, exc_info=True)
            return None
        file = answer.get("file")
        link = file.get("permalink") if isinstance(file, Mapping) else None
        return str(link) if link else None

    async def _complete(self, files: list[dict[str, str]], caption: str) -> None:
        async with asyncio.timeout(self.upload_timeout):
            await self.client.files_completeUploadExternal(
                files=files, channel_id=self.channel, initial_comment=caption
            )

    async def _count_shared(self, file_ids: list[str], patience: float) -> int:
        """How many of the files ``files.info`` shows shared to the channel.

        Those Slack cannot answer for (no ``files:read`` scope, the connection
        still down) count as not shared: charging for images the user may never
        have seen is worse than giving away ones they did.
        """
        shared = 0
        try:
            async with asyncio.timeout(patience):
                for file_id in file_ids:
                    answer = await self.client.files_info(file=file_id)
                    shared += _shared_to(answer.get("file"), self.channel)
        except _UPLOAD_ERRORS:
            logger.warning(
                "could not ask Slack whether %s were shared; counting %d as shared",
                file_ids,
                shared,
                exc_info=True,
            )
            return shared
        logger.info("Slack shows %d of %s shared to %s", shared, file_ids, self.channel)
        return shared

    async def _join(self) -> None:
        """Join a public channel, or explain how to invite the bot to a private one."""
        try:
            await self.client.conversations_join(channel=self.channel)
        except SlackApiError as error:
            raise DeliveryFailed(messages.SLACK_INVITE_ME) from error


async def _upload_file(
    client: AsyncWebClient,
    session: aiohttp.ClientSession,
    data: bytes,
    filename: str,
    step_seconds: float,
) -> str:
    """The first two of ``files_upload_v2``'s three steps: ``files.getUploadURLExternal`` and
    the POST of the bytes, each within ``step_seconds``; the file's id, for
    ``files.completeUploadExternal`` to share."""
    async with asyncio.timeout(step_seconds):
        answer = await client.files_getUploadURLExternal(filename=filename, length=len(data))
    async with (
        asyncio.timeout(step_seconds),
        session.post(str(answer["upload_url"]), data=data) as response,
    ):
        if response.status != HTTPStatus.OK:
            raise DeliveryFailed(messages.upload_refused("Slack", response.status))
    return str(answer["file_id"])


def quote_blocks(
    summary: str,
    generation_id: str,
    label: str,
    generate: str = GENERATE_ACTION,
    cancel: str = CANCEL_ACTION,
) -> list[dict[str, Any]]:
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": summary}},
        {
            "type": "actions",
            "block_id": "imagine_quote",
            "elements": [
                {
                    "type": "button",
                    "action_id": generate,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": label},
                    "value": generation_id,
                },
                {
                    "type": "button",
                    "action_id": cancel,
                    "text": {"type": "plain_text", "text": messages.CANCEL_BUTTON},
                    "value": generation_id,
                },
            ],
        },
    ]


def result_blocks(generation_id: str, file_id: str, actions: Sequence[str]) -> list[dict[str, Any]]:
    """The buttons under a posted result; each carries the generation and its first image, so
    they work after a restart with nothing else recorded."""
    return [
        {
            "type": "actions",
            "block_id": "imagine_result",
            "elements": [
                {
                    "type": "button",
                    "action_id": f"{RESULT_ACTION}_{action}",
                    "text": {"type": "plain_text", "text": _RESULT_LABELS[action]},
                    "value": f"{generation_id} {file_id}",
                    **({"style": "danger"} if action == "delete" else {}),
                }
                for action in actions
            ],
        }
    ]


def edit_view(generation_id: str, channel: str, prompt: str) -> dict[str, Any]:
    """The modal to edit a result's prompt, prefilled with it; what it is for rides in its
    private_metadata, so a form opened before a restart is answered after it."""
    return {
        "type": "modal",
        "callback_id": EDIT_FORM,
        "private_metadata": json.dumps({"generation": generation_id, "channel": channel}),
        "title": {"type": "plain_text", "text": messages.EDIT_FORM_TITLE},
        "submit": {"type": "plain_text", "text": messages.EDIT_FORM_SUBMIT},
        "blocks": [
            {
                "type": "input",
                "block_id": _EDIT_BLOCK,
                "label": {"type": "plain_text", "text": messages.EDIT_FORM_PROMPT},
                "element": {
                    "type": "plain_text_input",
                    "action_id": _EDIT_INPUT,
                    "multiline": True,
                    "initial_value": prompt[: messages.PROMPT_MAX_CHARS],
                    "max_length": messages.PROMPT_MAX_CHARS,
                },
            }
        ],
    }


def _clicked_result(body: Mapping[str, Any]) -> tuple[str, str]:
    """The generation and first file id a result button carries."""
    generation_id, _, file_id = _clicked_request(body).partition(" ")
    return generation_id, file_id


def history_blocks(text: str, generation_ids: Sequence[str]) -> list[dict[str, Any]]:
    """``/history``'s lines and an Again button per generation, numbered as the lines are; the
    button carries the generation id, so it works after a restart."""
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "block_id": "imagine_history",
            "elements": [
                {
                    "type": "button",
                    "action_id": f"{AGAIN_ACTION}_{number}",
                    "text": {"type": "plain_text", "text": messages.again_button(number)},
                    "value": generation_id,
                }
                for number, generation_id in enumerate(generation_ids, start=1)
            ],
        },
    ]


def _privately(respond: Respond) -> Callable[..., Awaitable[Any]]:
    """Answer a click on a public message with a message to the clicker alone, leaving it be."""

    async def say(**fields: Any) -> None:
        await respond(response_type="ephemeral", replace_original=False, **fields)

    return say


def _ephemeral_answer(text: str) -> BoltResponse:
    """A slash command's acknowledgement saying ``text`` to the user alone."""
    return BoltResponse(
        status=200,
        body=json.dumps({"response_type": "ephemeral", "text": text}),
        headers={"content-type": "application/json;charset=utf-8"},
    )


async def _refuse_click(respond: Respond, refusal: ImagineError) -> None:
    """Say why a click changed nothing, where ``ImagineError.ends_the_request`` says."""
    if refusal.ends_the_request:
        await respond(text=refusal.message, replace_original=True)
    else:
        await respond(text=refusal.message, response_type="ephemeral", replace_original=False)


async def _answer_command(
    ack: Callable[..., Awaitable[None]], respond: Respond, answer: Awaitable[dict[str, Any]]
) -> None:
    """Answer a slash command with ``answer``'s message fields, within Slack's 3 s.

    If the answer is not ready in time, Slack is answered "Working on it…" and
    the answer replaces it when it comes, through the command's ``response_url``.
    """
    acknowledged = False

    async def working_on_it() -> None:
        nonlocal acknowledged
        acknowledged = True
        await ack(response_type="ephemeral", text=messages.SLACK_PREPARING)

    fields = await answer_in_time(answer, working_on_it)
    if acknowledged:
        await respond(response_type="ephemeral", replace_original=True, **fields)
    else:
        await ack(response_type="ephemeral", **fields)


async def _refuse(req: AsyncBoltRequest, sentence: str) -> BoltResponse:
    """Answer a request with ``sentence`` before any listener sees it."""
    if "command" in req.body:
        return _ephemeral_answer(sentence)
    # A click's answer goes through its response_url; Slack shows none of the HTTP body.
    if req.context.response_url:
        with contextlib.suppress(SlackApiError, SlackRequestError, OSError):
            await req.context.respond(
                text=sentence, response_type="ephemeral", replace_original=False
            )
    return BoltResponse(status=200, body="")


def _clicked_request(body: Mapping[str, Any]) -> str:
    """The request id a button carries; a button without one names no request."""
    return str(body["actions"][0].get("value") or "")


def _clicker(body: Mapping[str, Any]) -> str:
    """The clicker's account, named by the workspace the click came from, as the command's is."""
    return slack_account(_click_team(body), body["user"]["id"])


def _click_team(body: Mapping[str, Any]) -> str:
    """The workspace a click came from.

    On an Enterprise organization ``user.team_id`` is the org's id instead;
    ``team`` is missing only for an org-wide install.
    """
    return str((body.get("team") or {}).get("id") or body["user"]["team_id"])


def _why_not_posted(error: BaseException) -> str:
    """For the user: Slack's refusal with its error code, or the connection failing."""
    if isinstance(error, SlackApiError):
        return messages.upload_refused(
            "Slack", _error_code(error.response.data if error.response else {})
        )
    return messages.upload_lost("Slack")


def _shared_to(file: object, channel: str) -> bool:
    """Whether a ``files.info`` file object is shared to ``channel``."""
    if not isinstance(file, Mapping):
        return False
    shares = file.get("shares") or {}
    return any(channel in (shares.get(kind) or {}) for kind in ("public", "private")) or any(
        channel in (file.get(kind) or ()) for kind in ("channels", "groups", "ims")
    )


def _error_code(data: object) -> str:
    return str(data.get("error", "unknown")) if isinstance(data, Mapping) else "unknown"


def _with_trailing_slash(base_url: str | None) -> str:
    # The Web API client joins method names onto the base URL as they are.
    if not base_url:
        return AsyncWebClient.BASE_URL
    return base_url if base_url.endswith("/") else base_url + "/"


# -- transports -------------------------------------------------------------------


def events_handler(slack: SlackImagine) -> Callable[[web.Request], Awaitable[web.Response]]:
    """HTTP mode's one route: two translators around bolt."""

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(
            await slack.app.async_dispatch(await to_bolt_request(request))
        )

    return events


def events_application(slack: SlackImagine) -> web.Application:
    """A web application with HTTP mode's route alone (tests)."""
    application = web.Application()
    application.router.add_post(EVENTS_PATH, events_handler(slack))
    return application


def prepare_slack(
    service: ImagineService, settings: Settings, public: PublicWeb
) -> Callable[[], Awaitable[None]]:
    """The Slack app, its route added to ``public`` in HTTP mode; what runs it until cancelled
    (then closes it)."""
    slack = SlackImagine(service, settings)
    if not settings.slack_app_token:
        public.add_post(EVENTS_PATH, events_handler(slack))

    async def serve() -> None:
        try:
            if settings.slack_app_token:
                handler = AsyncSocketModeHandler(slack.app, settings.slack_app_token)
                await handler.connect_async()
                service.platform_checks["slack"] = lambda: not handler.client.closed
                try:
                    await asyncio.Event().wait()
                finally:
                    await handler.close_async()
            else:
                # Requests come through ``public``, which answers for itself.
                await asyncio.Event().wait()
        finally:
            service.platform_checks["slack"] = lambda: False
            await slack.aclose()

    return serve


async def serve_slack(service: ImagineService, settings: Settings) -> None:
    """Run the Slack app alone (with its own web server in HTTP mode) until cancelled."""
    public = PublicWeb(settings)
    serve = prepare_slack(service, settings, public)
    await asyncio.gather(serve(), public.serve())
