"""A loopback fake of Discord's REST API and gateway, for driving the real discord.py client.

One aiohttp server on 127.0.0.1 plays Discord: the REST routes a slash-command
bot uses under ``/api/v10`` and a gateway websocket speaking plain JSON text
frames (HELLO, IDENTIFY, READY, GUILD_CREATE, heartbeats). A test sends
interactions (slash commands, autocomplete, button clicks) as
INTERACTION_CREATE events and reads back everything the bot did with each
interaction's token: its callback, the edits of its original message and its
follow-ups, with uploaded files as bytes.

The application sells SKUs (``add_sku``): a test makes a user buy one
(``purchase``), which Discord announces as ENTITLEMENT_CREATE, or refunds it
(``refund``, ENTITLEMENT_DELETE); the bot lists entitlements and consumes them
through the REST routes, and each consume request is recorded.

Every gateway connection is a session of the shard it named in IDENTIFY, and
events are routed as Discord routes them: a guild's to the sessions of shard
``(guild_id >> 22) % shard_count``, events without a guild to shard 0's. The
bot is in ``GUILD_ID`` (shard 1 of 2) and any guild a test adds (``add_guild``;
``OTHER_GUILD_ID`` is on shard 0 of 2); each session's READY and GUILD_CREATE
name only its shard's guilds, and commands sync per guild.

A shard named in IDENTIFY while a session of that shard is still connected is
refused with 4010 Invalid shard, which discord.py does not retry: it closes
the whole client, every shard of it. A test whose shard ranges overlap fails
loudly instead of answering twice.
Discord itself lets the second session in, and sends both the shard's events
(a bot run twice answers twice); ``allow_duplicate_shards`` behaves so, for a
harness that connects two bots on purpose.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import mimetypes
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import BodyPartReader, WSMsgType, web

TOKEN = "fake-discord-bot-token"
APPLICATION_ID = 900_000_000_000_000_001
GUILD_ID = 900_000_000_000_000_002
"""The bot's server: on shard ``(GUILD_ID >> 22) % 2 == 1`` of two."""
OTHER_GUILD_ID = GUILD_ID + (1 << 22)
"""A server on the other shard of two (shard 0), for a test to ``add_guild``."""
CHANNEL_ID = 900_000_000_000_000_003
EPHEMERAL = 64
DEFAULT_ATTACHMENT_LIMIT = 10 * 1024 * 1024
# How long a test waits for the bot before failing; generous for shared, noisy machines.
_PATIENCE_SECONDS = 10
LISTEN_BACKLOG = 4096

# Gateway close codes (Discord's numbers).
INVALID_SHARD = 4010

# SKU types, entitlement types and error codes (Discord's numbers).
DURABLE = 2
CONSUMABLE = 3
PURCHASE = 1
TEST_MODE_PURCHASE = 4
UNKNOWN_ENTITLEMENT = 10029
SKU_AVAILABLE = 1 << 2
"""The SKU flag of one on sale."""
DISCORD_EPOCH_MS = 1_420_070_400_000

# Interaction callback types (Discord's numbers).
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE = 6
UPDATE_MESSAGE = 7
AUTOCOMPLETE_RESULT = 8
MODAL = 9

# Button styles (Discord's numbers).
PREMIUM_BUTTON = 6
"""A button that opens the purchase of its ``sku_id``; clicking it sends the app nothing."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    roles: tuple[int, ...] = ()
    """Role ids the user has as a member of the test server (``SUPPORTER_ROLE`` is one it knows)."""

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name.title(),
            "discriminator": "0",
            "avatar": None,
            "bot": False,
        }


BOT = User(APPLICATION_ID, "imagine")
ALICE = User(900_000_000_000_000_101, "alice")
BOB = User(900_000_000_000_000_102, "bob")
SUPPORTER_ROLE = 900_000_000_000_000_777


@dataclass(frozen=True)
class FollowupFault:
    """How the fake fails an interaction's ``number``th follow-up (1 is the first), as Discord
    or the network between might.

    ``refuse``: answer ``status`` and post nothing. ``reset``: post it, then drop the
    connection unanswered. ``hang``: post it, then never answer. ``stall``: post nothing
    and never answer.
    """

    number: int
    kind: Literal["refuse", "reset", "hang", "stall"]
    status: int = 400


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Message:
    """A message the bot posted or edited, with every version of its content kept."""

    id: int
    channel_id: int
    content: str
    flags: int
    components: list[dict[str, Any]]
    files: list[UploadedFile]
    versions: list[str] = field(default_factory=list)
    updated_at: float = field(default_factory=time.perf_counter)
    """When it was posted or last edited (``time.perf_counter``)."""
    files_base: str = "https://cdn.example"
    """Where the fake serves its attachments: each at ``{files_base}/{id}/{filename}``."""
    deleted: bool = False
    """Deleted by the bot: gone from the channel, kept here for the test to look at."""

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [
            component
            for row in self.components
            for component in row.get("components", [])
            if component.get("type") == 2
        ]

    @property
    def premium_buttons(self) -> list[int]:
        """The SKU id of each premium button shown, in order."""
        return [int(b["sku_id"]) for b in self.buttons if b.get("style") == PREMIUM_BUTTON]

    def button(self, label_start: str) -> dict[str, Any]:
        [found] = [b for b in self.buttons if b.get("label", "").startswith(label_start)]
        return found

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "guild_id": str(GUILD_ID),
            "author": BOT.payload() | {"bot": True},
            "content": self.content,
            "timestamp": datetime.now(UTC).isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [
                {
                    "id": str(self.id * 100 + number),
                    "filename": upload.filename,
                    "size": len(upload.data),
                    "url": f"{self.files_base}/{self.id}/{upload.filename}",
                    "proxy_url": f"{self.files_base}/{self.id}/{upload.filename}",
                    # As Discord does: from the name, whatever type the upload was sent as.
                    "content_type": mimetypes.guess_type(upload.filename)[0] or upload.content_type,
                }
                for number, upload in enumerate(self.files)
            ],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": self.flags,
            "components": self.components,
            "webhook_id": str(APPLICATION_ID),
            "application_id": str(APPLICATION_ID),
        }


@dataclass
class Interaction:
    """One interaction sent to the bot, and what the bot answered with its token."""

    id: int
    token: str
    user: User
    callbacks: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    original_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    followups_tried: int = 0
    """Follow-ups the bot sent with this token, answered or not."""
    sent_at: float = 0.0
    """``time.perf_counter()`` when the event went out, and when answers came in (for benchmarks)."""
    answered_at: float | None = None
    followed_up_at: float | None = None

    @property
    def callback_type(self) -> int | None:
        return self.callbacks[0][0] if self.callbacks else None


@dataclass
class Sku:
    """A premium offering of the application; ``type`` is ``CONSUMABLE`` or ``DURABLE``."""

    id: int
    name: str
    type: int = CONSUMABLE

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "application_id": str(APPLICATION_ID),
            "name": self.name,
            "slug": self.name.lower().replace(" ", "-"),
            "flags": SKU_AVAILABLE,
        }


@dataclass
class Entitlement:
    """A user's purchase of a SKU, as Discord keeps it; the bot changes ``consumed``."""

    id: int
    sku_id: int
    user_id: int
    type: int
    starts_at: datetime
    ends_at: datetime | None = None
    """None for a one-time purchase, which never ends."""
    consumed: bool = False
    deleted: bool = False
    """Refunded (or revoked): listed only when asked for with ``exclude_deleted=false``."""

    @property
    def ended(self) -> bool:
        return self.ends_at is not None and self.ends_at <= datetime.now(UTC)

    @property
    def active(self) -> bool:
        """Still gives the user what was bought: not refunded, consumed, nor ended."""
        return not (self.deleted or self.consumed or self.ended)

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "sku_id": str(self.sku_id),
            "application_id": str(APPLICATION_ID),
            "user_id": str(self.user_id),
            "promotion_id": None,
            "type": self.type,
            "deleted": self.deleted,
            "gift_code_flags": 0,
            "consumed": self.consumed,
            "starts_at": self.starts_at.isoformat(),
            "ends_at": None if self.ends_at is None else self.ends_at.isoformat(),
        }


