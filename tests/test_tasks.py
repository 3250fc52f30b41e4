"""Deadlines: quotes falling due under one timer; background work started after an announcement."""

from __future__ import annotations

import asyncio

from bot.tasks import BackgroundTasks, Deadlines


class Recorder:
    def __init__(self) -> None:
        self.fell_due: list[tuple[str, int]] = []
        self.changed = asyncio.Event()

    def __call__(self, key: str, value: int) -> None:
        self.fell_due.append((key, value))
        self.changed.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.fell_due) < count:
                self.changed.clear()
                await self.changed.wait()


async def test_each_falls_due_once_in_the_order_added() -> None:
    recorder = Recorder()
    deadlines: Deadlines[str, int] = Deadlines(recorder)

    for number in range(3):
        deadlines.add(f"quote {number}", number, due_in_seconds=0.01)
    await recorder.until(3)
    await asyncio.sleep(0.05)

    assert recorder.fell_due == [("quote 0", 0), ("quote 1", 1), ("quote 2", 2)]
    assert len(deadlines) == 0


async def test_one_added_later_falls_due_after_the_first_at_its_own_time() -> None:
    recorder = Recorder()
    deadlines: Deadlines[str, int] = Deadlines(recorder)

    deadlines.add("first", 1, due_in_seconds=0.01)
    deadlines.add("later", 2, due_in_seconds=0.2)
    await recorder.until(1)

    assert recorder.fell_due == [("first", 1)]
    assert len(deadlines) == 1
    await recorder.until(2)
    assert recorder.fell_due[1] == ("later", 2)


async def test_one_discarded_before_it_falls_due_never_does() -> None:
    recorder = Recorder()
    deadlines: Deadlines[str, int] = Deadlines(recorder)

    deadlines.add("clicked", 1, due_in_seconds=0.01)
    deadlines.add("left alone", 2, due_in_seconds=0.02)
    deadlines.discard("clicked")
    await recorder.until(1)

    assert recorder.fell_due == [("left alone", 2)]


async def test_adding_after_all_fell_due_starts_the_timer_again() -> None:
    recorder = Recorder()
    deadlines: Deadlines[str, int] = Deadlines(recorder)

    deadlines.add("first", 1, due_in_seconds=0.01)
    await recorder.until(1)
    deadlines.add("second", 2, due_in_seconds=0.01)
    await recorder.until(2)

    assert [key for key, _ in recorder.fell_due] == ["first", "second"]


async def test_closing_forgets_everything_without_calling_anything() -> None:
    recorder = Recorder()
    deadlines: Deadlines[str, int] = Deadlines(recorder)

    deadlines.add("pending", 1, due_in_seconds=0.01)
    deadlines.close()
    await asyncio.sleep(0.05)

    assert recorder.fell_due == []
    assert len(deadlines) == 0


async def test_work_spawned_after_an_announcement_runs_even_when_the_announcement_fails() -> None:
    background = BackgroundTasks()
    ran = asyncio.Event()

    async def announce() -> None:
        raise ConnectionResetError("the platform hung up")

    async def work() -> None:
        ran.set()

    await background.spawn_after(announce(), work(), name="generation g1")
    await background.drain()

    assert ran.is_set()
