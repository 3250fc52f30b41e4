"""The Discord adapter: slash commands and buttons in, the shared flow's answers out.

It only translates. ``/imagine``'s native options become ``ImagineOptions`` for
``validate_request``; the quote is an ephemeral message with Generate and
Cancel buttons whose ids carry the request id, so they work after a restart;
a click holds the credits (milliseconds), answers, and generates in the
background while the message shows progress; the images are posted publicly
as a follow-up, with Again, Vary, Edit and Delete buttons whose ids carry the
generation id; the ephemeral message ends with the outcome and the balance.

Commands are synced only when their definitions changed since the last sync
recorded in the database (or on ``imagine-bot discord sync``), to the guilds
in ``DISCORD_GUILD_IDS`` or globally.
"""

# No ``from __future__ import annotations`` here: discord.py reads the command
# callbacks' annotations, and /imagine's count range comes from the registry.

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Optional, TypeVar

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from bot import messages, references, statements
from bot.credits import MAX_GRANT
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
from bot.images import TooLargeToSend, fit_within
from bot.parsing import CompareOptions, ImagineOptions
from bot.platform_limits import DISCORD_CHOICES, DISCORD_MESSAGE_CHARACTERS
from bot.prices import PriceAdmin, PriceCommand
from bot.progress import ProgressEvent
from bot.purchases import Notice
from bot.registry import ModelSpec
from bot.settings import Settings
from bot.subjects import check_new_subject
from bot.tasks import BackgroundTasks, Deadlines, answer_in_time
from bot.web import PublicWeb
from ledger import Generation, GenerationStatus
from providers.base import GeneratedImage, ReferenceImage

logger = logging.getLogger(__name__)
T = TypeVar("T")

_ATTACHMENTS_PER_MESSAGE = 10
_BYTES_PER_MESSAGE = 24_000_000
"""Below the 25 MB a whole message may carry (a limit Discord enforces on the request,
beyond each file's own), with room for the rest of the form."""
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
_SERVER_ERROR = 500
_RECENT_MESSAGES = 100
"""How far back in the channel a lost post is looked for (one page of history)."""
_ASK_WHEN_STOPPING_SECONDS = 5.0
"""How long a shutdown waits to learn whether the post it cut short arrived."""
# An interaction token lives 15 minutes; an expiry edit after that would fail.
_LONGEST_EDITABLE_SECONDS = 14 * 60
_SYNC_LEASE = timedelta(seconds=60)
"""How long a command sync may hold the lock before another process may take it over: it
takes a few requests per scope; a process killed while syncing delays the others' start-up
by at most this."""


@dataclass(frozen=True)
class ShownQuote:
    """Where a quote's buttons are, for disabling them when it expires: its message, by
    the command's webhook. Not the ``Interaction``, which would keep its whole payload
    and reply alive for minutes, for the garbage collector to walk again and again."""

    application_id: int
    token: str
    message_id: int


def discord_account(user: discord.abc.User) -> str:
    return discord_account_for(user.id)


def discord_account_for(user_id: int) -> str:
    return f"discord:{user_id}"


def _forget(_account: str, _interaction: discord.Interaction) -> None:
    """A /buy's token has expired: its buyer is told by direct message from then on."""


def discord_shown(account: str) -> str:
    """An account as Discord shows the person: a Discord user's mention, any other's id."""
    platform, _, user_id = account.partition(":")
    if platform == "discord" and user_id.isdigit():
        return messages.discord_account_name(int(user_id))
    return account


@dataclass(frozen=True)
class CommandSync:
    """What a command sync did: the scopes synced, and a sentence for each Discord refused."""

    synced: tuple[str, ...]
    refused: tuple[str, ...]