class PurchaseRefused(Exception):
    """Discord's store would not sell this: an unknown SKU, or one the user holds unconsumed."""


@dataclass
class GatewaySession:
    """One gateway connection: the shard it identified as, and the events it was sent."""

    number: int
    """Its place in the order connections were opened, from 0 (what ``listener`` names)."""
    socket: web.WebSocketResponse = field(repr=False)
    shard: tuple[int, int] | None = None
    """``(shard_id, shard_count)`` from IDENTIFY, ``(0, 1)`` when it named none; None before."""
    ready: bool = False
    """READY and its shard's guilds were sent: events may follow."""
    events: list[str] = field(default_factory=list)
    """The name of every dispatch sent on it, in order (READY and GUILD_CREATE included)."""
    close_code: int | None = None
    """The code the fake closed it with, when the fake refused it."""
    _sequence: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @property
    def connected(self) -> bool:
        return not self.socket.closed

    def owns(self, guild_id: int | None) -> bool:
        """Whether Discord sends this session the events of ``guild_id`` (None: no guild)."""
        if self.shard is None:
            return False
        shard_id, shard_count = self.shard
        if guild_id is None:
            # Direct messages, entitlements and other events without a guild.
            return shard_id == 0
        return (guild_id >> 22) % shard_count == shard_id

    async def send(self, event: str, data: dict[str, Any]) -> None:
        frame = {"op": 0, "t": event, "s": next(self._sequence), "d": data}
        self.events.append(event)
        await self.socket.send_str(json.dumps(frame))


