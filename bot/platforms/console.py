"""The terminal chat: the same commands the platforms get, typed at a prompt or piped in.

Like the Discord and Slack adapters it only translates: lines in, the shared
flow's answers out, and images saved to ``OUTPUT_DIR`` instead of posted.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bot import messages, statements
from bot.credits import Adjustment, parse_adjustment, parse_settings
from bot.errors import ImagineError, ModelUnusable
from bot.flow import DeliveryFailed, ImagineService, PostedImages
from bot.parsing import estimate_only, parse_compare_text, parse_imagine_text
from bot.prices import PriceAdmin, parse_price_command
from bot.progress import ProgressEvent
from bot.purchases import Notice
from bot.stats import parse_stats_arguments
from bot.subjects import check_new_subject, image_from_file
from ledger import Generation
from providers.base import GeneratedImage

logger = logging.getLogger(__name__)

ReadLine = Callable[[str], Awaitable[str | None]]
"""Shows a prompt and returns the next line typed, or ``None`` at end of input."""
Write = Callable[[str], None]

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class ConsoleChat:
    """One person chatting as ``account``."""

    def __init__(
        self,
        service: ImagineService,
        account: str,
        *,
        output_dir: Path,
        read_line: ReadLine,
        write: Write,
        welcome_credits: int = 0,
    ) -> None:
        self.service = service
        self.account = account
        self.output_dir = output_dir
        self.read_line = read_line
        self.write = write
        self.welcome_credits = welcome_credits
        self.prices = PriceAdmin(service.credits, service.catalog.registry)
        service.purchases.notifiers["console"] = self._told

    async def run(self) -> None:
        """Greet, then answer lines until /quit or the end of input."""
        balance = await self.service.credits.open_account(
            self.account, welcome_credits=self.welcome_credits
        )
        self.write(
            messages.console_greeting(
                self.account, self.service.credits.is_admin(self.account), balance.available
            )
        )
        while (line := await self.read_line("you> ")) is not None:
            if not await self.handle(line):
                break

    async def handle(self, line: str) -> bool:
        """Answer one line; returns False when the user asked to leave."""
        text = line.strip()
        if not text or text.startswith("#"):
            return True
        if not text.startswith("/"):
            self.write(messages.NOT_A_COMMAND)
            return True
        command, _, arguments = text[1:].partition(" ")
        command = command.lower()
        if command in ("quit", "exit"):
            return False
        handler = self._commands().get(command)
        if handler is None:
            self.write(messages.unknown_command(command))
            return True
        try:
            await handler(arguments.strip())
        except ImagineError as error:
            self.write(error.message)
        except Exception:
            # The chat goes on: the next line may well work (the database back, say).
            logger.exception("/%s failed", command)
            self.write(messages.SOMETHING_WENT_WRONG)
        return True

    def _commands(self) -> dict[str, Callable[[str], Awaitable[None]]]:
        return {
            "imagine": self.imagine,
            "compare": self.compare,
            "credits": self.show_credits,
            "statement": self.show_statement,
            "balance": self.show_credits,
            "models": self.show_models,
            "help": self.show_help,
            "grant": self.grant,
            "revoke": self.revoke,
            "price": self.price,
            "buy": self.buy,
            "stats": self.stats,
            "history": self.show_history,
            "settings": self.settings,
            "subject": self.subject,
        }

    async def imagine(self, text: str) -> None:
        price_only, text = estimate_only(text)
        request = await self.service.request(self.account, parse_imagine_text(text))
        if price_only:
            self.write((await self.service.estimate(self.account, request)).summary)
            return
        try:
            quote = await self.service.quote(self.account, request, channel="console")
        except ModelUnusable as unusable:
            if unusable.alternative is None:
                raise
            self.write(unusable.message)
            quote = unusable.alternative
        else:
            self.write(quote.summary)
        if not quote.confirms_itself and not await self._confirmed(quote.question):
            await self.service.cancel(quote.id, self.account)
            self.write(messages.CANCELLED)
            return
        delivery = _SaveToFolder(self.output_dir, self.write)
        await self.service.confirm(quote.id, self.account, delivery)

    async def compare(self, text: str) -> None:
        request = await self.service.compare_request(self.account, parse_compare_text(text))
        quote = await self.service.quote_compare(self.account, request, channel="console")
        self.write(quote.summary)
        answer = await self.read_line(f"{quote.question} [y/N] ")
        if (answer or "").strip().lower() not in ("y", "yes"):
            await self.service.cancel_compare(quote.id, self.account)
            self.write(messages.CANCELLED)
            return
        delivery = _SaveToFolder(self.output_dir, self.write)
        await self.service.confirm_compare(quote.id, self.account, delivery)

    async def _confirmed(self, question: str) -> bool:
        answer = await self.read_line(f"{question} [y/N] ")
        return (answer or "").strip().lower() in ("y", "yes")

    async def show_history(self, _arguments: str) -> None:
        self.write(
            messages.history_entries(await self.service.credits.history_entries(self.account))
        )

    async def settings(self, arguments: str) -> None:
        self.write(await self.service.credits.settings(self.account, parse_settings(arguments)))

    async def _told(self, notice: Notice) -> None:
        self.write(notice.text)

    async def show_credits(self, _arguments: str) -> None:
        self.write(await self.service.credits.statement(self.account))

    async def show_statement(self, _arguments: str) -> None:
        self.write(statements.as_table(await self.service.credits.own_statement(self.account)))

    async def show_models(self, _arguments: str) -> None:
        catalog = self.service.catalog
        rows = [(model, catalog.reason_unavailable(model)) for model in catalog.listed()]
        self.write(messages.models_table(rows, await self.service.own_prices(self.account)))

    async def show_help(self, _arguments: str) -> None:
        usable = self.service.catalog.usable()
        self.write(
            messages.help_text(
                is_admin=self.service.credits.is_admin(self.account),
                default_model=usable[0].id if usable else None,
            )
        )

    async def grant(self, arguments: str) -> None:
        await self._adjust("grant", arguments)

    async def revoke(self, arguments: str) -> None:
        await self._adjust("revoke", arguments)

    async def _adjust(self, action: str, arguments: str) -> None:
        typed = _admin_arguments(action, arguments)
        self.write(
            await self.service.credits.adjust(
                action,
                self.account,
                typed.target,
                typed.amount,
                typed.reason,
                expires=typed.expires,
            )
        )

    async def buy(self, _arguments: str) -> None:
        self.write(await self.service.purchases.offer(self.account, "console"))

    async def price(self, arguments: str) -> None:
        command = parse_price_command(arguments, messages.CONSOLE_PRICE_USAGE)
        self.write(await self.prices.run(self.account, command))

    async def stats(self, arguments: str) -> None:
        """The last 30 days' figures, and their chart saved as a PNG in the output folder."""
        answer = await self.service.stats.answer(self.account, parse_stats_arguments(arguments))
        self.write(answer.text)
        if answer.chart is None:
            return
        path = self.output_dir / answer.chart.filename
        try:
            await asyncio.to_thread(_save, path, answer.chart.png)
        except OSError as error:
            self.write(messages.chart_not_saved(str(self.output_dir), error.strerror or str(error)))
            return
        self.write(messages.saved_to(str(path)))

    async def subject(self, arguments: str) -> None:
        """``save <name> <file>...`` (images read from disk), ``list`` or ``delete <name>``."""
        action, *rest = _words(arguments) or [""]
        subjects = self.service.subjects
        match action.lower(), rest:
            case "list", []:
                self.write(await subjects.listing(self.account))
            case "delete", [name]:
                self.write(await subjects.delete(self.account, name))
            case "save", [name, *paths]:
                check_new_subject(name, len(paths))
                images = [await image_from_file(Path(path)) for path in paths]
                self.write(await subjects.save(self.account, name, images))
            case _:
                self.write(messages.CONSOLE_SUBJECT_USAGE)


