"""A loopback fake of Slack's Web API, and a driver that sends signed requests to the bot.

The fake serves the Web API methods the bot calls (``auth.test``,
``conversations.join``/``info``/``open``, the three steps of ``files_upload_v2``,
``files.info``, the ``chat`` methods, ``views.open``), the upload URLs it hands out,
the files' ``url_private``, and ``response_url``s, which take at most five messages
each, as Slack's do; it records every call. ``completion_fault`` fails
``files.completeUploadExternal`` part-way, as Slack or the network might. The driver
signs slash commands, button clicks and modal submissions as Slack does
(``v0:{timestamp}:{body}``, HMAC-SHA256) and posts them to the bot's ``/slack/events``
over HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web

BOT_TOKEN = "xoxb-fake-token"
APP_TOKEN = "xapp-fake-token"
SIGNING_SECRET = "fake-signing-secret"
TEAM = "T0TEAM"
CHANNEL = "C0GENERAL"
PRIVATE_CHANNEL = "G0SECRET"
_PATIENCE_SECONDS = 10
LISTEN_BACKLOG = 4096
"""Slack takes thousands of connections at once (the default backlog is 128)."""
RESPONSE_URL_MESSAGES = 5
SHARE_TS = "1.000001"
"""The ts of every file share's message (``files.info``'s ``shares``)."""


def _json(value: Any) -> Any:
    """A JSON argument as the SDK sends it: as a string in a form, as itself in JSON."""
    return json.loads(value) if isinstance(value, str) else value


"""What one response_url takes; Slack refuses any more."""


def permalink(file_id: str) -> str:
    """The file's page in the fake workspace, as ``files.info`` gives it."""
    return f"https://fake.slack.example/files/U0BOT/{file_id}/image.png"


@dataclass(frozen=True)
class Upload:
    """Files completed into a channel by one ``files.completeUploadExternal``."""

    channel: str
    initial_comment: str
    files: list[tuple[str, bytes]]


@dataclass(frozen=True)
class CompletionFault:
    """How ``files.completeUploadExternal`` fails: after sharing the first ``shared`` files.

    ``error``: Slack answers 500 ``internal_error``. ``reset``: the connection drops
    unanswered. ``hang``: no answer ever comes.
    """

    shared: int
    kind: Literal["error", "reset", "hang"]