class ImagineBot(discord.AutoShardedClient):
    """The bot: a sharded client with the commands, running ``DISCORD_SHARD_IDS`` of
    ``DISCORD_SHARD_COUNT`` shards, or every shard ``GET /gateway/bot`` recommends."""

    def __init__(
        self,
        service: ImagineService,
        settings: Settings,
        *,
        sync_on_start: bool = True,
        guild_ready_timeout: float = 2.0,
    ) -> None:
        # Slash commands and buttons arrive without any privileged intent;
        # ``guilds`` only keeps channel objects at hand.
        shard_ids = settings.discord_shard_ids
        super().__init__(
            intents=discord.Intents(guilds=True),
            guild_ready_timeout=guild_ready_timeout,
            shard_count=settings.discord_shard_count,
            shard_ids=None if shard_ids is None else list(shard_ids),
        )
        self.service = service
        self.settings = settings
        self.sync_on_start = sync_on_start
        self.tree = _ServedTree(self)
        self.tree.on_error = self._on_command_error
        self.background = BackgroundTasks()
        self.prices = PriceAdmin(service.credits, service.catalog.registry)
        self.quotes_shown: Deadlines[str, ShownQuote] = Deadlines(self._quote_timed_out)
        """Quotes still showing live buttons, by request id, until they expire."""
        for command in build_commands(self):
            self.tree.add_command(command)
        service.platform_checks["discord"] = lambda: self.is_ready() and not self.is_closed()
        self._buyers: Deadlines[str, discord.Interaction] = Deadlines(_forget)
        """Each buyer's last /buy, whose token can still tell them privately about a payment."""
        service.purchases.notifiers["discord"] = self._told
        alert_channel = settings.alert_channel or ""
        if alert_channel.startswith("discord:"):
            channel_id = int(alert_channel.removeprefix("discord:"))

            async def alert(text: str) -> None:
                await self.get_partial_messageable(channel_id).send(text)

            service.budgets.alerts["discord"] = alert
        self._reconciled = False

    @property
    def guild_ids(self) -> list[int]:
        raw = self.settings.discord_guild_ids or ""
        return [int(part) for part in re.split(r"[,\s]+", raw) if part]

    async def serves(self, interaction: discord.Interaction) -> bool:
        """Whether the bot serves where ``interaction`` comes from; elsewhere it says it does not.

        Checked before any handler, so no account is opened (nor any starting
        credits granted) from a server the operator did not list.
        """
        if self.settings.serves_discord(interaction.guild_id):
            return True
        logger.info("refused an interaction from guild %s: not allowed", interaction.guild_id)
        if interaction.type is discord.InteractionType.autocomplete:
            refusal = messages.NOT_SERVED_HERE
            await interaction.response.autocomplete(
                [app_commands.Choice(name=refusal, value=refusal)]
            )
        else:
            await interaction.response.send_message(messages.NOT_SERVED_HERE, ephemeral=True)
        return False

    async def setup_hook(self) -> None:
        self.add_dynamic_items(
            GenerateButton,
            CancelButton,
            StripeButton,
            CompareButton,
            CompareCancelButton,
            AgainButton,
            VaryButton,
            EditButton,
            DeleteButton,
        )
        for pack in self.service.purchases.hidden_on_discord():
            logger.info(messages.pack_hidden_on_discord(pack.id))
        if self.sync_on_start:
            await self.sync_commands()

    async def launch_shards(self) -> None:
        """Connect this process's shards to the gateway ``GET /gateway/bot`` names, saying how
        many shards Discord recommends and warning when the configured count is below it.

        discord.py asks ``/gateway/bot`` only when no count is given; with one it
        connects to ``DiscordWebSocket.DEFAULT_GATEWAY``, Discord's own host, whatever
        DISCORD_API_BASE says. So the answer's URL becomes that default (also where a
        shard reconnects after Discord invalidated its session), for every client in
        the process, as ``point_at`` does for REST.
        """
        if not self.is_closed():
            recommended, url, _limits = await self.http.get_bot_gateway()
            logger.info("%s", messages.discord_shards_recommended(recommended, self.shard_count))
            if self.shard_count is not None and self.shard_count < recommended:
                logger.warning("%s", messages.discord_too_few_shards(self.shard_count, recommended))
            # The count asked for once: discord.py would ask again without one.
            self.shard_count = self.shard_count or recommended
            DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        await super().launch_shards()

    @property
    def runs_shard_zero(self) -> bool:
        """Entitlement events come to shard 0 only, so its process handles purchases."""
        return self.shard_ids is None or 0 in self.shard_ids

    async def on_ready(self) -> None:
        if self.runs_shard_zero and not self._reconciled:
            self._reconciled = True
            await self.fulfil_missed_purchases()

    async def sync_commands(self, *, force: bool = False) -> CommandSync:
        """Sync where the definitions changed since the last recorded sync.

        A guild Discord refuses (the bot was removed from it, or invited without
        the commands scope) is logged and skipped, so one stale id in
        DISCORD_GUILD_IDS does not keep the bot from serving the others.
        """
        scopes: list[discord.Object | None] = [discord.Object(id) for id in self.guild_ids] or [
            None
        ]
        # One process at a time: a second one starting meanwhile finds the fingerprints
        # recorded and syncs nothing.
        async with self.service.ledger.exclusive(
            f"discord:commands:{self.application_id}", lease=_SYNC_LEASE
        ):
            return await self._sync_changed(scopes, force=force)

    async def _sync_changed(
        self, scopes: Sequence[discord.Object | None], *, force: bool
    ) -> CommandSync:
        synced: list[str] = []
        refused: list[str] = []
        for guild in scopes:
            if guild is not None:
                self.tree.copy_global_to(guild=guild)
            scope = "global" if guild is None else f"guild {guild.id}"
            definitions = [
                command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)
            ]
            fingerprint = hashlib.sha256(
                json.dumps(definitions, sort_keys=True).encode()
            ).hexdigest()
            key = f"discord:commands:{self.application_id}:{scope}"
            if not force and await self.service.ledger.read_state(key) == fingerprint:
                logger.info("Discord commands (%s) unchanged since the last sync", scope)
                continue
            try:
                await self.tree.sync(guild=guild)
            except discord.HTTPException as error:
                refusal = messages.discord_sync_refused(scope, f"{error.status} {error.text}")
                logger.warning("%s", refusal)
                refused.append(refusal)
                continue
            await self.service.ledger.write_state(key, fingerprint)
            logger.info("synced %d Discord commands (%s)", len(definitions), scope)
            synced.append(scope)
        return CommandSync(tuple(synced), tuple(refused))

    async def close(self) -> None:
        self.quotes_shown.close()
        self._buyers.close()
        # Generations still running are cancelled; the flow releases their holds.
        await self.background.aclose()
        await super().close()

    # -- commands -------------------------------------------------------------

    async def imagine(
        self,
        interaction: discord.Interaction,
        options: ImagineOptions,
        reference: discord.Attachment | None,
    ) -> None:
        if reference is not None:
            # Downloading can take longer than Discord's three seconds.
            await interaction.response.defer(ephemeral=True, thinking=True)

        async def quoting() -> Quote:
            request_options = options
            if reference is not None:
                request_options = _with_reference(options, await _downloaded(reference))
            account = discord_account(interaction.user)
            request = await self.service.request(account, request_options)
            return await self.service.quote(
                account,
                request,
                channel=f"discord:{interaction.channel_id}",
                roles=_role_ids(interaction.user),
            )

        await self._offer(interaction, quoting())

    async def _offer(self, interaction: discord.Interaction, quoting: Awaitable[Quote]) -> None:
        """Answer with the quote and its buttons, or the refusal's sentence alone; a quote
        under the user's auto-confirm limit is confirmed at once instead, as its button would."""
        if interaction.response.is_done():
            text, quote = await _quoted(quoting)
        else:
            text, quote = await _ready_in_time(interaction, _quoted(quoting))
        if quote is not None and quote.confirms_itself:
            await self._confirm_now(interaction, quote.id)
            return
        view = None if quote is None else quote_view(quote.id, quote.button)
        message_id = await _answer(interaction, text, view=view)
        ttl = self.service.quote_ttl.total_seconds()
        # A quote that outlives the token cannot be marked expired when it does;
        # its buttons stay, and a late click is told it expired, in their place.
        if quote is not None and message_id is not None and ttl <= _LONGEST_EDITABLE_SECONDS:
            self.quotes_shown.add(
                quote.id,
                ShownQuote(interaction.application_id, interaction.token, message_id),
                due_in_seconds=ttl,
            )

    async def _confirm_now(self, interaction: discord.Interaction, generation_id: str) -> None:
        """The Generate button's path, for a quote that needs no click: hold, say it started,
        generate; the outcome says what it cost."""
        try:
            held = await self.service.hold(generation_id, discord_account(interaction.user))
        except ImagineError as refusal:
            await _answer(interaction, refusal.message)
            return
        await self.background.spawn_after(
            _answer(interaction, messages.DISCORD_STARTING),
            self._generate(interaction, held),
            name=f"discord generation {generation_id}",
        )

    async def show_history(self, interaction: discord.Interaction) -> None:
        """/history: the last generations, each with a link to its images and an Again button,
        said privately."""
        recent = await _ready_in_time(
            interaction,
            self.service.credits.history_entries(discord_account(interaction.user)),
        )
        text = messages.history_entries(recent, lambda url: f"[jump](<{url}>)")
        *first, last = _lines_in_messages(text)
        view = history_view([generation.id for generation in recent]) if recent else None
        if not first:
            await _answer(interaction, last, view=view)
            return
        await _answer(interaction, first[0])
        for piece in first[1:]:
            await interaction.followup.send(piece, ephemeral=True)
        extra: dict[str, Any] = {} if view is None else {"view": view}
        await interaction.followup.send(last, ephemeral=True, **extra)

    async def again_clicked(self, interaction: discord.Interaction, generation_id: str) -> None:
        """A new quote of a past generation for whoever clicked, in a message of its own."""
        await self._offer(
            interaction,
            self.service.again(
                generation_id,
                discord_account(interaction.user),
                channel=f"discord:{interaction.channel_id}",
                roles=_role_ids(interaction.user),
            ),
        )

    async def vary_clicked(self, interaction: discord.Interaction, generation_id: str) -> None:
        """A new quote with the clicked result's first image as the reference, for whoever
        clicked, in a message of its own."""
        # Downloading the image can take longer than Discord's three seconds.
        await interaction.response.defer(ephemeral=True, thinking=True)

        async def quoting() -> Quote:
            return await self.service.again(
                generation_id,
                discord_account(interaction.user),
                reference=await _first_image(interaction.message),
                channel=f"discord:{interaction.channel_id}",
                roles=_role_ids(interaction.user),
            )

        await self._offer(interaction, quoting())

    async def edit_clicked(self, interaction: discord.Interaction, generation_id: str) -> None:
        """The form to edit the result's prompt; submitting it quotes the edited request."""
        try:
            prompt = await self.service.prompt_of(generation_id)
        except ImagineError as refusal:
            await _tell_clicker(interaction, refusal.message)
            return
        await interaction.response.send_modal(edit_form(generation_id, prompt))

    async def edit_submitted(self, interaction: discord.Interaction, generation_id: str) -> None:
        """A submitted edit form: a new quote of the result with the edited prompt, for
        whoever submitted it."""
        await self._offer(
            interaction,
            self.service.again(
                generation_id,
                discord_account(interaction.user),
                prompt=_submitted(interaction.data, _EDIT_PROMPT_ID),
                channel=f"discord:{interaction.channel_id}",
                roles=_role_ids(interaction.user),
            ),
        )

    async def delete_clicked(self, interaction: discord.Interaction, generation_id: str) -> None:
        """Remove the clicked result, if the clicker may; a stranger is told so privately."""
        message = interaction.message

        async def remove() -> None:
            if message is not None:
                await message.delete()

        try:
            await self.service.delete_result(
                generation_id, discord_account(interaction.user), remove
            )
        except ImagineError as refusal:
            await _tell_clicker(interaction, refusal.message)
            return
        except discord.NotFound:
            await _tell_clicker(interaction, messages.DELETE_GONE)
            return
        await _tell_clicker(interaction, messages.DELETED)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # The edit form is kept by no view store (``edit_form``), so it is answered here,
        # from its custom id, even when it was shown before a restart.
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        custom_id = str((interaction.data or {}).get("custom_id", ""))
        match = re.fullmatch(_EDIT_FORM_ID, custom_id)
        if match is None or not await self.serves(interaction):
            return
        await self.clicked(interaction, match["id"], self.edit_submitted)

    async def change_settings(
        self, interaction: discord.Interaction, auto_confirm_under: int | None
    ) -> None:
        try:
            text = await self.service.credits.settings(
                discord_account(interaction.user), auto_confirm_under
            )
        except ImagineError as refusal:
            text = refusal.message
        await _answer(interaction, text)

    def _quote_timed_out(self, generation_id: str, shown: ShownQuote) -> None:
        self.background.spawn(
            self._expire_buttons(generation_id, shown),
            name=f"discord quote expiry {generation_id}",
        )

    async def _expire_buttons(self, generation_id: str, shown: ShownQuote) -> None:
        try:
            generation = await self.service.ledger.generation(generation_id)
            if generation.status in (
                GenerationStatus.QUOTED,
                GenerationStatus.EXPIRED,
            ):
                webhook = discord.Webhook.partial(shown.application_id, shown.token, client=self)
                await webhook.edit_message(
                    shown.message_id,
                    content=messages.DISCORD_QUOTE_EXPIRED_BUTTONS,
                    view=quote_view(generation_id, messages.GENERATE_BUTTON, disabled=True),
                )
        except discord.HTTPException:
            logger.info("could not mark quote %s expired on Discord", generation_id)

    async def generate_clicked(self, interaction: discord.Interaction, generation_id: str) -> None:
        account = discord_account(interaction.user)
        try:
            # Under a burst the hold can wait its turn for the database past the
            # 3 s Discord allows for answering a click; then the click is deferred.
            held = await answer_in_time(
                self.service.hold(generation_id, account), interaction.response.defer
            )
        except ImagineError as refusal:
            await _refuse_click(interaction, refusal)
            return
        self.quotes_shown.discard(generation_id)
        await self.background.spawn_after(
            _replace_clicked(interaction, messages.DISCORD_STARTING),
            self._generate(interaction, held),
            name=f"discord generation {generation_id}",
        )

    async def compare(self, interaction: discord.Interaction, options: CompareOptions) -> None:
        """/compare: its quote, each model's price and the total, with one Compare button."""
        text, view = await _ready_in_time(interaction, self._compare_quote(interaction, options))
        await _answer(interaction, text, view=view)

    async def _compare_quote(
        self, interaction: discord.Interaction, options: CompareOptions
    ) -> tuple[str, discord.ui.View | None]:
        account = discord_account(interaction.user)
        try:
            quote = await self.service.quote_compare(
                account,
                await self.service.compare_request(account, options),
                channel=f"discord:{interaction.channel_id}",
                roles=_role_ids(interaction.user),
            )
        except ImagineError as refusal:
            return refusal.message, None
        return quote.summary, compare_view(quote.id, quote.button)

    async def compare_clicked(self, interaction: discord.Interaction, compare_id: str) -> None:
        try:
            held = await answer_in_time(
                self.service.hold_compare(compare_id, discord_account(interaction.user)),
                interaction.response.defer,
            )
        except ImagineError as refusal:
            await _refuse_click(interaction, refusal)
            return
        await self.background.spawn_after(
            _replace_clicked(interaction, messages.DISCORD_STARTING),
            self.service.generate_compare(
                held,
                _PostToChannel(
                    interaction, self.settings.upload_timeout_seconds, self.service.result_actions
                ),
                reachable_for=_LONGEST_EDITABLE_SECONDS,
            ),
            name=f"discord compare {compare_id}",
        )

    async def compare_cancel_clicked(
        self, interaction: discord.Interaction, compare_id: str
    ) -> None:
        try:
            await answer_in_time(
                self.service.cancel_compare(compare_id, discord_account(interaction.user)),
                interaction.response.defer,
            )
        except ImagineError as refusal:
            await _refuse_click(interaction, refusal)
            return
        await _replace_clicked(interaction, messages.CANCELLED)

    async def clicked(
        self,
        interaction: discord.Interaction,
        generation_id: str,
        handle: Callable[[discord.Interaction, str], Awaitable[None]],
    ) -> None:
        """Run a button's ``handle``; a failure is told to the clicker in a sentence.

        discord.py only logs what a button's callback raises, and the clicker
        would see "This interaction failed" with nothing said.
        """
        try:
            await handle(interaction, generation_id)
        except Exception:
            logger.exception("the click on %s failed", generation_id)
            with contextlib.suppress(discord.HTTPException):
                await _tell_clicker(interaction, messages.SOMETHING_WENT_WRONG)

    async def _generate(self, interaction: discord.Interaction, held: HeldGeneration) -> None:
        # Progress, images and the outcome all go through the click's token.
        await self.service.generate(
            held,
            _PostToChannel(
                interaction, self.settings.upload_timeout_seconds, self.service.result_actions
            ),
            reachable_for=_LONGEST_EDITABLE_SECONDS,
        )

    async def cancel_clicked(self, interaction: discord.Interaction, generation_id: str) -> None:
        try:
            await answer_in_time(
                self.service.cancel(generation_id, discord_account(interaction.user)),
                interaction.response.defer,
            )
        except ImagineError as refusal:
            await _refuse_click(interaction, refusal)
            return
        self.quotes_shown.discard(generation_id)
        await _replace_clicked(interaction, messages.CANCELLED)

    async def show_credits(
        self,
        interaction: discord.Interaction,
        action: str | None,
        user: discord.User | discord.Member | None,
        amount: int | None,
        reason: str | None,
        expires: str | None,
    ) -> None:
        """The balance and history, or an admin's grant or revoke reported."""

        async def statement_or_adjustment() -> str:
            account = discord_account(interaction.user)
            if action not in ("grant", "revoke"):
                return await self.service.credits.statement(account, _role_ids(interaction.user))
            if user is None or amount is None:
                grant = action == "grant"
                raise RequestError(
                    messages.DISCORD_GRANT_USAGE if grant else messages.DISCORD_REVOKE_USAGE
                )
            return await self.service.credits.adjust(
                action,
                account,
                discord_account(user),
                amount,
                reason or "",
                expires=expires,
                shown_as=messages.discord_account_name(user.id),
                # The same interaction delivered again (a resumed gateway) must not grant again.
                idempotency_key=f"{action}:discord:{interaction.id}",
            )

        try:
            text = await _ready_in_time(interaction, statement_or_adjustment())
        except ImagineError as refusal:
            text = refusal.message
        await _answer(interaction, text)

    async def show_statement(self, interaction: discord.Interaction) -> None:
        """The user's own statement as a CSV file only they see, with a line saying what is in it."""

        async def statement_file() -> tuple[str, list[discord.File]]:
            account = discord_account(interaction.user)
            # Topped up first, as /credits does, so the file ends at the balance the line says.
            balance = await self.service.credits.balance(account, _role_ids(interaction.user))
            lines = await self.service.credits.own_statement(account)
            if not lines:
                return messages.NO_STATEMENT, []
            csv = io.BytesIO(statements.as_csv(lines).encode())
            name = f"statement-{self.service.ledger.now():%Y-%m-%d}.csv"
            summary = messages.statement_attached(len(lines), balance.available)
            return summary, [discord.File(csv, filename=name)]

        try:
            text, files = await _ready_in_time(interaction, statement_file())
        except ImagineError as refusal:
            text, files = refusal.message, []
        await _answer(interaction, text, files=files)

    async def show_stats(self, interaction: discord.Interaction, model: str | None) -> None:
        """An admin's /stats: the last 30 days' figures, with their chart attached, said
        privately (revenue and margins are not for the channel)."""

        async def stats_answer() -> tuple[str, list[discord.File]]:
            answer = await self.service.stats.answer(discord_account(interaction.user), model)
            if answer.chart is None:
                return answer.text, []
            png = io.BytesIO(answer.chart.png)
            return answer.text, [discord.File(png, filename=answer.chart.filename)]

        try:
            # Drawing the chart can pass the deadline, the first time above all (matplotlib's
            # import); Discord is then shown "thinking…" and the answer fills it in.
            text, files = await _ready_in_time(interaction, stats_answer())
        except ImagineError as refusal:
            text, files = refusal.message, []
        await _answer(interaction, text, files=files)

    # -- buying credits -------------------------------------------------------

    async def show_packs(self, interaction: discord.Interaction) -> None:
        """/buy: each pack sold on Discord, with its premium button (and a card payment through
        Stripe when that is set up), said privately."""
        purchases = self.service.purchases
        packs = purchases.discord_packs()
        if not packs:
            await _answer(interaction, messages.NO_PACKS_ON_DISCORD)
            return
        view = discord.ui.View(timeout=None)
        for pack in packs:
            view.add_item(discord.ui.Button(sku_id=int(pack.discord_sku or 0)))
        if purchases.sells_through_stripe:
            for pack in packs:
                view.add_item(StripeButton(pack.id, pack.shown_price))
        view.stop()
        lines = [messages.pack_line(p.id, p.credits, p.shown_price) for p in packs]
        self._remember_buyer(interaction)
        await _answer(interaction, messages.discord_buy(lines), view=view)

    async def stripe_clicked(self, interaction: discord.Interaction, pack_id: str) -> None:
        """A card payment for one pack: its own Checkout link, for the clicker alone."""
        account = discord_account(interaction.user)
        channel = None if interaction.channel_id is None else str(interaction.channel_id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            link = await self.service.purchases.checkout(account, pack_id, channel)
        except ImagineError as refusal:
            await interaction.followup.send(refusal.message, ephemeral=True)
            return
        view = discord.ui.View(timeout=None)
        view.add_item(discord.ui.Button(label=messages.DISCORD_PAY_LABEL, url=link.url))
        view.stop()
        self._remember_buyer(interaction)
        await interaction.followup.send(
            messages.checkout_line(
                link.pack.id, link.pack.credits, link.pack.shown_price, link.url
            ),
            view=view,
            ephemeral=True,
        )

    def _remember_buyer(self, interaction: discord.Interaction) -> None:
        self._buyers.add(
            discord_account(interaction.user), interaction, due_in_seconds=_LONGEST_EDITABLE_SECONDS
        )

    async def _told(self, notice: Notice) -> None:
        """A purchase's news, privately under the buyer's /buy while its token lives, else in a
        direct message."""
        asked = self._buyers.get(notice.account)
        if asked is not None:
            try:
                await asked.followup.send(notice.text, ephemeral=True)
                return
            except discord.HTTPException as refusal:
                logger.info("could not follow up /buy for %s: %s", notice.account, refusal)
        direct = await self.create_dm(discord.Object(int(notice.account.removeprefix("discord:"))))
        await direct.send(notice.text)

    async def on_entitlement_create(self, entitlement: discord.Entitlement) -> None:
        # Discord sends these to shard 0 only; should one come elsewhere, shard 0's
        # process fulfils it, at once or at its next start.
        if self.runs_shard_zero:
            await self.fulfil(entitlement)

    async def on_entitlement_delete(self, entitlement: discord.Entitlement) -> None:
        if self.runs_shard_zero:
            await self.service.purchases.entitlement_deleted(str(entitlement.id))

    async def fulfil(self, entitlement: discord.Entitlement) -> None:
        """Grant the pack an entitlement bought, then consume it so it can be bought again.

        Granting first and consuming after means a crash between the two leaves an
        entitlement still unconsumed, which the next start fulfils (once: the grant's
        key is the entitlement's id) and consumes.
        """
        if entitlement.user_id is None:
            return
        change = await self.service.purchases.entitlement_created(
            str(entitlement.id),
            discord_account_for(entitlement.user_id),
            str(entitlement.sku_id),
            test_mode=entitlement.type is discord.EntitlementType.test_mode_purchase,
        )
        if change is None and self.service.purchases.pack_for_sku(str(entitlement.sku_id)) is None:
            # Not one of our packs (another product of this app): not ours to consume.
            return
        await entitlement.consume()

    async def fulfil_missed_purchases(self) -> None:
        """At start-up: every unconsumed entitlement of a pack's SKU, fulfilled and consumed."""
        skus = [
            discord.Object(int(p.discord_sku or 0)) for p in self.service.purchases.discord_packs()
        ]
        if not skus:
            return
        missed = 0
        async for entitlement in self.entitlements(skus=skus, exclude_ended=True, limit=None):
            if not entitlement.consumed:
                missed += 1
                await self.fulfil(entitlement)
        if missed:
            logger.info("fulfilled %d Discord purchases made while the bot was away", missed)

    async def change_prices(self, interaction: discord.Interaction, command: PriceCommand) -> None:
        """An admin's /price: someone's own prices set, listed or cleared, said privately."""

        async def price_answer() -> str:
            if command.account is None and command.action != "list":
                set_usage = command.action == "set"
                raise RequestError(
                    messages.DISCORD_PRICE_USAGE if set_usage else messages.DISCORD_CLEAR_USAGE
                )
            return await self.prices.run(
                discord_account(interaction.user), command, name=discord_shown
            )

        try:
            text = await _ready_in_time(interaction, price_answer())
        except ImagineError as refusal:
            text = refusal.message
        # Everyone's overrides can run past what one message holds.
        first, *more = _lines_in_messages(text)
        await _answer(interaction, first)
        for piece in more:
            await interaction.followup.send(piece, ephemeral=True)

    def model_choices(self, current: str) -> list[app_commands.Choice[str]]:
        """The models whose id or name holds what was typed, with their list prices."""
        typed = current.strip().lower()
        return [
            app_commands.Choice(
                name=messages.discord_model_choice(model.display_name, model.credits_per_image),
                value=model.id,
            )
            for model in self.service.catalog.listed()
            if typed in model.id or typed in model.display_name.lower()
        ][:DISCORD_CHOICES]

    async def show_models(self, interaction: discord.Interaction) -> None:
        catalog = self.service.catalog
        rows = [(model, catalog.reason_unavailable(model)) for model in catalog.listed()]
        own = await self.service.own_prices(discord_account(interaction.user))
        first, *more = _code_blocks(messages.models_table(rows, own))
        await interaction.response.send_message(first, ephemeral=True)
        for block in more:
            await interaction.followup.send(block, ephemeral=True)

    async def show_help(self, interaction: discord.Interaction) -> None:
        usable = self.service.catalog.usable()
        text = messages.discord_help(
            is_admin=self.service.credits.is_admin(discord_account(interaction.user)),
            default_model=usable[0].id if usable else None,
            max_images=self.service.catalog.registry.max_images,
        )
        await interaction.response.send_message(text, ephemeral=True)

    def _chosen_model(self, interaction: discord.Interaction) -> ModelSpec | None:
        """The model chosen so far in the same command, else the default one."""
        chosen = getattr(interaction.namespace, "model", None)
        catalog = self.service.catalog
        model = catalog.registry.get(chosen) if chosen else None
        if model is None:
            usable = catalog.usable()
            model = usable[0] if usable else None
        return model

    async def count_choices(
        self, interaction: discord.Interaction, current: str | int
    ) -> list[app_commands.Choice[int]]:
        """Each number of images the chosen model makes, with what it costs this user at the
        chosen resolution, and their balance."""
        model = self._chosen_model(interaction)
        if model is None:
            return []
        resolution = _chosen_resolution(interaction, model)
        sheet = await self.service.price_sheet(
            discord_account(interaction.user), _role_ids(interaction.user)
        )
        typed = str(current).strip()
        return [
            app_commands.Choice(
                name=messages.discord_count_choice(
                    count, sheet.price(model, count, resolution).total, sheet.available
                ),
                value=count,
            )
            for count in range(1, model.max_images + 1)
            if typed in str(count)
        ][:DISCORD_CHOICES]

    async def resolution_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """The chosen model's resolutions, each with what the chosen count costs this user
        there, and their balance."""
        model = self._chosen_model(interaction)
        if model is None:
            return []
        count = _chosen_count(interaction, model)
        sheet = await self.service.price_sheet(
            discord_account(interaction.user), _role_ids(interaction.user)
        )
        typed = current.strip().lower()
        return [
            app_commands.Choice(
                name=messages.discord_resolution_choice(
                    resolution,
                    count,
                    sheet.price(model, count, resolution).total,
                    sheet.available,
                ),
                value=resolution,
            )
            for resolution in model.resolutions
            if typed in resolution.lower()
        ][:DISCORD_CHOICES]

    def choices_for(
        self, interaction: discord.Interaction, current: str, field: str
    ) -> list[app_commands.Choice[str]]:
        """Resolutions or aspect ratios of the model chosen so far in the same command."""
        model = self._chosen_model(interaction)
        if model is None:
            return []
        values = model.resolutions if field == "resolution" else model.aspect_ratios
        typed = current.strip().lower()
        return [
            app_commands.Choice(name=value, value=value)
            for value in values
            if typed in value.lower()
        ][:DISCORD_CHOICES]

    async def manage_subject(
        self,
        interaction: discord.Interaction,
        action: str,
        name: str | None,
        images: Sequence[discord.Attachment],
    ) -> None:
        """/subject: save (the attached images), list or delete the user's own subjects."""
        if action == "save" and images:
            # Downloading can take longer than Discord's three seconds.
            await interaction.response.defer(ephemeral=True, thinking=True)

        async def answer() -> str:
            account = discord_account(interaction.user)
            subjects = self.service.subjects
            if action == "list":
                return await subjects.listing(account)
            if name is None:
                raise RequestError(messages.DISCORD_SUBJECT_USAGE)
            if action == "delete":
                return await subjects.delete(account, name)
            # Checked before anything is downloaded.
            check_new_subject(name, len(images))
            prepared = [await _downloaded(image) for image in images]
            return await subjects.save(account, name, prepared)

        try:
            text = await _ready_in_time(interaction, answer())
        except ImagineError as refusal:
            text = refusal.message
        await _answer(interaction, text)

    async def subject_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """The user's own subjects whose name holds what was typed; nobody else's."""
        typed = current.strip().lower()
        names = await self.service.subjects.names(discord_account(interaction.user))
        return [app_commands.Choice(name=name, value=name) for name in names if typed in name][
            :DISCORD_CHOICES
        ]

    async def _on_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        logger.error("Discord command failed", exc_info=error)
        await _answer(interaction, messages.SOMETHING_WENT_WRONG)


class _ServedTree(app_commands.CommandTree[ImagineBot]):
    """The command tree, answering commands and autocomplete only where the bot serves."""

    async def interaction_check(self, interaction: discord.Interaction[ImagineBot], /) -> bool:
        return await self.client.serves(interaction)


def build_commands(bot: ImagineBot) -> list[app_commands.Command[Any, Any, Any]]:
    """The slash commands, with /imagine's model choices and count range taken from the registry."""
    catalog = bot.service.catalog
    usable = catalog.usable()
    most = catalog.registry.max_images
    model_choices = [
        app_commands.Choice(
            name=messages.discord_model_choice(model.display_name, model.credits_per_image),
            value=model.id,
        )
        for model in usable[:DISCORD_CHOICES]
    ]

    async def imagine(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, messages.PROMPT_MAX_CHARS],
        model: Optional[str] = None,  # noqa: UP045 - discord.py reads this annotation
        count: Optional[app_commands.Range[int, 1, most]] = None,  # noqa: UP045
        resolution: Optional[str] = None,  # noqa: UP045
        aspect: Optional[str] = None,  # noqa: UP045
        reference: Optional[discord.Attachment] = None,  # noqa: UP045
        subject: Optional[str] = None,  # noqa: UP045
    ) -> None:
        options = ImagineOptions(
            prompt=prompt,
            model=model,
            count=count,
            resolution=resolution,
            aspect=aspect,
            subject=subject,
        )
        await bot.imagine(interaction, options, reference)

    async def subject_choices(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await bot.subject_choices(interaction, current)

    async def count_choices(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[int]]:
        return await bot.count_choices(interaction, current)

    async def resolution_choices(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await bot.resolution_choices(interaction, current)

    async def aspect_choices(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return bot.choices_for(interaction, current, "aspect")

    imagine = app_commands.describe(
        prompt="What to draw",
        model=messages.DISCORD_MODEL_DESCRIPTION,
        count=f"How many images (1-{most})",
        resolution=messages.DISCORD_RESOLUTION_DESCRIPTION,
        aspect=messages.DISCORD_ASPECT_DESCRIPTION,
        reference=messages.DISCORD_REFERENCE_DESCRIPTION,
        subject=messages.DISCORD_SUBJECT_DESCRIPTION,
    )(imagine)
    if model_choices:
        imagine = app_commands.choices(model=model_choices)(imagine)
    imagine = app_commands.autocomplete(
        count=count_choices,
        resolution=resolution_choices,
        aspect=aspect_choices,
        subject=subject_choices,
    )(imagine)

    @app_commands.describe(
        action="Save a subject from the attached images, list yours, or delete one",
        name=f"The subject's name: 1-{messages.SUBJECT_NAME_MAX_CHARS} letters, digits, - or _",
        image1="An image of the subject (up to six)",
    )
    @app_commands.choices(
        action=[
            app_commands.Choice(name="save", value="save"),
            app_commands.Choice(name="list", value="list"),
            app_commands.Choice(name="delete", value="delete"),
        ]
    )
    @app_commands.autocomplete(name=subject_choices)
    async def subject(
        interaction: discord.Interaction,
        action: str,
        name: Optional[str] = None,  # noqa: UP045 - discord.py reads this annotation
        image1: Optional[discord.Attachment] = None,  # noqa: UP045
        image2: Optional[discord.Attachment] = None,  # noqa: UP045
        image3: Optional[discord.Attachment] = None,  # noqa: UP045
        image4: Optional[discord.Attachment] = None,  # noqa: UP045
        image5: Optional[discord.Attachment] = None,  # noqa: UP045
        image6: Optional[discord.Attachment] = None,  # noqa: UP045
    ) -> None:
        attached = (image1, image2, image3, image4, image5, image6)
        images = [image for image in attached if image is not None]
        await bot.manage_subject(interaction, action, name, images)

    @app_commands.describe(
        action="Admins: grant or revoke credits",
        user="Whose credits to change",
        amount="How many credits",
        reason="Recorded in the ledger",
        expires=messages.DISCORD_EXPIRES_DESCRIPTION,
    )
    @app_commands.choices(
        action=[
            app_commands.Choice(name="show my balance", value="show"),
            app_commands.Choice(name="grant (admins)", value="grant"),
            app_commands.Choice(name="revoke (admins)", value="revoke"),
        ]
    )
    async def credits(
        interaction: discord.Interaction,
        action: Optional[str] = None,  # noqa: UP045
        user: Optional[discord.User] = None,  # noqa: UP045
        amount: Optional[app_commands.Range[int, 1, 1_000_000]] = None,  # noqa: UP045
        reason: Optional[app_commands.Range[str, 0, 200]] = None,  # noqa: UP045
        expires: Optional[str] = None,  # noqa: UP045
    ) -> None:
        await bot.show_credits(interaction, action, user, amount, reason, expires)

    async def price_models(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return bot.model_choices(current)

    @app_commands.describe(
        action="Set, list or clear someone's own prices (bot admins only)",
        user="Whose prices; for list, leave empty to see everyone's",
        model="The model of a fixed price, or the one price to clear",
        credits="Credits per image of that model",
        percent_off="Percent off every model's list price, instead of one model's price",
        until="When it ends: a date or time such as 2027-01-01 (UTC unless an offset is given)",
        reason="Recorded with the price",
    )
    @app_commands.choices(
        action=[
            app_commands.Choice(name="set", value="set"),
            app_commands.Choice(name="list", value="list"),
            app_commands.Choice(name="clear", value="clear"),
        ]
    )
    @app_commands.autocomplete(model=price_models)
    async def price(
        interaction: discord.Interaction,
        action: str,
        user: Optional[discord.User] = None,  # noqa: UP045
        model: Optional[str] = None,  # noqa: UP045
        credits: Optional[app_commands.Range[int, 1, MAX_GRANT]] = None,  # noqa: UP045
        percent_off: Optional[app_commands.Range[int, 1, 100]] = None,  # noqa: UP045
        until: Optional[str] = None,  # noqa: UP045
        reason: Optional[app_commands.Range[str, 1, messages.REASON_MAX_CHARS]] = None,  # noqa: UP045
    ) -> None:
        command = PriceCommand(
            action,
            None if user is None else discord_account(user),
            model=model,
            credits_per_image=None if credits is None else str(credits),
            percent_off=None if percent_off is None else str(percent_off),
            until=until,
            reason=reason or "",
        )
        await bot.change_prices(interaction, command)

    @app_commands.describe(model=messages.DISCORD_STATS_MODEL_DESCRIPTION)
    @app_commands.autocomplete(model=price_models)
    async def stats(
        interaction: discord.Interaction,
        model: Optional[str] = None,  # noqa: UP045 - discord.py reads this annotation
    ) -> None:
        await bot.show_stats(interaction, model)

    async def models(interaction: discord.Interaction) -> None:
        await bot.show_models(interaction)

    async def buy(interaction: discord.Interaction) -> None:
        await bot.show_packs(interaction)

    async def statement(interaction: discord.Interaction) -> None:
        await bot.show_statement(interaction)

    @app_commands.describe(
        prompt="What to draw",
        models=messages.DISCORD_COMPARE_MODELS_DESCRIPTION,
        resolution=messages.DISCORD_RESOLUTION_DESCRIPTION,
        aspect=messages.DISCORD_ASPECT_DESCRIPTION,
        subject=messages.DISCORD_SUBJECT_DESCRIPTION,
    )
    @app_commands.autocomplete(subject=subject_choices)
    async def compare(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, messages.PROMPT_MAX_CHARS],
        models: str,
        resolution: Optional[str] = None,  # noqa: UP045 - discord.py reads this annotation
        aspect: Optional[str] = None,  # noqa: UP045
        subject: Optional[str] = None,  # noqa: UP045
    ) -> None:
        options = CompareOptions(models, prompt, resolution, aspect, subject)
        await bot.compare(interaction, options)

    async def help_command(interaction: discord.Interaction) -> None:
        await bot.show_help(interaction)

    async def history(interaction: discord.Interaction) -> None:
        await bot.show_history(interaction)

    @app_commands.describe(auto_confirm_under=messages.DISCORD_AUTO_CONFIRM_DESCRIPTION)
    async def settings(
        interaction: discord.Interaction,
        auto_confirm_under: Optional[app_commands.Range[int, 0, messages.AUTO_CONFIRM_MAX]] = None,  # noqa: UP045
    ) -> None:
        await bot.change_settings(interaction, auto_confirm_under)

    return [
        app_commands.Command(
            name="imagine", description="Make images from a prompt", callback=imagine
        ),
        app_commands.Command(
            name="compare",
            description="One prompt, 2-4 models side by side in one labelled grid",
            callback=compare,
        ),
        app_commands.Command(
            name="credits", description="Your credits; admins grant and revoke", callback=credits
        ),
        app_commands.Command(
            name="price",
            description="Admins: someone's own price per image, or percent off",
            callback=price,
        ),
        app_commands.Command(
            name="statement",
            description="Every change to your credits, as a CSV file only you see",
            callback=statement,
        ),
        app_commands.Command(
            name="stats",
            description="Admins: the last 30 days' credits by model, as a chart",
            callback=stats,
        ),
        app_commands.Command(
            name="models", description="The models, prices and what they support", callback=models
        ),
        app_commands.Command(
            name="buy", description="Buy credits: packs that never expire", callback=buy
        ),
        app_commands.Command(
            name="subject",
            description="Your subjects: sets of reference images of a person, used by name",
            callback=subject,
        ),
        app_commands.Command(name="help", description="How to use the bot", callback=help_command),
        app_commands.Command(
            name="history",
            description="Your last 10 generations, with links and Again buttons",
            callback=history,
        ),
        app_commands.Command(
            name="settings",
            description="Your settings: auto-confirm requests up to a price",
            callback=settings,
        ),
    ]


def quote_view(generation_id: str, label: str, *, disabled: bool = False) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    # Plain buttons: a click reaches GenerateButton or CancelButton through the
    # DynamicItem templates registered in setup_hook, which match these custom
    # ids, so wrapping each button in its DynamicItem here would only cost time.
    generate = _generate_button(generation_id, label)
    cancel = _cancel_button(generation_id)
    generate.disabled = cancel.disabled = disabled
    view.add_item(generate)
    view.add_item(cancel)
    # A view still listening would make discord.py keep it, with a timeout task
    # of its own, for 15 minutes after every quote.
    view.stop()
    return view


def history_view(generation_ids: Sequence[str]) -> discord.ui.View:
    """One Again button per generation, numbered as /history's lines; five to a row."""
    view = discord.ui.View(timeout=None)
    for number, generation_id in enumerate(generation_ids, start=1):
        view.add_item(_again_button(generation_id, number))
    # As quote_view: a click reaches AgainButton through its template, even after a restart.
    view.stop()
    return view


def _again_button(generation_id: str, number: int) -> discord.ui.Button[Any]:
    return discord.ui.Button(
        label=messages.again_button(number),
        style=discord.ButtonStyle.secondary,
        custom_id=f"imagine:again:{generation_id}",
    )


def _generate_button(generation_id: str, label: str) -> discord.ui.Button[Any]:
    """A quote's Generate button; an alternative's ("Try …") is the same button, so a click
    on either after a restart reaches ``GenerateButton``."""
    return discord.ui.Button(
        label=label,
        style=discord.ButtonStyle.primary,
        custom_id=f"imagine:generate:{generation_id}",
    )


def _cancel_button(generation_id: str) -> discord.ui.Button[Any]:
    return discord.ui.Button(
        label=messages.CANCEL_BUTTON,
        style=discord.ButtonStyle.secondary,
        custom_id=f"imagine:cancel:{generation_id}",
    )


class GenerateButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:generate:(?P<id>[0-9a-f]+)"
):
    """Pressing it confirms the quote; its id carries the request, so it outlives a restart."""

    def __init__(self, generation_id: str) -> None:
        super().__init__(_generate_button(generation_id, messages.GENERATE_BUTTON))
        self.generation_id = generation_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> "GenerateButton":
        return cls(match["id"])

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        assert isinstance(interaction.client, ImagineBot)
        return await interaction.client.serves(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        assert isinstance(interaction.client, ImagineBot)
        bot = interaction.client
        await bot.clicked(interaction, self.generation_id, bot.generate_clicked)


class AgainButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:again:(?P<id>[0-9a-f]+)"
):
    """A new quote of a past generation, for whoever presses it; its id carries the
    generation, so it outlives a restart."""

    def __init__(self, generation_id: str) -> None:
        super().__init__(_again_button(generation_id, 1))
        self.generation_id = generation_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> "AgainButton":
        return cls(match["id"])

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        assert isinstance(interaction.client, ImagineBot)
        return await interaction.client.serves(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        assert isinstance(interaction.client, ImagineBot)
        bot = interaction.client
        await bot.clicked(interaction, self.generation_id, bot.again_clicked)


_RESULT_BUTTONS = {
    "again": (messages.RESULT_AGAIN_BUTTON, discord.ButtonStyle.secondary),
    "vary": (messages.RESULT_VARY_BUTTON, discord.ButtonStyle.secondary),
    "edit": (messages.RESULT_EDIT_BUTTON, discord.ButtonStyle.secondary),
    "delete": (messages.RESULT_DELETE_BUTTON, discord.ButtonStyle.danger),
}
"""Each action under a posted result (``ImagineService.result_actions``): its label and style;
its custom id is ``imagine:<action>:<generation id>``."""
_EDIT_FORM_ID = r"imagine:edit-form:(?P<id>[0-9a-f]+)"
_EDIT_PROMPT_ID = "prompt"


def result_view(generation_id: str, actions: Sequence[str]) -> discord.ui.View | None:
    """The buttons under a posted result, one per action; None when there are none."""
    if not actions:
        return None
    view = discord.ui.View(timeout=None)
    for action in actions:
        label, style = _RESULT_BUTTONS[action]
        view.add_item(
            discord.ui.Button(
                label=label, style=style, custom_id=f"imagine:{action}:{generation_id}"
            )
        )
    # As quote_view: a click reaches its DynamicItem through its template, even after a restart.
    view.stop()
    return view


def edit_form(generation_id: str, prompt: str) -> discord.ui.Modal:
    """The form to edit a result's prompt, prefilled with it."""
    form = discord.ui.Modal(
        title=messages.EDIT_FORM_TITLE, custom_id=f"imagine:edit-form:{generation_id}"
    )
    form.add_item(
        discord.ui.TextInput(
            label=messages.EDIT_FORM_PROMPT,
            custom_id=_EDIT_PROMPT_ID,
            style=discord.TextStyle.paragraph,
            default=prompt[: messages.PROMPT_MAX_CHARS],
            max_length=messages.PROMPT_MAX_CHARS,
        )
    )
    # Stopped, so discord.py keeps it in no store (where an unsubmitted form would stay
    # forever, and which a restart empties): ``ImagineBot.on_interaction`` answers it.
    form.stop()
    return form


def _submitted(data: Any, custom_id: str) -> str:
    """The value of the form field ``custom_id`` in a modal submit's ``data``, wherever it is
    nested (in an action row, or a label)."""
    if isinstance(data, dict):
        if data.get("custom_id") == custom_id and "value" in data:
            return str(data["value"])
        children = [*data.get("components", ()), data.get("component")]
        for child in children:
            if child is not None and (found := _submitted(child, custom_id)):
                return found
    return ""


async def _first_image(message: discord.Message | None) -> ReferenceImage:
    """A posted result's first image, checked as any attached reference is."""
    if message is None or not message.attachments:
        raise RequestError(messages.VARY_NO_IMAGE)
    return await _downloaded(message.attachments[0])


class _ResultButton:
    """What the buttons under a posted result share, each a ``DynamicItem`` with a template of
    its own (discord.py wants one on every subclass): its id carries the generation, so
    it outlives a restart."""

    action = ""

    def __init__(self, generation_id: str) -> None:
        label, style = _RESULT_BUTTONS[self.action]
        super().__init__(
            discord.ui.Button(
                label=label, style=style, custom_id=f"imagine:{self.action}:{generation_id}"
            )
        )
        self.generation_id = generation_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> "_ResultButton":
        return cls(match["id"])

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        assert isinstance(interaction.client, ImagineBot)
        return await interaction.client.serves(interaction)

    def handler(self, bot: "ImagineBot") -> Callable[[discord.Interaction, str], Awaitable[None]]:
        raise NotImplementedError

    async def callback(self, interaction: discord.Interaction) -> None:
        assert isinstance(interaction.client, ImagineBot)
        bot = interaction.client
        await bot.clicked(interaction, self.generation_id, self.handler(bot))


class VaryButton(
    _ResultButton,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:vary:(?P<id>[0-9a-f]+)",
):
    action = "vary"

    def handler(self, bot: "ImagineBot") -> Callable[[discord.Interaction, str], Awaitable[None]]:
        return bot.vary_clicked


class EditButton(
    _ResultButton,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:edit:(?P<id>[0-9a-f]+)",
):
    action = "edit"

    def handler(self, bot: "ImagineBot") -> Callable[[discord.Interaction, str], Awaitable[None]]:
        return bot.edit_clicked


class DeleteButton(
    _ResultButton,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:delete:(?P<id>[0-9a-f]+)",
):
    action = "delete"

    def handler(self, bot: "ImagineBot") -> Callable[[discord.Interaction, str], Awaitable[None]]:
        return bot.delete_clicked


class StripeButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:stripe:(?P<pack>[a-z0-9_-]+)"
):
    """Pay for a pack by card through Stripe: its link is made for whoever clicks."""

    def __init__(self, pack_id: str, price: str = "") -> None:
        super().__init__(
            discord.ui.Button(
                label=messages.discord_stripe_label(pack_id, price),
                style=discord.ButtonStyle.secondary,
                custom_id=f"imagine:stripe:{pack_id}",
            )
        )
        self.pack_id = pack_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> "StripeButton":
        return cls(match["pack"])

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        assert isinstance(interaction.client, ImagineBot)
        return await interaction.client.serves(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        assert isinstance(interaction.client, ImagineBot)
        await interaction.client.stripe_clicked(interaction, self.pack_id)


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:cancel:(?P<id>[0-9a-f]+)"
):
    def __init__(self, generation_id: str) -> None:
        super().__init__(_cancel_button(generation_id))
        self.generation_id = generation_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> "CancelButton":
        return cls(match["id"])

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        assert isinstance(interaction.client, ImagineBot)
        return await interaction.client.serves(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        assert isinstance(interaction.client, ImagineBot)
        bot = interaction.client
        await bot.clicked(interaction, self.generation_id, bot.cancel_clicked)


def compare_view(compare_id: str, label: str) -> discord.ui.View:
    """A /compare quote's buttons; their ids carry every generation of it (``COMPARE_SEPARATOR``)."""
    view = discord.ui.View(timeout=None)
    view.add_item(
        discord.ui.Button(
            label=label,
            style=discord.ButtonStyle.primary,
            custom_id=f"imagine:compare:{compare_id}",
        )
    )
    view.add_item(
        discord.ui.Button(
            label=messages.CANCEL_BUTTON,
            style=discord.ButtonStyle.secondary,
            custom_id=f"imagine:compare-cancel:{compare_id}",
        )
    )
    view.stop()
    return view


class CompareButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:compare:(?P<id>[0-9a-f,]+)"
):
    """Pressing it holds every model's credits of the /compare at once, then runs them."""

    def __init__(self, compare_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=messages.GENERATE_BUTTON, custom_id=f"imagine:compare:{compare_id}"
            )
        )
        self.compare_id = compare_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> "CompareButton":
        return cls(match["id"])

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        assert isinstance(interaction.client, ImagineBot)
        return await interaction.client.serves(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        assert isinstance(interaction.client, ImagineBot)
        bot = interaction.client
        await bot.clicked(interaction, self.compare_id, bot.compare_clicked)


class CompareCancelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:compare-cancel:(?P<id>[0-9a-f,]+)",
):
    def __init__(self, compare_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=messages.CANCEL_BUTTON, custom_id=f"imagine:compare-cancel:{compare_id}"
            )
        )
        self.compare_id = compare_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> "CompareCancelButton":
        return cls(match["id"])

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        assert isinstance(interaction.client, ImagineBot)
        return await interaction.client.serves(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        assert isinstance(interaction.client, ImagineBot)
        bot = interaction.client
        await bot.clicked(interaction, self.compare_id, bot.compare_cancel_clicked)


class _PostToChannel:
    """Delivery on Discord: progress in the ephemeral message, images as public follow-ups."""

    def __init__(
        self,
        interaction: discord.Interaction,
        upload_timeout: float,
        actions: Callable[[Generation], tuple[str, ...]],
    ) -> None:
        self.interaction = interaction
        self.upload_timeout = upload_timeout
        self.actions = actions

    async def progress(self, event: ProgressEvent) -> None:
        await self.interaction.edit_original_response(content=messages.progress(event))

    async def conclude(self, report: str) -> None:
        await self.interaction.edit_original_response(content=report)

    async def deliver(
        self, images: Sequence[GeneratedImage], generation: Generation, posted: PostedImages
    ) -> None:
        limit = self.interaction.filesize_limit
        try:
            fitted = [await fit_within(image, limit) for image in images]
        except TooLargeToSend as error:
            raise DeliveryFailed(str(error)) from error
        caption = messages.delivered_caption(
            messages.discord_account_name(self.interaction.user.id),
            # The prompt is anyone's text, shown in a public message under the bot's name.
            messages.discord_inert(generation.prompt),
            str(generation.options.get("model_name", generation.model_id)),
            charged_for(generation, len(fitted)),
        )
        for start, end in _message_batches([len(image.data) for image in fitted]):
            batch = fitted[start:end]
            # The generation's id in each file's name is how its images are recognised
            # in the channel when Discord's answer to a post is lost.
            names = [
                f"{generation.id}-{start + number}.{_EXTENSIONS.get(image.mime_type, 'png')}"
                for number, image in enumerate(batch, start=1)
            ]
            content = caption if start == 0 else None
            # The buttons go under the first message: Vary takes its first image.
            view = result_view(generation.id, self.actions(generation)) if start == 0 else None
            try:
                async with asyncio.timeout(self.upload_timeout):
                    sent = await self._post(content, batch, names, view)
            except discord.HTTPException as error:
                if error.status < _SERVER_ERROR:
                    # Refused: a message Discord refuses is not posted, not any of it.
                    raise DeliveryFailed(
                        messages.upload_refused("Discord", error.status)
                    ) from error
                # A 5xx may come after Discord posted the message (and discord.py retries them).
                await self._count_unanswered(posted, names, error)
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                await self._count_unanswered(posted, names, error)
            except asyncio.CancelledError:
                # Stopped mid-upload: the message may have reached the channel all the same.
                posted.landed(await self._found_in_channel(names, _ASK_WHEN_STOPPING_SECONDS))
                raise
            else:
                posted.landed(len(batch), sent.jump_url)

    async def _post(
        self,
        content: str | None,
        batch: Sequence[GeneratedImage],
        names: list[str],
        view: discord.ui.View | None,
    ) -> discord.WebhookMessage:
        files = [
            discord.File(io.BytesIO(image.data), filename=name)
            for image, name in zip(batch, names, strict=True)
        ]
        extra: dict[str, Any] = {} if view is None else {"view": view}
        return await self.interaction.followup.send(
            content=content,
            files=files,
            ephemeral=False,
            allowed_mentions=discord.AllowedMentions.none(),
            **extra,
        )

    async def _count_unanswered(
        self, posted: PostedImages, names: list[str], error: Exception
    ) -> None:
        """A post whose answer was lost: count what Discord shows in the channel, then go on
        if it all arrived, or stop the delivery here."""
        logger.warning(
            "Discord did not answer the post of %s (%r); asking whether it arrived", names, error
        )
        found = await self._found_in_channel(names, self.upload_timeout)
        posted.landed(found)
        if found < len(names):
            raise DeliveryFailed(messages.upload_lost("Discord")) from error

    async def _found_in_channel(self, names: list[str], patience: float) -> int:
        """How many of the files ``names`` are attached to the channel's recent messages.

        When Discord cannot say (no permission to read the history, the
        connection still down), 0: charging for images the user may never have
        seen is worse than giving away ones they did.
        """
        channel = self.interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            logger.warning("%r has no history to find %s in; counted as not posted", channel, names)
            return 0
        wanted = set(names)
        found: set[str] = set()
        try:
            async with asyncio.timeout(patience):
                async for message in channel.history(limit=_RECENT_MESSAGES):
                    found.update(a.filename for a in message.attachments if a.filename in wanted)
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError):
            logger.warning(
                "could not ask Discord whether %s arrived; counted as not posted",
                names,
                exc_info=True,
            )
            return 0
        logger.info("Discord shows %d of %s in the channel", len(found), names)
        return len(found)


