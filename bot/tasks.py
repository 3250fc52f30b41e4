"""Work a chat adapter starts after answering, kept until it ends or the bot stops.

Platforms want an answer within three seconds, and a generation takes longer,
so an adapter acknowledges the click and runs ``ImagineService.confirm`` here.
Stopping cancels what is still running: the flow then releases each hold.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

ANSWER_WITHIN_SECONDS = 1.5
"""Discord and Slack want an answer within 3 s of a command; this leaves room for the round trip."""


async def answer_in_time(work: Awaitable[T], acknowledge: Callable[[], Awaitable[None]]) -> T:
    """The result of ``work``, calling ``acknowledge`` first if it is not ready in time.

    Under a burst of commands quotes queue for the database; a platform told
    "working on it" in time does not report the command as failed.
    """
    loop = asyncio.get_running_loop()
    acknowledging: asyncio.Task[None] | None = None

    def too_slow() -> None:
        nonlocal acknowledging
        acknowledging = loop.create_task(acknowledge())

    # The work runs in this task, not one of its own: a single quote answers
    # sooner by the loop iterations a task and a wait would cost.
    timer = loop.call_later(ANSWER_WITHIN_SECONDS, too_slow)
    try:
        return await work
    finally:
        timer.cancel()
        if acknowledging is not None:
            # The caller's answer must come after the acknowledgement it follows up.
            await acknowledging


class BackgroundTasks:
    """Tasks kept referenced until they finish (asyncio holds only weak references)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for every task started so far to end."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self) -> None:
        """Cancel what is still running and wait until it has wound down."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=error)