@dataclass
class LoopbackSlack:
    """Start with ``async with LoopbackSlack() as slack``; give the bot ``base_url``."""

    base_url: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    responses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    refused: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Messages a response_url refused (its sixth and later, or any once expired), by response id."""
    expired: set[str] = field(default_factory=set)
    uploads: list[Upload] = field(default_factory=list)
    member_of: set[str] = field(default_factory=lambda: {CHANNEL})
    private: set[str] = field(default_factory=lambda: {PRIVATE_CHANNEL})
    _bytes: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None
    _root: str = ""
    _socket: web.WebSocketResponse | None = None
    _socket_open: asyncio.Event = field(default_factory=asyncio.Event)
    socket_replies: list[dict[str, Any]] = field(default_factory=list)
    """What the bot sent back over the Socket Mode connection (acknowledgements)."""
    completion_fault: CompletionFault | None = None
    fail_files_info: bool = False
    """Refuse ``files.info`` (as for an app without the ``files:read`` scope)."""
    fail_conversations_open: bool = False
    """Refuse ``conversations.open`` (as for an app without the ``im:write`` scope)."""
    _shared_to: dict[str, set[str]] = field(default_factory=dict)
    """The channels each file was shared to, by file id."""
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Messages posted with ``chat.postMessage`` and not deleted, by ts."""

    async def __aenter__(self) -> LoopbackSlack:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/private/{file_id}", self._private)
        app.router.add_post("/respond/{response_id}", self._respond)
        app.router.add_get("/socket", self._socket_mode)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, backlog=LISTEN_BACKLOG).start()
        self._root = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self.base_url = f"{self._root}/api/"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._closing.set()
        if self._socket is not None:
            await self._socket.close()
        assert self._runner is not None
        await self._runner.cleanup()

    async def send_envelope(self, kind: str, payload: dict[str, Any]) -> str:
        """Deliver an event over Socket Mode as Slack does; returns its envelope id."""
        async with asyncio.timeout(_PATIENCE_SECONDS):
            await self._socket_open.wait()
        assert self._socket is not None
        envelope_id = f"envelope-{next(self._ids)}"
        await self._socket.send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": True,
            }
        )
        return envelope_id

    def socket_reply(self, envelope_id: str) -> dict[str, Any] | None:
        return next((r for r in self.socket_replies if r.get("envelope_id") == envelope_id), None)

    def response_url(self) -> str:
        response_id = f"r{next(self._ids)}"
        self.responses[response_id] = []
        return f"{self._root}/respond/{response_id}"

    def expire(self, response_url: str) -> None:
        """Let ``response_url`` outlive its 30 minutes: it takes no more messages."""
        self.expired.add(response_url.rsplit("/", 1)[1])

    def responded(self, response_url: str) -> list[dict[str, Any]]:
        """What the bot posted to ``response_url``, in order."""
        return self.responses[response_url.rsplit("/", 1)[1]]

    def called(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    async def wait_for(self, condition: Callable[[], object]) -> None:
        async with asyncio.timeout(_PATIENCE_SECONDS), self._changed:
            await self._changed.wait_for(condition)

    async def _changed_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        token = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        # The SDK sends some methods' arguments in the query string, others in the body.
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        else:
            params.update(await request.post())
        self.calls.append((method, params))
        if method == "files.completeUploadExternal" and self.completion_fault is not None:
            return await self._complete_part_way(request, params, self.completion_fault)
        answer = self._answer(method, params)
        await self._changed_now()
        return web.json_response(answer)

    async def _complete_part_way(
        self, request: web.Request, params: dict[str, Any], fault: CompletionFault
    ) -> web.Response:
        files = json.loads(params["files"])[: fault.shared]
        if files:
            self._share(str(params.get("channel_id", "")), params, files)
        await self._changed_now()
        if fault.kind == "error":
            return web.json_response({"ok": False, "error": "internal_error"}, status=500)
        if fault.kind == "reset":
            assert request.transport is not None
            request.transport.abort()
        await self._closing.wait()
        return web.json_response({"ok": False, "error": "gone"})

    def _share(self, channel: str, params: dict[str, Any], files: list[dict[str, Any]]) -> None:
        """Put ``files`` in ``channel`` with the caption; each file once, however often asked."""
        new = [entry for entry in files if channel not in self._shared_to.get(entry["id"], set())]
        for entry in new:
            self._shared_to.setdefault(entry["id"], set()).add(channel)
        if new:
            self.uploads.append(
                Upload(
                    channel,
                    str(params.get("initial_comment", "")),
                    [self._bytes[entry["id"]] for entry in new],
                )
            )

    def shared(self, channel: str) -> int:
        """How many files were shared to ``channel``."""
        return sum(channel in channels for channels in self._shared_to.values())

    def _answer(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://fake.slack.example/",
                "team": "Fake",
                "user": "imagine",
                "team_id": TEAM,
                "user_id": "U0BOT",
                "bot_id": "B0BOT",
            }
        if method == "apps.connections.open":
            return {"ok": True, "url": self._root.replace("http", "ws") + "/socket"}
        if method == "conversations.join":
            channel = str(params["channel"])
            if channel in self.private:
                return {"ok": False, "error": "method_not_supported_for_channel_type"}
            self.member_of.add(channel)
            return {"ok": True, "channel": {"id": channel}}
        if method == "conversations.info":
            channel = str(params["channel"])
            return {
                "ok": True,
                "channel": {
                    "id": channel,
                    "is_private": channel in self.private,
                    "is_member": channel in self.member_of,
                },
            }
        if method == "conversations.open":
            if self.fail_conversations_open:
                return {"ok": False, "error": "missing_scope", "needed": "im:write"}
            # A member's direct messages with the bot, which the bot is always in.
            channel = f"D{params['users']}"
            self.member_of.add(channel)
            return {"ok": True, "channel": {"id": channel}}
        if method == "files.getUploadURLExternal":
            file_id = f"F{next(self._ids)}"
            self._bytes[file_id] = (str(params["filename"]), b"")
            return {"ok": True, "file_id": file_id, "upload_url": f"{self._root}/upload/{file_id}"}
        if method == "files.completeUploadExternal":
            channel = str(params.get("channel_id", ""))
            if channel not in self.member_of:
                return {"ok": False, "error": "not_in_channel"}
            files = json.loads(params["files"])
            self._share(channel, params, files)
            return {"ok": True, "files": [{"id": entry["id"]} for entry in files]}
        if method == "files.info":
            if self.fail_files_info:
                return {"ok": False, "error": "missing_scope", "needed": "files:read"}
            file_id = str(params["file"])
            channels = sorted(self._shared_to.get(file_id, set()))
            public = [channel for channel in channels if channel not in self.private]
            private = [channel for channel in channels if channel in self.private]
            return {
                "ok": True,
                "file": {
                    "id": file_id,
                    "name": self._bytes[file_id][0],
                    "permalink": permalink(file_id),
                    "url_private": f"{self._root}/private/{file_id}",
                    "mimetype": "image/png",
                    "channels": public,
                    "groups": private,
                    "shares": {
                        kind: {channel: [{"ts": SHARE_TS}] for channel in shared}
                        for kind, shared in (("public", public), ("private", private))
                        if shared
                    },
                },
            }
        if method in ("chat.postMessage", "chat.postEphemeral", "chat.update"):
            ts = f"{time.time():.6f}"
            if method == "chat.postMessage":
                self.messages[ts] = params
            return {"ok": True, "channel": params.get("channel"), "ts": ts}
        if method == "chat.delete":
            ts = str(params["ts"])
            if ts not in self.messages and ts != SHARE_TS:
                return {"ok": False, "error": "message_not_found"}
            self.messages.pop(ts, None)
            return {"ok": True, "channel": params.get("channel"), "ts": ts}
        if method == "views.open":
            return {"ok": True, "view": {"id": f"V{next(self._ids)}", **_json(params["view"])}}
        return {"ok": False, "error": "unknown_method"}

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        filename, _ = self._bytes[file_id]
        self._bytes[file_id] = (filename, await request.read())
        await self._changed_now()
        return web.Response(text=f"OK - {len(self._bytes[file_id][1])}")

    async def _private(self, request: web.Request) -> web.Response:
        # As Slack serves url_private: to the bot's token only.
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.Response(status=403)
        _, data = self._bytes[request.match_info["file_id"]]
        return web.Response(body=data, content_type="image/png")

    async def _socket_mode(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._socket = socket
        await socket.send_json(
            {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0APP"}}
        )
        self._socket_open.set()
        async for frame in socket:
            if frame.type == aiohttp.WSMsgType.TEXT:
                self.socket_replies.append(json.loads(frame.data))
                await self._changed_now()
        return socket

    async def _respond(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        message = await request.json()
        if response_id in self.expired:
            refusal = "expired_url"
        elif len(self.responses[response_id]) >= RESPONSE_URL_MESSAGES:
            refusal = "used_url"
        else:
            self.responses[response_id].append(message)
            await self._changed_now()
            return web.Response(text="ok")
        # As Slack answers a response_url that takes no more: a 404 naming why, nothing shown.
        self.refused.append((response_id, message))
        await self._changed_now()
        return web.Response(status=404, text=refusal)


@dataclass
class SlackDriver:
    """Sends what Slack would send to the bot's events URL, signed with the signing secret."""

    events_url: str
    slack: LoopbackSlack
    session: aiohttp.ClientSession
    secret: str = SIGNING_SECRET

    async def command(
        self,
        command: str,
        text: str,
        *,
        user: str = "U0ALICE",
        team: str = TEAM,
        channel: str = CHANNEL,
        headers: dict[str, str] | None = None,
        timestamp: int | None = None,
        trigger_id: str | None = None,
        drop: tuple[str, ...] = (),
        extra: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], str]:
        """Run a slash command; returns the status, the acknowledgement's JSON and the response_url.

        ``team``: the workspace it is run in.
        ``trigger_id``: Slack's id of this invocation; by default a new one, as Slack gives.
        ``drop`` and ``extra``: fields to leave out of, or add to, what Slack sends.
        """
        response_url = self.slack.response_url()
        form = {
            "token": "legacy-token",
            "team_id": team,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text,
            "api_app_id": "A0APP",
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id or f"trigger-{time.time_ns()}",
        } | (extra or {})
        for name in drop:
            del form[name]
        status, body = await self._post(urllib.parse.urlencode(form), headers, timestamp)
        return status, (json.loads(body) if body.startswith("{") else {}), response_url

    async def click(
        self,
        action_id: str,
        value: str,
        *,
        user: str = "U0ALICE",
        team: str = TEAM,
        user_team: str | None = None,
        channel: str = CHANNEL,
        headers: dict[str, str] | None = None,
        response_url: str | None = None,
        message_ts: str | None = None,
    ) -> tuple[int, str]:
        """Press a button; returns the status and the response_url the bot answers on.

        ``message_ts``: the button is on that public message (by default, on an ephemeral one).

        ``team``: the workspace the click comes from.
        ``user_team``: the clicker's ``user.team_id`` (by default ``team``), which on an
        Enterprise organization is the org's id (``E…``) rather than the workspace's.
        """
        action = {
            "action_id": action_id,
            "block_id": "imagine_quote",
            "value": value,
            "type": "button",
            "action_ts": f"{time.time():.6f}",
        }
        return await self.click_raw(
            action,
            user=user,
            team=team,
            user_team=user_team,
            channel=channel,
            headers=headers,
            response_url=response_url,
            message_ts=message_ts,
        )

    async def click_raw(
        self,
        action: dict[str, Any],
        *,
        user: str = "U0ALICE",
        team: str = TEAM,
        user_team: str | None = None,
        channel: str = CHANNEL,
        headers: dict[str, str] | None = None,
        response_url: str | None = None,
        message_ts: str | None = None,
    ) -> tuple[int, str]:
        """Press a button described by ``action`` as Slack sends it (fields may be missing)."""
        response_url = response_url or self.slack.response_url()
        payload = {
            "type": "block_actions",
            "user": {"id": user, "team_id": user_team or team, "username": user.lower()},
            "api_app_id": "A0APP",
            "token": "legacy-token",
            "container": {"type": "message", "is_ephemeral": True, "channel_id": channel}
            if message_ts is None
            else {"type": "message", "message_ts": message_ts, "channel_id": channel},
            "trigger_id": f"trigger-{time.time_ns()}",
            "team": {"id": team, "domain": "fake"},
            "channel": {"id": channel, "name": "general"},
            "response_url": response_url,
            "actions": [action],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        status, _ = await self._post(body, headers, None)
        return status, response_url

    async def submit(
        self, view: dict[str, Any], values: dict[str, dict[str, str]], *, user: str = "U0ALICE"
    ) -> int:
        """Submit the modal ``view`` (as ``views.open`` was given it) with ``values``, by block
        id and action id, as Slack sends a ``view_submission``; returns the status."""
        payload = {
            "type": "view_submission",
            "team": {"id": TEAM, "domain": "fake"},
            "user": {"id": user, "team_id": TEAM, "username": user.lower()},
            "api_app_id": "A0APP",
            "token": "legacy-token",
            "trigger_id": f"trigger-{time.time_ns()}",
            "view": {
                **view,
                "id": "V0FORM",
                "team_id": TEAM,
                "state": {
                    "values": {
                        block: {
                            action: {"type": "plain_text_input", "value": value}
                            for action, value in inputs.items()
                        }
                        for block, inputs in values.items()
                    }
                },
            },
            "response_urls": [],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        status, _ = await self._post(body, None, None)
        return status

    async def _post(
        self, body: str, headers: dict[str, str] | None, timestamp: int | None
    ) -> tuple[int, str]:
        stamp = str(timestamp if timestamp is not None else int(time.time()))
        digest = hmac.new(
            self.secret.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256
        ).hexdigest()
        sent = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": f"v0={digest}",
            **(headers or {}),
        }
        async with self.session.post(self.events_url, data=body, headers=sent) as response:
            return response.status, await response.text()