def _message_batches(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Files of ``sizes``, in order, as (start, end) runs that each fit one message."""
    batches: list[tuple[int, int]] = []
    start = 0
    carried = 0
    for index, size in enumerate(sizes):
        full = index - start == _ATTACHMENTS_PER_MESSAGE or carried + size > _BYTES_PER_MESSAGE
        if index > start and full:
            batches.append((start, index))
            start, carried = index, 0
        carried += size
    if start < len(sizes):
        batches.append((start, len(sizes)))
    return batches


def _code_blocks(table: str) -> list[str]:
    """``table`` as code blocks that each fit a message, split between rows, each with the header."""
    header, *rows = table.splitlines()
    room = DISCORD_MESSAGE_CHARACTERS - len("```\n\n```") - len(header) - 1
    blocks: list[list[str]] = [[]]
    used = 0
    for row in rows:
        line = row[:room]
        if blocks[-1] and used + len(line) + 1 > room:
            blocks.append([])
            used = 0
        blocks[-1].append(line)
        used += len(line) + 1
    return ["```\n" + "\n".join([header, *block]) + "\n```" for block in blocks]


def _lines_in_messages(text: str) -> list[str]:
    """``text`` as messages that each fit Discord's limit, split between lines."""
    pieces: list[str] = []
    for line in text.splitlines():
        if pieces and len(pieces[-1]) + 1 + len(line) <= DISCORD_MESSAGE_CHARACTERS:
            pieces[-1] += "\n" + line
        else:
            pieces.append(line[:DISCORD_MESSAGE_CHARACTERS])
    return pieces or [text]


def _with_reference(options: ImagineOptions, reference: ReferenceImage) -> ImagineOptions:
    return replace(options, reference_images=(reference,))


async def _quoted(quoting: Awaitable[Quote]) -> tuple[str, Quote | None]:
    """The quote and the text shown above its buttons, or a refusal's sentence and None."""
    try:
        quote = await quoting
    except ModelUnusable as unusable:
        return unusable.message, unusable.alternative
    except ImagineError as refusal:
        return refusal.message, None
    return quote.summary, quote


async def _ready_in_time(interaction: discord.Interaction, work: Awaitable[T]) -> T:
    """``work``'s result; if it is not ready in time for Discord, "thinking…" is shown first."""

    async def thinking() -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)

    return await answer_in_time(work, thinking)