class LoopbackDiscord:
    """Start with ``async with LoopbackDiscord() as discord_fake``; point the client at ``api_base``."""

    def __init__(self) -> None:
        self.api_base = ""
        self.gateway_url = ""
        self.commands: dict[str, list[dict[str, Any]]] = {}
        """Commands as last PUT, by scope: "global" or the guild id."""
        self.sync_calls: list[tuple[str, list[dict[str, Any]]]] = []
        self.messages: dict[int, Message] = {}
        self.channel_posts: dict[int, list[Message]] = {}
        """Messages the bot sent with ``POST /channels/{id}/messages``, by channel id."""
        self.interactions: dict[str, Interaction] = {}
        self.downloads: dict[str, bytes] = {}
        self.attachment_limit = DEFAULT_ATTACHMENT_LIMIT
        """The per-file upload limit every interaction announces."""
        self.fail_followups_with: int | None = None
        """An HTTP status to refuse follow-ups with, to test failed uploads."""
        self.followup_fault: FollowupFault | None = None
        """One follow-up of each interaction to fail, to test an upload failing part-way."""
        self.fail_history_with: int | None = None
        """An HTTP status to refuse reading a channel's messages with (no Read Message History)."""
        self.history_reads = 0
        self.fail_callbacks_with: int | None = None
        """An HTTP status to refuse interaction callbacks with, as Discord does once an
        interaction's 3 s have passed (404, Unknown interaction)."""
        self.refuse_commands_for: set[str] = set()
        """Guild ids whose command sync is refused, as for a server the bot was removed from."""
        self.fail_downloads_with: int | None = None
        """An HTTP status to refuse attachment downloads with, as an expired file URL would."""
        self._ids: Iterator[int] = itertools.count(900_000_000_000_100_000)
        self._changed = asyncio.Condition()
        self.skus: dict[int, Sku] = {}
        self.entitlements: dict[int, Entitlement] = {}
        """Every entitlement ever created, by id, refunded and consumed ones included."""
        self.consume_calls: list[int] = []
        self._consumes_held: asyncio.Event | None = None
        """The entitlement id of every consume request the bot made, in order, refused ones too."""
        self._last_snowflake = 0
        self.sessions: list[GatewaySession] = []
        """Every gateway connection, in the order they were opened, closed ones included."""
        self.guild_ids: list[int] = [GUILD_ID]
        """The servers the bot is in, each sent to its shard's sessions at IDENTIFY."""
        self.allow_duplicate_shards = False
        """False: a second session of a connected shard is closed (4010). True: let in, as
        Discord does (the latency benchmark keeps two bots connected)."""
        self.entitlement_listings = 0
        """How many times the bot listed entitlements (reconciling purchases at start-up)."""
        self.recommended_shards = 1
        """The shard count ``GET /gateway/bot`` recommends (what an ``AutoShardedClient`` runs)."""
        self.listener: int | None = None
        """None: events go where Discord sends them, to every connected session of the shard
        they belong to (two sessions of one shard both get them, as on Discord). A number:
        only to that session, as if the others were different bots (the latency benchmark
        keeps two bots connected and alternates)."""
        self._closing = asyncio.Event()
        """Set when the fake stops: what a hanging request waits for."""
        self._runner: web.AppRunner | None = None

    # -- running --------------------------------------------------------------

    async def __aenter__(self) -> LoopbackDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/files/{name}", self._download)
        app.router.add_get("/files/{message}/{name}", self._download_posted)
        routes = [
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("GET", "/gateway/bot", self._gateway_bot),
            ("GET", "/applications/{app}/commands", self._get_commands),
            ("PUT", "/applications/{app}/commands", self._put_commands),
            ("GET", "/applications/{app}/guilds/{guild}/commands", self._get_commands),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self._put_commands),
            ("POST", "/interactions/{id}/{token}/callback", self._callback),
            ("GET", "/webhooks/{app}/{token}/messages/{message}", self._get_webhook_message),
            ("PATCH", "/webhooks/{app}/{token}/messages/{message}", self._edit_webhook_message),
            ("DELETE", "/webhooks/{app}/{token}/messages/{message}", self._delete_webhook_message),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("GET", "/channels/{channel}/messages", self._channel_messages),
            ("POST", "/channels/{channel}/messages", self._create_message),
            ("DELETE", "/channels/{channel}/messages/{message}", self._delete_channel_message),
            ("POST", "/users/@me/channels", self._open_direct_messages),
            ("GET", "/applications/{app}/skus", self._list_skus),
            ("GET", "/applications/{app}/entitlements", self._list_entitlements),
            ("GET", "/applications/{app}/entitlements/{entitlement}", self._get_entitlement),
            (
                "POST",
                "/applications/{app}/entitlements/{entitlement}/consume",
                self._consume_entitlement,
            ),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, "/api/v10" + path, self._authorised(handler))
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        # Discord takes thousands of connections at once; with the default backlog
        # of 128 a burst's further connects are dropped and retried only after 1 s.
        await web.TCPSite(self._runner, "127.0.0.1", 0, backlog=LISTEN_BACKLOG).start()
        port = self._runner.addresses[0][1]
        self.api_base = f"http://127.0.0.1:{port}/api/v10"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"
        self.files_base = f"http://127.0.0.1:{port}/files"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._closing.set()
        for session in self.sessions:
            await session.socket.close()
        assert self._runner is not None
        await self._runner.cleanup()

    async def wait_until_ready(self) -> None:
        """Wait until the newest gateway connection has identified and been sent its guilds."""
        await self.wait_for(lambda: self.sessions and self.sessions[-1].ready)

    async def wait_for(
        self, condition: Callable[[], object], patience: float = _PATIENCE_SECONDS
    ) -> None:
        """Wait until ``condition()`` holds; it is re-checked after every change the bot makes."""
        async with asyncio.timeout(patience), self._changed:
            await self._changed.wait_for(condition)

    # -- what a test does -----------------------------------------------------

    def add_guild(self, guild_id: int) -> None:
        """Put the bot in server ``guild_id`` too: sessions that identify from now on get it."""
        self.guild_ids.append(guild_id)

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: User = ALICE,
        attachment: tuple[str, str, bytes] | None = None,
        attachment_size: int | None = None,
        attachments: dict[str, tuple[str, str, bytes]] | None = None,
        guild: int | None = GUILD_ID,
    ) -> Interaction:
        """Run ``/name`` with ``options``; ``attachment`` is ``(filename, type, bytes)`` for its attachment option.

        ``attachment_size``: the size Discord reports for it, when not its length.
        ``attachments``: for a command with several attachment options, each one's file by option name.
        ``guild``: the server it is run in; None for a direct message with the bot.
        """
        command, scope = self._command(name, guild)
        typed = {option["name"]: option for option in command.get("options", [])}
        values = []
        resolved: dict[str, Any] = {}
        for key, value in (options or {}).items():
            kind = typed[key]["type"]
            if kind == 6:
                assert isinstance(value, User)
                resolved.setdefault("users", {})[str(value.id)] = value.payload()
                resolved.setdefault("members", {})[str(value.id)] = _member(value, with_user=False)
                value = str(value.id)
            values.append({"name": key, "type": kind, "value": value})
        files = dict(attachments or {})
        if attachment is not None:
            [option] = [o for o in command["options"] if o["type"] == 11]
            files[option["name"]] = attachment
        for option_name, (filename, content_type, data) in files.items():
            attachment_id = next(self._ids)
            self.downloads[f"{attachment_id}-{filename}"] = data
            values.append({"name": option_name, "type": 11, "value": str(attachment_id)})
            size = len(data) if attachment_size is None else attachment_size
            resolved.setdefault("attachments", {})[str(attachment_id)] = {
                "id": str(attachment_id),
                "filename": filename,
                "size": size,
                "content_type": content_type,
                "url": f"{self.files_base}/{attachment_id}-{filename}",
                "proxy_url": f"{self.files_base}/{attachment_id}-{filename}",
            }
        data = {"id": command["id"], "name": name, "type": 1, "options": values}
        if scope != "global":
            data["guild_id"] = scope
        if resolved:
            data["resolved"] = resolved
        return await self._send(2, data, user, guild=guild)

    async def autocomplete(
        self,
        name: str,
        options: dict[str, str],
        focused: str,
        *,
        user: User = ALICE,
        guild: int | None = GUILD_ID,
    ) -> list[dict[str, Any]]:
        """The choices the bot offers for option ``focused`` while ``options`` are typed."""
        command, scope = self._command(name, guild)
        typed = {option["name"]: option for option in command.get("options", [])}
        values = [
            {"name": key, "type": typed[key]["type"], "value": value}
            | ({"focused": True} if key == focused else {})
            for key, value in options.items()
        ]
        data = {"id": command["id"], "name": name, "type": 1, "options": values}
        if scope != "global":
            data["guild_id"] = scope
        interaction = await self._send(4, data, user, guild=guild)
        await self.wait_for(lambda: interaction.callbacks)
        callback_type, body = interaction.callbacks[0]
        assert callback_type == AUTOCOMPLETE_RESULT
        return list(body["choices"])

    async def click(
        self,
        message: Message,
        button: dict[str, Any],
        *,
        user: User = ALICE,
        guild: int | None = GUILD_ID,
    ) -> Interaction:
        """Press ``button`` on ``message`` as ``user``."""
        data = {"custom_id": button["custom_id"], "component_type": 2}
        return await self._send(3, data, user, message=message, guild=guild)

    async def submit(
        self,
        form: Interaction,
        values: dict[str, str],
        *,
        user: User = ALICE,
        guild: int | None = GUILD_ID,
    ) -> Interaction:
        """Submit the form (modal) the bot answered ``form`` with, its fields set to ``values``
        by custom id, as ``user``: a modal submit interaction (type 5)."""
        [shown] = [data for kind, data in form.callbacks if kind == MODAL]
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]}
            for key, value in values.items()
        ]
        data = {"custom_id": shown["custom_id"], "components": rows}
        return await self._send(5, data, user, guild=guild)

    def form_fields(self, form: Interaction) -> dict[str, Any]:
        """The text inputs of the form the bot answered ``form`` with, by custom id."""
        [shown] = [data for kind, data in form.callbacks if kind == MODAL]
        return {
            field["custom_id"]: field
            for row in shown["components"]
            for field in row.get("components", [row.get("component")])
            if field is not None and field.get("type") == 4
        }

    def hold_consumes(self) -> None:
        """From now on a consume call waits, consuming nothing, until ``release_consumes``:
        a bot killed between granting a purchase and consuming its entitlement."""
        self._consumes_held = asyncio.Event()

    def release_consumes(self) -> None:
        """Held consume calls end (503) without consuming; later ones consume again."""
        if self._consumes_held is not None:
            self._consumes_held.set()
            self._consumes_held = None

    def add_sku(self, sku_id: int, name: str, *, type: int = CONSUMABLE) -> Sku:
        """Put a one-time purchase on sale: a credit pack is ``CONSUMABLE``."""
        sku = Sku(sku_id, name, type)
        self.skus[sku_id] = sku
        return sku

    async def purchase(
        self,
        user: User,
        sku_id: int,
        *,
        test_mode: bool = False,
        announce: bool = True,
        ends_at: datetime | None = None,
    ) -> dict[str, Any]:
        """``user`` buys SKU ``sku_id``: the entitlement as Discord sends it, in ENTITLEMENT_CREATE.

        ``test_mode``: bought in Application Test Mode (type 4, no charge), where a
        consumable may be bought again before the last one is consumed.
        ``announce``: False creates it without the event, as one sent while the bot was
        down (the bot finds it only by listing). ``ends_at``: when it stops being valid.
        Raises ``PurchaseRefused`` where Discord's store would not sell it.
        """
        sku = self.skus.get(sku_id)
        if sku is None or sku.type not in (CONSUMABLE, DURABLE):
            raise PurchaseRefused(f"SKU {sku_id} is not a one-time purchase on sale")
        held = [
            entitlement
            for entitlement in self.entitlements.values()
            if (entitlement.user_id, entitlement.sku_id) == (user.id, sku_id)
            and not (entitlement.deleted or entitlement.consumed)
        ]
        # A consumable cannot be bought again until the app consumes it; a durable, ever.
        if held and not (test_mode and sku.type == CONSUMABLE):
            raise PurchaseRefused(f"{user.name} holds SKU {sku_id} unconsumed: {held[0].id}")
        entitlement = Entitlement(
            id=self._snowflake(),
            sku_id=sku_id,
            user_id=user.id,
            type=TEST_MODE_PURCHASE if test_mode else PURCHASE,
            starts_at=datetime.now(UTC),
            ends_at=ends_at,
        )
        self.entitlements[entitlement.id] = entitlement
        payload = entitlement.payload()
        if announce:
            # Entitlement events have no guild: they go to shard 0.
            await self._dispatch("ENTITLEMENT_CREATE", payload, guild=None)
        return payload

    async def refund(self, entitlement_id: int, *, announce: bool = True) -> dict[str, Any]:
        """Discord refunds (or revokes) an entitlement: deleted, announced in ENTITLEMENT_DELETE."""
        entitlement = self.entitlements[entitlement_id]
        entitlement.deleted = True
        payload = entitlement.payload()
        if announce:
            await self._dispatch("ENTITLEMENT_DELETE", payload, guild=None)
        return payload

    @property
    def consume_counts(self) -> Counter[int]:
        """How many consume requests the bot made for each entitlement id."""
        return Counter(self.consume_calls)

    def _snowflake(self) -> int:
        """A new id whose time is now, as Discord's are: ``created_at`` and paging by date work."""
        now = (time.time_ns() // 1_000_000 - DISCORD_EPOCH_MS) << 22
        self._last_snowflake = max(now, self._last_snowflake + 1)
        return self._last_snowflake

    def original(self, interaction: Interaction) -> Message:
        assert interaction.original_id is not None, "the bot has not answered this interaction"
        return self.messages[interaction.original_id]

    def followups(self, interaction: Interaction) -> list[Message]:
        return [self.messages[message_id] for message_id in interaction.followup_ids]

    # -- INTERACTION_CREATE ---------------------------------------------------

    async def _send(
        self,
        kind: int,
        data: dict[str, Any],
        user: User,
        *,
        message: Message | None = None,
        guild: int | None = GUILD_ID,
    ) -> Interaction:
        interaction = Interaction(next(self._ids), f"token-{next(self._ids)}", user)
        if message is not None:
            # A component's original response is the message it sits on.
            interaction.original_id = message.id
        self.interactions[interaction.token] = interaction
        payload: dict[str, Any] = {
            "id": str(interaction.id),
            "application_id": str(APPLICATION_ID),
            "type": kind,
            "data": data,
            "channel_id": str(CHANNEL_ID),
            "channel": _channel(guild),
            "token": interaction.token,
            "version": 1,
            "app_permissions": "51200",
            "locale": "en-US",
            "guild_locale": "en-US",
            # What the user holds and has not used up, as Discord tells a monetized app.
            "entitlements": [
                entitlement.payload()
                for entitlement in self.entitlements.values()
                if entitlement.user_id == user.id and entitlement.active
            ],
            "attachment_size_limit": self.attachment_limit,
        }
        if guild is None:
            # A direct message with the bot: no server, no member, the user as is.
            payload |= {"user": user.payload(), "context": 1, "authorizing_integration_owners": {}}
        else:
            payload |= {
                "guild_id": str(guild),
                "member": _member(user, with_user=True),
                "context": 0,
                "authorizing_integration_owners": {"0": str(guild)},
            }
        if message is not None:
            payload["message"] = message.payload() | (
                {} if guild is None else {"guild_id": str(guild)}
            )
        interaction.sent_at = time.perf_counter()
        await self._dispatch("INTERACTION_CREATE", payload, guild=guild)
        return interaction

    async def _dispatch(self, event: str, data: dict[str, Any], *, guild: int | None) -> None:
        """Send ``event`` to the sessions Discord sends ``guild``'s events to (None: no guild).

        Waits for such a session to be ready: a test sends events once a bot is starting.
        """
        async with asyncio.timeout(_PATIENCE_SECONDS), self._changed:
            await self._changed.wait_for(lambda: self._recipients(guild))
        for session in self._recipients(guild):
            await session.send(event, data)

    def _recipients(self, guild: int | None) -> list[GatewaySession]:
        if self.listener is not None:
            # Slicing, so -1 names the newest and a session not yet open names none.
            chosen = self.sessions[self.listener :][:1]
            return [session for session in chosen if session.ready and session.connected]
        return [
            session
            for session in self.sessions
            if session.ready and session.connected and session.owns(guild)
        ]

    def _command(self, name: str, guild: int | None) -> tuple[dict[str, Any], str]:
        """The command as synced to ``guild``, else globally, else (a direct message with
        commands synced only to guilds) to any guild."""
        preferred = [str(guild), "global"]
        scopes = sorted(
            self.commands, key=lambda scope: preferred.index(scope) if scope in preferred else 2
        )
        for scope in scopes:
            for command in self.commands[scope]:
                if command["name"] == name:
                    return command, scope
        raise AssertionError(f"/{name} was never synced; synced: {self.commands}")

    # -- gateway --------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        session = GatewaySession(len(self.sessions), socket)
        self.sessions.append(session)
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 45_000}})
        try:
            async for frame in socket:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                if message["op"] == 1:
                    await socket.send_json({"op": 11})
                elif message["op"] == 2:
                    await self._identify(session, message.get("d") or {})
        finally:
            # Whoever waits for a session to send to looks again.
            await self._notify()
        return socket

    async def _identify(self, session: GatewaySession, identify: dict[str, Any]) -> None:
        socket = session.socket
        shard = identify.get("shard")
        shard_id, shard_count = (0, 1) if shard is None else shard
        if not 0 <= shard_id < shard_count:
            # Discord's answer to a shard it cannot place: close, Invalid shard, no reconnect.
            session.close_code = INVALID_SHARD
            await socket.close(code=INVALID_SHARD, message=b"Invalid shard.")
            return
        if not self.allow_duplicate_shards and any(
            other.shard == (shard_id, shard_count) and other.connected for other in self.sessions
        ):
            session.close_code = INVALID_SHARD
            await socket.close(code=INVALID_SHARD, message=b"Shard already connected.")
            return
        session.shard = (shard_id, shard_count)
        # Only the guilds of this shard, as Discord sends them.
        guilds = [guild for guild in self.guild_ids if session.owns(guild)]
        ready = {
            "v": 10,
            "user": BOT.payload() | {"bot": True},
            "guilds": [{"id": str(guild), "unavailable": True} for guild in guilds],
            "session_id": f"fake-session-{session.number}",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(APPLICATION_ID), "flags": 0},
        }
        if shard is not None:
            ready["shard"] = [shard_id, shard_count]
        await session.send("READY", ready)
        for guild in guilds:
            await session.send("GUILD_CREATE", self._guild(guild))
        session.ready = True
        await self._notify()

    def _guild(self, guild_id: int) -> dict[str, Any]:
        return {
            "id": str(guild_id),
            "name": "Test Server",
            "unavailable": False,
            "member_count": 3,
            "channels": [_channel(guild_id)],
            "roles": [
                {
                    "id": str(SUPPORTER_ROLE),
                    "name": "Supporter",
                    "permissions": "0",
                    "position": 1,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                },
                {
                    "id": str(guild_id),
                    "name": "@everyone",
                    "permissions": "104324673",
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                },
            ],
            "members": [],
            "threads": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "emojis": [],
            "stickers": [],
            "features": [],
            "owner_id": str(ALICE.id),
        }

    # -- REST -----------------------------------------------------------------

    def _authorised(self, handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def checked(request: web.Request) -> web.Response:
            # Interaction callbacks and webhooks are authorised by their token instead.
            tokened = "token" in request.match_info
            if not tokened and request.headers.get("Authorization") != f"Bot {TOKEN}":
                return _json({"message": "401: Unauthorized", "code": 0}, status=401)
            response: web.Response = await handler(request)
            async with self._changed:
                self._changed.notify_all()
            return response

        return checked

    async def _me(self, _request: web.Request) -> web.Response:
        return _json(BOT.payload() | {"bot": True})

    async def _application(self, _request: web.Request) -> web.Response:
        return _json(
            {
                "id": str(APPLICATION_ID),
                "name": "Imagine",
                "icon": None,
                "description": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": ALICE.payload(),
                "flags": 0,
            }
        )

    async def _gateway_bot(self, _request: web.Request) -> web.Response:
        return _json(
            {
                "url": self.gateway_url,
                "shards": self.recommended_shards,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_commands(self, request: web.Request) -> web.Response:
        return _json(self.commands.get(request.match_info.get("guild", "global"), []))

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope = request.match_info.get("guild", "global")
        if scope in self.refuse_commands_for:
            return _json({"message": "Missing Access", "code": 50001}, status=403)
        payload = await request.json()
        self.sync_calls.append((scope, payload))
        self.commands[scope] = [
            command
            | {
                "id": str(next(self._ids)),
                "application_id": str(APPLICATION_ID),
                "version": str(next(self._ids)),
                "type": command.get("type", 1),
            }
            | ({"guild_id": scope} if scope != "global" else {})
            for command in payload
        ]
        return _json(self.commands[scope])

    async def _callback(self, request: web.Request) -> web.Response:
        if self.fail_callbacks_with is not None:
            status = self.fail_callbacks_with
            return _json({"message": "Unknown interaction", "code": 10062}, status=status)
        interaction = self.interactions[request.match_info["token"]]
        interaction.answered_at = interaction.answered_at or time.perf_counter()
        body, files = await _read_body(request)
        kind = body["type"]
        data = body.get("data") or {}
        if (refusal := _refuse_invalid_message(data)) is not None:
            return refusal
        interaction.callbacks.append((kind, data))
        if kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            message = self._post(data, files, default_flags=data.get("flags", 0))
            interaction.original_id = message.id
        elif kind == UPDATE_MESSAGE:
            self._edit(self.messages[interaction.original_id or 0], data, files)
        response: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": kind,
                "response_message_loading": kind == DEFERRED_CHANNEL_MESSAGE,
                "response_message_ephemeral": bool(data.get("flags", 0) & EPHEMERAL),
            }
        }
        if interaction.original_id is not None and kind != AUTOCOMPLETE_RESULT:
            response["interaction"]["response_message_id"] = str(interaction.original_id)
            response["resource"] = {
                "type": kind,
                "message": self.messages[interaction.original_id].payload(),
            }
        return _json(response)

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        return _json(self._webhook_message(request).payload())

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        message = self._webhook_message(request)
        body, files = await _read_body(request)
        if (refusal := _refuse_invalid_message(body)) is not None:
            return refusal
        self._edit(message, body, files)
        return _json(message.payload())

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        return self._delete(self._webhook_message(request))

    async def _delete_channel_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(_int_or(request.match_info["message"], 0))
        if message is None or message.channel_id != int(request.match_info["channel"]):
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        return self._delete(message)

    def _delete(self, message: Message) -> web.Response:
        if message.deleted:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        message.deleted = True
        return web.Response(status=204)

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self.interactions[request.match_info["token"]]
        interaction.followups_tried += 1
        await self._notify()
        if self.fail_followups_with is not None:
            status = self.fail_followups_with
            return _json({"message": "Request entity too large", "code": 40005}, status=status)
        fault = self.followup_fault
        if fault is not None and fault.number == interaction.followups_tried:
            if fault.kind == "refuse":
                return _json({"message": "Refused", "code": 0}, status=fault.status)
            if fault.kind == "stall":
                await self._closing.wait()
                return _json({"message": "Gone", "code": 0}, status=503)
        body, files = await _read_body(request)
        if (refusal := _refuse_invalid_message(body)) is not None:
            return refusal
        message = self._post(body, files, default_flags=body.get("flags", 0))
        interaction.followup_ids.append(message.id)
        interaction.followed_up_at = time.perf_counter()
        if fault is not None and fault.number == interaction.followups_tried:
            await self._notify()
            if fault.kind == "reset":
                _drop_connection(request)
            await self._closing.wait()
        return _json(message.payload())

    async def _notify(self) -> None:
        """Wake ``wait_for`` before a request is answered (one that hangs never is)."""
        async with self._changed:
            self._changed.notify_all()

    async def _channel_messages(self, request: web.Request) -> web.Response:
        """The channel's messages everyone sees, newest first, as ``GET /channels/{id}/messages``."""
        self.history_reads += 1
        if self.fail_history_with is not None:
            status = self.fail_history_with
            return _json({"message": "Missing Access", "code": 50001}, status=status)
        channel = int(request.match_info["channel"])
        limit = int(request.query.get("limit", 50))
        shown = [
            message.payload()
            for message in sorted(self.messages.values(), key=lambda m: m.id, reverse=True)
            if message.channel_id == channel and not message.ephemeral and not message.deleted
        ]
        return _json(shown[:limit])

    async def _open_direct_messages(self, request: web.Request) -> web.Response:
        """``POST /users/@me/channels``: the bot's direct-message channel with a user, whose id
        is the user's (a fake's choice: Discord gives it an id of its own)."""
        recipient = int((await request.json())["recipient_id"])
        return _json(
            {
                "id": str(recipient),
                "type": 1,
                "recipients": [User(recipient, f"user{recipient}").payload()],
            }
        )

    async def _create_message(self, request: web.Request) -> web.Response:
        """``POST /channels/{id}/messages``: a message the bot sends itself, kept by channel in
        ``channel_posts`` (a direct message's channel is its recipient's id)."""
        body, files = await _read_body(request)
        message = self._post(body, files, default_flags=0)
        message.channel_id = int(request.match_info["channel"])
        self.channel_posts.setdefault(message.channel_id, []).append(message)
        return _json(message.payload())

    async def _list_skus(self, _request: web.Request) -> web.Response:
        return _json([sku.payload() for sku in self.skus.values()])

    async def _list_entitlements(self, request: web.Request) -> web.Response:
        """``GET /applications/{id}/entitlements``: filtered, then a page in ascending id order.

        With ``before``, the page is the ``limit`` entitlements just before it (still
        ascending); otherwise the first ``limit`` after ``after`` (or from the oldest):
        how discord.py's ``Client.entitlements()`` pages through them.
        """
        self.entitlement_listings += 1
        query = request.query
        try:
            user_id = _snowflake_param(query, "user_id")
            guild_id = _snowflake_param(query, "guild_id")
            before = _snowflake_param(query, "before")
            after = _snowflake_param(query, "after")
            sku_ids = _snowflakes_param(query, "sku_ids")
            limit = _int_param(query, "limit", default=100)
            exclude_ended = _boolean_param(query, "exclude_ended", default=False)
            exclude_deleted = _boolean_param(query, "exclude_deleted", default=True)
        except _FormError as refused:
            return _invalid_form_body(refused.field, refused.problem)
        if not 1 <= limit <= 100:
            return _invalid_form_body("limit", "Must be between 1 and 100.")
        chosen = [
            entitlement
            for entitlement in sorted(self.entitlements.values(), key=lambda e: e.id)
            if (user_id is None or entitlement.user_id == user_id)
            # Every entitlement here is a user's: none is a guild's.
            and guild_id is None
            and (sku_ids is None or entitlement.sku_id in sku_ids)
            and (before is None or entitlement.id < before)
            and (after is None or entitlement.id > after)
            and not (exclude_ended and entitlement.ended)
            and not (exclude_deleted and entitlement.deleted)
        ]
        page = chosen[-limit:] if before is not None else chosen[:limit]
        return _json([entitlement.payload() for entitlement in page])

    async def _get_entitlement(self, request: web.Request) -> web.Response:
        entitlement = self._entitlement(request)
        if entitlement is None:
            return _unknown_entitlement()
        return _json(entitlement.payload())

    async def _consume_entitlement(self, request: web.Request) -> web.Response:
        """Marks it consumed and answers 204, as Discord does.

        Discord's documentation does not say whether it also sends ENTITLEMENT_UPDATE;
        the fake sends nothing, so a bot must not wait for one.
        """
        self.consume_calls.append(_int_or(request.match_info["entitlement"], 0))
        entitlement = self._entitlement(request)
        if entitlement is None:
            return _unknown_entitlement()
        if self._consumes_held is not None:
            # Answered only once released, and consuming nothing: the bot is killed meanwhile.
            await self._consumes_held.wait()
            return web.Response(status=503)
        entitlement.consumed = True
        return web.Response(status=204)

    def _entitlement(self, request: web.Request) -> Entitlement | None:
        if request.match_info["app"] != str(APPLICATION_ID):
            return None
        return self.entitlements.get(_int_or(request.match_info["entitlement"], 0))

    async def _download(self, request: web.Request) -> web.Response:
        if self.fail_downloads_with is not None:
            return web.Response(status=self.fail_downloads_with)
        return web.Response(body=self.downloads[request.match_info["name"]])

    async def _download_posted(self, request: web.Request) -> web.Response:
        """An attachment of a message the bot posted, as Discord's CDN serves it."""
        if self.fail_downloads_with is not None:
            return web.Response(status=self.fail_downloads_with)
        message = self.messages[int(request.match_info["message"])]
        [upload] = [u for u in message.files if u.filename == request.match_info["name"]]
        return web.Response(body=upload.data, content_type=upload.content_type)

    def _webhook_message(self, request: web.Request) -> Message:
        interaction = self.interactions[request.match_info["token"]]
        target = request.match_info["message"]
        message_id = interaction.original_id if target == "@original" else int(target)
        return self.messages[message_id or 0]

    def _post(self, body: dict[str, Any], files: list[UploadedFile], default_flags: int) -> Message:
        content = body.get("content") or ""
        message = Message(
            id=next(self._ids),
            channel_id=CHANNEL_ID,
            content=content,
            flags=default_flags,
            components=list(body.get("components") or []),
            files=files,
            versions=[content],
            files_base=self.files_base,
        )
        self.messages[message.id] = message
        return message

    def _edit(self, message: Message, body: dict[str, Any], files: list[UploadedFile]) -> None:
        if "content" in body:
            message.content = body["content"] or ""
            message.versions.append(message.content)
        if "components" in body:
            message.components = list(body["components"] or [])
        if files:
            message.files = files
        message.updated_at = time.perf_counter()


async def _read_body(request: web.Request) -> tuple[dict[str, Any], list[UploadedFile]]:
    """The JSON of a request, from its body or its ``payload_json`` part, and any uploaded files."""
    if not request.content_type.startswith("multipart/"):
        return (await request.json() if request.can_read_body else {}), []
    body: dict[str, Any] = {}
    files: list[UploadedFile] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        data = await part.read()
        if part.name == "payload_json":
            body = json.loads(data)
        else:
            files.append(
                UploadedFile(
                    part.filename or "",
                    part.headers.get("Content-Type", "application/octet-stream"),
                    bytes(data),
                )
            )
    return body, files


MESSAGE_CONTENT_LIMIT = 2000


def _refuse_invalid_message(body: dict[str, Any]) -> web.Response | None:
    """Discord's 400 for a message it would not post, None for one it would."""
    return _refuse_long_content(body) or _refuse_bad_premium_buttons(body)


def _refuse_bad_premium_buttons(body: dict[str, Any]) -> web.Response | None:
    """Discord's answer to a premium button that has more than its ``sku_id``, or lacks it.

    discord.py builds ``ui.Button(sku_id=..., label=...)`` without complaint; Discord
    refuses a premium button with a custom_id, label, url or emoji.
    """
    for row_number, row in enumerate(body.get("components") or []):
        for number, component in enumerate(row.get("components", [])):
            if component.get("type") != 2 or component.get("style") != PREMIUM_BUTTON:
                continue
            extra = [
                key
                for key in ("custom_id", "label", "url", "emoji")
                if component.get(key) is not None
            ]
            if extra or not component.get("sku_id"):
                problem = f"A premium button needs a sku_id and no {', '.join(extra) or 'other'}."
                error = {"_errors": [{"code": "COMPONENT_INVALID", "message": problem}]}
                errors = {"components": {str(row_number): {"components": {str(number): error}}}}
                return _json({"message": "Invalid Form Body", "code": 50035, "errors": errors}, 400)
    return None


def _refuse_long_content(body: dict[str, Any]) -> web.Response | None:
    """Discord's answer to message content over its limit: 400, Invalid Form Body."""
    content = body.get("content") or ""
    if len(content) <= MESSAGE_CONTENT_LIMIT:
        return None
    error = {
        "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]
    }
    return _json({"message": "Invalid Form Body", "code": 50035, "errors": {"content": error}}, 400)


class _FormError(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _invalid_form_body(field: str, problem: str) -> web.Response:
    """Discord's 400 for a parameter it cannot take, its errors keyed by the parameter."""
    error = {"_errors": [{"code": "INVALID_FORM_BODY", "message": problem}]}
    return _json({"message": "Invalid Form Body", "code": 50035, "errors": {field: error}}, 400)


def _unknown_entitlement() -> web.Response:
    return _json({"message": "Unknown Entitlement", "code": UNKNOWN_ENTITLEMENT}, status=404)


def _snowflake_param(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise _FormError(name, "Value is not snowflake.")
    return int(value)


def _snowflakes_param(query: Mapping[str, str], name: str) -> set[int] | None:
    """A comma-delimited set of snowflakes, as ``sku_ids`` is sent."""
    value = query.get(name)
    if value is None:
        return None
    parts = value.split(",")
    if not all(part.isdigit() for part in parts):
        raise _FormError(name, "Value is not snowflake.")
    return {int(part) for part in parts}


def _int_param(query: Mapping[str, str], name: str, *, default: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not value.lstrip("-").isdigit():
        raise _FormError(name, "Value is not int.")
    return int(value)


def _boolean_param(query: Mapping[str, str], name: str, *, default: bool) -> bool:
    """A boolean query string as Discord reads it: true/True/1 or false/False/0."""
    value = query.get(name)
    if value is None:
        return default
    if value in ("true", "True", "1"):
        return True
    if value in ("false", "False", "0"):
        return False
    raise _FormError(name, "Value is not boolean.")


def _int_or(text: str, default: int) -> int:
    return int(text) if text.isdigit() else default


def _drop_connection(request: web.Request) -> None:
    """Close the connection without an answer, as a reset between Discord and the bot would."""
    assert request.transport is not None
    request.transport.abort()


def _json(payload: object, status: int = 200) -> web.Response:
    # discord.py only parses bodies whose Content-Type is exactly application/json.
    return web.Response(
        body=json.dumps(payload).encode(), status=status, content_type="application/json"
    )


def _channel(guild: int | None = GUILD_ID) -> dict[str, Any]:
    if guild is None:
        return {"id": str(CHANNEL_ID), "type": 1, "last_message_id": None, "recipients": []}
    return {
        "id": str(CHANNEL_ID),
        "type": 0,
        "guild_id": str(guild),
        "name": "general",
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
    }


def _member(user: User, *, with_user: bool) -> dict[str, Any]:
    member: dict[str, Any] = {
        "roles": [str(role) for role in user.roles],
        "joined_at": "2026-01-01T00:00:00+00:00",
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "permissions": "2147483647",
        "nick": None,
        "avatar": None,
    }
    if with_user:
        member["user"] = user.payload()
    return member
