"""Running `imagine-bot` for a test, in a folder of its own with only the settings the test gives.

``imagine_bot`` runs the command's ``main`` in this process: the same argument parsing,
settings, exit codes and output, without a second or so of interpreter start-up and
imports. ``imagine_bot_process`` and ``command_and_environment`` start the real program,
for what only a process shows: signals, a killed process, serving a platform until
SIGTERM, standard input from a pipe.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import discord.http
import pytest

from bot import cli
from bot.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = REPO / "config" / "models.toml"

_OUTSIDE_PREFIXES = ("DISCORD_", "SLACK_", "GEMINI_", "GOOGLE_", "OPENAI_")


def _from_outside(name: str) -> bool:
    """A variable of whoever runs the tests that the bot would read: a setting, a token, a key."""
    return name.upper().startswith(_OUTSIDE_PREFIXES) or name.lower() in Settings.model_fields


def _settings(cwd: Path, environment: dict[str, str]) -> dict[str, str]:
    """A SQLite file and an output folder in ``cwd``, the shipped models, no admins; then ``environment``."""
    return {
        "DATABASE_URL": f"sqlite+aiosqlite:///{cwd / 'imagine.db'}",
        "MODELS_FILE": str(SHIPPED_MODELS),
        "OUTPUT_DIR": str(cwd / "out"),
        "ADMIN_ACCOUNTS": "",
        **environment,
    }


def command_and_environment(
    cwd: Path, environment: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The installed ``imagine-bot`` and the environment to start it with in ``cwd``."""
    script = Path(sys.executable).with_name("imagine-bot")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bot"]
    env = {name: value for name, value in os.environ.items() if not _from_outside(name)}
    env.update(_settings(cwd, environment))
    return command, env


def imagine_bot_process(
    cwd: Path, *arguments: str, stdin: str = "", **environment: str
) -> subprocess.CompletedProcess[str]:
    """``imagine-bot ARGUMENTS`` as a process of its own, ``stdin`` through a pipe."""
    command, env = command_and_environment(cwd, environment)
    return subprocess.run(
        [*command, *arguments],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@dataclass(frozen=True)
class Finished:
    """What a finished ``imagine-bot`` left: its exit code and everything it printed."""

    returncode: int
    stdout: str
    stderr: str


def imagine_bot(cwd: Path, *arguments: str, stdin: str = "", **environment: str) -> Finished:
    """``imagine-bot ARGUMENTS`` in this process, as its own process would run it.

    In ``cwd`` (so a ``.env`` file elsewhere is never read), with none of the settings,
    tokens or keys of whoever runs the tests, reading ``stdin``. What the command changes
    for the whole process (logging, the SIGTERM handler, where discord.py sends requests)
    is put back afterwards. A console or ``run`` handles SIGTERM, which only the main
    thread may: call this from a test that is not ``async`` for those. Other commands may
    run in a thread (``asyncio.to_thread``) while the test's event loop serves a fake.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, _process_state_put_back():
        patch.chdir(cwd)
        for name in [name for name in os.environ if _from_outside(name)]:
            patch.delenv(name)
        for name, value in _settings(cwd, environment).items():
            patch.setenv(name, value)
        patch.setattr(sys, "stdin", io.StringIO(stdin))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                cli.main(list(arguments))
            except SystemExit as exit_:
                code = _exit_code(exit_)
            else:
                raise AssertionError("imagine-bot's main returned instead of exiting")
    return Finished(code, stdout.getvalue(), stderr.getvalue())


def _exit_code(exit_: SystemExit) -> int:
    """The status a process would exit with after ``exit_`` (a message means status 1)."""
    if exit_.code is None or isinstance(exit_.code, int):
        return exit_.code or 0
    print(exit_.code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def _process_state_put_back() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    on_sigterm = signal.getsignal(signal.SIGTERM)
    api_base = discord.http.Route.BASE
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)
        discord.http.Route.BASE = api_base