async def _answer(
    interaction: discord.Interaction,
    text: str,
    *,
    view: discord.ui.View | None = None,
    files: Sequence[discord.File] = (),
) -> int | None:
    """Answer ephemerally, with ``files`` attached; after a deferral, by filling in the
    "thinking…" message.

    Returns the answer's message id, when Discord gives it.
    """
    if interaction.response.is_done():
        # Only named when there are files: an empty list would be sent as "remove them all".
        attached: dict[str, Any] = {"attachments": list(files)} if files else {}
        edited = await interaction.edit_original_response(content=text, view=view, **attached)
        return edited.id
    extra: dict[str, Any] = {"files": list(files)} if files else {}
    if view is not None:
        extra["view"] = view
    return (await interaction.response.send_message(text, ephemeral=True, **extra)).message_id


async def _downloaded(reference: discord.Attachment) -> ReferenceImage:
    """An attached reference image, ready to quote, or the ``RequestError`` saying what to do about it."""
    claimed = references.check_attachment(
        reference.filename, reference.content_type, reference.size
    )
    try:
        data = await reference.read()
    except (discord.HTTPException, aiohttp.ClientError) as failure:
        logger.warning("could not download the reference %s: %s", reference.filename, failure)
        raise RequestError(messages.reference_unreadable(reference.filename)) from None
    return await references.prepare(reference.filename, claimed, data)


