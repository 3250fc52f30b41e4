"""Work a chat adapter starts after answering, kept until it ends or the bot stops.

Platforms want an answer within three seconds, and a generation takes longer,
so an adapter acknowledges the click and runs ``ImagineService.confirm`` here.
Stopping cancels what is still running: the flow then releases each hold.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

ANSWER_WITHIN_SECONDS = 1.5
"""Discord and Slack want an answer within 3 s of a command; this leaves room for the round trip."""


async def answer_in_time(work: Awaitable[T], acknowledge: Callable[[], Awaitable[object]]) -> T:
    """The result of ``work``, calling ``acknowledge`` first if it is not ready in time.

    Under a burst of commands quotes queue for the database; a platform told
    "working on it" in time does not report the command as failed.
    """
    loop = asyncio.get_running_loop()
    acknowledging: asyncio.Task[object] | None = None

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
            # One the platform refused must not lose what the work did (a hold taken).
            try:
                await acknowledging
            except Exception:
                logger.warning("could not acknowledge in time", exc_info=True)


class BackgroundTasks:
    """Tasks kept referenced until they finish (asyncio holds only weak references)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    async def spawn_after(
        self,
        announcement: Awaitable[Any],
        work: Coroutine[Any, Any, Any],
        *,
        name: str,
    ) -> None:
        """Await ``announcement``, then spawn ``work`` whether or not it could be made.

        For a held generation: the hold is settled only by the generation, so
        a "Starting…" the platform would not show must not stop it.
        """
        try:
            await announcement
        except Exception:
            logger.warning("could not announce %s; it runs all the same", name, exc_info=True)
        finally:
            self.spawn(work, name=name)

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


class Deadlines(Generic[K, T]):
    """Things that each fall due a while after they were added, kept under one timer.

    Made for quotes, which all wait equally long and so fall due in the order
    they were added: a timer for the oldest alone, rather than one per quote in
    the event loop's heap, where thousands of them cost every other timer a
    longer search. Something added with an earlier due time than the one
    before it waits for that one.
    """

    def __init__(self, on_due: Callable[[K, T], None]) -> None:
        self._on_due = on_due
        self._waiting: dict[K, tuple[float, T]] = {}
        """In the order added (dicts keep it), each with its due time on the loop's clock."""
        self._timer: asyncio.TimerHandle | None = None

    def add(self, key: K, value: T, *, due_in_seconds: float) -> None:
        """Wait for ``key``, replacing (and moving last) what it was waiting with before."""
        loop = asyncio.get_running_loop()
        self._waiting.pop(key, None)
        self._waiting[key] = (loop.time() + due_in_seconds, value)
        if self._timer is None:
            self._timer = loop.call_at(self._waiting[key][0], self._fire)

    def discard(self, key: K) -> None:
        """Forget ``key`` (done with before it fell due); the timer finds out when it fires."""
        self._waiting.pop(key, None)

    def get(self, key: K) -> T | None:
        """What ``key`` waits with, if it has not fallen due (nor been discarded)."""
        waiting = self._waiting.get(key)
        return None if waiting is None else waiting[1]

    def __len__(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        """Forget everything, calling nothing."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._timer = None
        while self._waiting:
            key, (due, value) = next(iter(self._waiting.items()))
            if due > now:
                self._timer = loop.call_at(due, self._fire)
                return
            del self._waiting[key]
            self._on_due(key, value)
