"""The loopback Discord in a process of its own, driven by a small HTTP control API.

``bench.latency`` runs the bot under test in its own process and this fake in
another, so the fake's work (building events, parsing the bot's requests) runs
on the other core instead of being counted against the bot, as Discord's
servers are not on the bot's machine either. Every time is taken here, on one
clock: from INTERACTION_CREATE sent to the quote with its buttons received.

    python -m bench.discord_process

prints one JSON line, ``{"api_base": ..., "control": ...}``, and serves until
its standard input closes. ``POST {control}/burst`` with
``{"users": N, "first_user": ID, "click": bool, "bot": K, "guilds": [G, ...]}``
runs /imagine from N users at once, each in the next guild of the list in turn,
sent to the K-th bot connected (0 the first, -1 the newest; null: to the
sessions of the guild's shard, as Discord sends them), and answers
``{"answered": [...], "delivered": [...], "without_images": K, "makespan": S}``:
in seconds, until each quote arrived and from each click until its follow-up
arrived; how many clicks were followed up without an image (refused or failed);
from the first command sent to the last quote received; and the CPU seconds
this fake spent on the burst (``fake_cpu``). ``GET
{control}/shards`` lists the ``[shard, count]`` of every session ready.

The bot is in ``GUILD_ID`` and ``OTHER_GUILD_ID``, on shards 1 and 0 of two.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from tests.loopback_discord import OTHER_GUILD_ID, Interaction, LoopbackDiscord, User

T = TypeVar("T")

# Drawing 500 pictures takes the local provider a while on two cores.
DELIVERY_PATIENCE_SECONDS = 600


def every(items: list[T], done: Callable[[T], bool]) -> Callable[[], bool]:
    """A wait condition for ``done`` of every item that does not rescan finished ones.

    The fake re-checks its condition after every change; a plain ``all(...)``
    would make a burst of N commands cost N² checks.
    """
    waiting = list(items)

    def check() -> bool:
        while waiting and done(waiting[-1]):
            waiting.pop()
        return not waiting

    return check


def quoted(fake: LoopbackDiscord, command: Interaction) -> bool:
    """The command's answer carries its buttons (a 'thinking…' answer does not, yet)."""
    return command.original_id is not None and bool(fake.original(command).buttons)


async def burst(
    fake: LoopbackDiscord, users: int, first_user: int, click: bool, guilds: list[int]
) -> dict[str, Any]:
    people = [User(first_user + number, f"user{number}") for number in range(users)]
    places = [guilds[number % len(guilds)] for number in range(users)]
    commands = await asyncio.gather(
        *(
            fake.slash("imagine", {"prompt": "a lighthouse"}, user=person, guild=guild)
            for person, guild in zip(people, places, strict=True)
        )
    )
    await fake.wait_for(every(commands, lambda command: quoted(fake, command)))
    # The quote's arrival: the first answer, or the edit after a "thinking…" one.
    quoted_at = [fake.original(command).updated_at for command in commands]
    answered = [at - command.sent_at for at, command in zip(quoted_at, commands, strict=True)]
    makespan = max(quoted_at) - min(command.sent_at for command in commands)
    delivered: list[float] = []
    without_images = 0
    if click:
        clicks = await asyncio.gather(
            *(
                fake.click(
                    fake.original(command),
                    fake.original(command).button("Generate"),
                    user=person,
                    guild=guild,
                )
                for command, person, guild in zip(commands, people, places, strict=True)
            )
        )
        await fake.wait_for(
            every(clicks, lambda press: press.followed_up_at is not None),
            patience=DELIVERY_PATIENCE_SECONDS,
        )
        delivered = [press.followed_up_at - press.sent_at for press in clicks]  # type: ignore[operator]
        # A click the bot could not serve is followed up too, with a message and no file.
        without_images = sum(
            not any(message.files for message in fake.followups(press)) for press in clicks
        )
    return {
        "answered": answered,
        "delivered": delivered,
        "without_images": without_images,
        "makespan": makespan,
    }


async def serve() -> None:
    async with LoopbackDiscord() as fake:
        # The benchmark keeps a bare bot and the bot under test connected at once, both as
        # shard 0 of 1, and picks which one gets the events (``listener``).
        fake.allow_duplicate_shards = True
        fake.add_guild(OTHER_GUILD_ID)

        async def run_burst(request: web.Request) -> web.Response:
            asked = await request.json()
            fake.listener = asked["bot"]
            cpu_before = time.process_time()
            measured = await burst(
                fake, asked["users"], asked["first_user"], asked["click"], asked["guilds"]
            )
            return web.json_response(measured | {"fake_cpu": time.process_time() - cpu_before})

        async def ready_shards(_request: web.Request) -> web.Response:
            ready = [
                session.shard for session in fake.sessions if session.ready and session.connected
            ]
            return web.json_response(ready)

        control = web.Application()
        control.router.add_post("/burst", run_burst)
        control.router.add_get("/shards", ready_shards)
        runner = web.AppRunner(control, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        print(
            json.dumps({"api_base": fake.api_base, "control": f"http://127.0.0.1:{port}"}),
            flush=True,
        )
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve())