def _chosen_resolution(interaction: discord.Interaction, model: ModelSpec) -> str:
    """The resolution chosen so far if the model makes it, else the model's default: a
    choice's price is shown for what the command would most likely ask."""
    chosen = str(getattr(interaction.namespace, "resolution", None) or "").strip().upper()
    return chosen if chosen in model.resolutions else model.default_resolution


def _chosen_count(interaction: discord.Interaction, model: ModelSpec) -> int:
    """The number of images chosen so far if the model makes that many, else 1."""
    chosen = getattr(interaction.namespace, "count", None)
    return chosen if isinstance(chosen, int) and 1 <= chosen <= model.max_images else 1


def _role_ids(user: discord.User | discord.Member) -> tuple[str, ...]:
    """A server member's role ids, for ``[allowance.discord_roles]``; none in a direct message."""
    return tuple(str(role.id) for role in getattr(user, "roles", ()))


async def _refuse_click(interaction: discord.Interaction, refusal: ImagineError) -> None:
    """Say why a click changed nothing, where ``ImagineError.ends_the_request`` says."""
    if refusal.ends_the_request:
        await _replace_clicked(interaction, refusal.message)
    else:
        await _tell_clicker(interaction, refusal.message)


async def _replace_clicked(interaction: discord.Interaction, text: str) -> None:
    """Put ``text`` in place of the clicked message and its buttons (edited, after a deferral)."""
    if interaction.response.is_done():
        await interaction.edit_original_response(content=text, view=None)
    else:
        await interaction.response.edit_message(content=text, view=None)