class _SaveToFolder:
    """Delivery for the console: progress as lines, images as files."""

    def __init__(self, output_dir: Path, write: Write) -> None:
        self.output_dir = output_dir
        self.write = write

    async def progress(self, event: ProgressEvent) -> None:
        self.write(f"  {messages.progress(event)}")

    async def conclude(self, report: str) -> None:
        self.write(report)

    async def deliver(
        self, images: Sequence[GeneratedImage], generation: Generation, posted: PostedImages
    ) -> None:
        for number, image in enumerate(images, start=1):
            extension = _EXTENSIONS.get(image.mime_type, "bin")
            path = self.output_dir / f"{generation.id}-{number}.{extension}"
            try:
                await asyncio.to_thread(_save, path, image.data)
            except OSError as error:
                raise DeliveryFailed(
                    f"could not write to {self.output_dir}: {error.strerror}"
                ) from error
            posted.landed(1, str(path))
            self.write(messages.saved_to(str(path)))


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _admin_arguments(command: str, arguments: str) -> Adjustment:
    return parse_adjustment(_words(arguments), messages.admin_usage(command))


def _words(arguments: str) -> list[str]:
    try:
        return shlex.split(arguments)
    except ValueError:
        # An unpaired quote, as in a reason like "Bob's prize": taken as typed.
        return arguments.split()


def stdin_reader(interactive: bool) -> ReadLine:
    """Lines from standard input without blocking the event loop.

    A daemon thread does the blocking reads, so Ctrl-C or the end of the
    program is never held up by a read in progress.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    wanted = threading.Semaphore(0)

    def pump() -> None:
        while True:
            wanted.acquire()
            line = sys.stdin.readline()
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n") if line else None)
            if not line:
                return

    threading.Thread(target=pump, name="console-stdin", daemon=True).start()

    finished = False

    async def read_line(prompt: str) -> str | None:
        nonlocal finished
        if finished:
            return None
        if interactive:
            sys.stdout.write(prompt)
            sys.stdout.flush()
        wanted.release()
        line = await lines.get()
        finished = line is None
        return line

    return read_line