async def _tell_clicker(interaction: discord.Interaction, text: str) -> None:
    """Say ``text`` to the clicker alone, leaving the clicked message as it is."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


def prepare_discord(
    service: ImagineService, settings: Settings, _public: PublicWeb
) -> Callable[[], Awaitable[None]]:
    """What runs the Discord bot until cancelled, then closes it (running generations release
    their holds). Discord needs no route of its own on the web server."""
    token = settings.discord_token
    if not token:
        raise ValueError("DISCORD_TOKEN is not set")

    async def serve() -> None:
        point_at(settings.discord_api_base)
        bot = ImagineBot(service, settings)
        try:
            await bot.start(token)
        finally:
            await bot.close()

    return serve


async def sync_discord_commands(service: ImagineService, settings: Settings) -> CommandSync:
    """``imagine-bot discord sync``: log in over HTTP only and sync the commands now."""
    if not settings.discord_token:
        raise ValueError("DISCORD_TOKEN is not set")
    point_at(settings.discord_api_base)
    bot = ImagineBot(service, settings, sync_on_start=False)
    try:
        await bot.login(settings.discord_token)
        return await bot.sync_commands(force=True)
    finally:
        await bot.close()


def point_at(api_base: str) -> None:
    """Send every REST call of the client to ``api_base`` (a rate-limit proxy, or a test's fake)."""
    discord.http.Route.BASE = api_base.rstrip("/")
