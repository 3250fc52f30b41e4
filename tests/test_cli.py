"""`imagine-bot` as a user runs it: a fresh database, scripted standard input.

Commands run in this process (``bot.cli.main``, see ``tests/cli_helpers.py``); the console
reading a pipe and SIGTERM while generating run the real program.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import pwd
import re
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from bot import cli, messages
from ledger import Ledger, NewPurchase, PaymentEvent, create_engine, migrate
from tests.cli_helpers import command_and_environment, imagine_bot, imagine_bot_process


def test_console_generates_saves_and_charges(tmp_path: Path) -> None:
    result = imagine_bot_process(
        tmp_path,
        "console",
        stdin="/imagine model:local-sketch count:2 aspect:16:9 a fox in snow\ny\n/credits\n",
    )
    assert result.returncode == 0, result.stderr
    assert "chatting as console:local (admin) · 100 credits available" in result.stdout
    assert "Done: 2 images for 2 credits." in result.stdout
    assert "Balance: 98 credits available." in result.stdout
    saved = sorted((tmp_path / "out").iterdir())
    assert len(saved) == 2
    with Image.open(saved[0]) as image:
        assert image.size == (1024, 576)


def test_the_console_reads_commands_from_a_pipe(tmp_path: Path) -> None:
    result = imagine_bot(tmp_path, "console", stdin="/models\n")
    assert result.returncode == 0, result.stderr
    assert "local-sketch" in result.stdout
    assert "unavailable: no API key is configured (set GEMINI_API_KEY)" in result.stdout


def test_run_without_chat_tokens_or_a_terminal_exits_2_and_opens_no_database(
    tmp_path: Path,
) -> None:
    # As in a container started without its token: failing loudly beats a console nobody reads.
    result = imagine_bot(tmp_path, "run", stdin="/grant console:local 5\n")
    assert result.returncode == 2
    assert "No chat platform is configured and there is no terminal to chat in" in result.stderr
    assert "imagine-bot console" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "imagine.db").exists()


def test_run_without_chat_tokens_on_a_terminal_is_the_console(tmp_path: Path) -> None:
    command, env = command_and_environment(tmp_path, {})
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"/quit\n")
        result = subprocess.run(
            [*command, "run"],
            cwd=tmp_path,
            env=env,
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 0, result.stderr
    assert "chatting as console:local (admin)" in result.stdout


def test_another_account_in_the_console_has_only_its_own_rights(tmp_path: Path) -> None:
    result = imagine_bot(
        tmp_path, "console", "--as", "console:alice", stdin="/grant console:alice 500\n/credits\n"
    )
    assert result.returncode == 0, result.stderr
    assert "Only bot admins can grant or revoke credits" in result.stdout
    assert "Balance: 0 credits available." in result.stdout


def test_grant_balance_history_and_revoke_from_the_command_line(tmp_path: Path) -> None:
    granted = imagine_bot(tmp_path, "grant", "discord:42", "50", "--reason", "launch party")
    assert granted.returncode == 0, granted.stderr
    assert "Granted 50 credits to discord:42" in granted.stdout
    revoked = imagine_bot(tmp_path, "revoke", "discord:42", "20")
    assert revoked.returncode == 0, revoked.stderr
    balance = imagine_bot(tmp_path, "balance", "discord:42")
    assert "discord:42: Balance: 30 credits available." in balance.stdout
    history = imagine_bot(tmp_path, "history", "discord:42")
    assert "No generations yet" in history.stdout


@pytest.mark.parametrize(
    ("arguments", "exit_code", "says"),
    [
        (("balance", "discord:7"), 1, "discord:7 has never used the bot"),
        (("revoke", "discord:7", "5"), 1, "discord:7 has never used the bot"),
        (("grant", "discord:7", "0"), 2, "'0' is not an amount"),
        (("grant", "discord:7", "ten"), 2, "'ten' is not an amount"),
        (("grant", "bob", "10"), 2, "'bob' is not an account"),
        (("grant", "discord:7", "10", "--expires-in", "7 days"), 2, "'7 days' is not a duration"),
        (("grant", "discord:7", "10", "--expires-in", "0d"), 2, "'0d' is not a duration"),
        (("grant", "discord:7", "10", "--expires-at", "2001-01-01"), 2, "has already passed"),
        (("grant", "discord:7", "10", "--expires-at", "soon"), 2, "'soon' is not a date"),
    ],
)
def test_admin_commands_refuse_bad_input_with_an_exit_code(
    tmp_path: Path, arguments: tuple[str, ...], exit_code: int, says: str
) -> None:
    result = imagine_bot(tmp_path, *arguments)
    assert result.returncode == exit_code
    assert says in result.stderr


def test_a_database_that_cannot_be_reached_is_named_with_what_to_check(tmp_path: Path) -> None:
    result = imagine_bot(
        tmp_path,
        "balance",
        "discord:7",
        DATABASE_URL="postgresql+asyncpg://bot:secret@127.0.0.1:1/imagine",
    )
    assert result.returncode == 1
    assert "Cannot use the database at postgresql+asyncpg://bot:***@127.0.0.1:1/imagine" in (
        result.stderr
    )
    assert "Check DATABASE_URL" in result.stderr


def test_a_platform_that_cannot_be_reached_is_not_blamed_on_the_database(tmp_path: Path) -> None:
    result = imagine_bot(
        tmp_path,
        "discord",
        "sync",
        DISCORD_TOKEN="token",
        DISCORD_API_BASE="http://127.0.0.1:1/api/v10",
    )
    assert result.returncode == 1
    assert "Stopped: Cannot connect to host 127.0.0.1:1" in result.stderr
    assert "database" not in result.stderr


def test_a_grant_that_expires_is_its_own_lot_and_balance_lists_the_lots(tmp_path: Path) -> None:
    imagine_bot(tmp_path, "grant", "discord:42", "30")
    granted = imagine_bot(
        tmp_path, "grant", "discord:42", "20", "--expires-at", "2099-01-01T12:00+01:00"
    )

    assert granted.returncode == 0, granted.stderr
    assert "Granted 20 credits to discord:42, expiring 2099-01-01 11:00 UTC;" in granted.stdout
    balance = imagine_bot(tmp_path, "balance", "discord:42")
    assert balance.stdout.splitlines() == [
        "discord:42: Balance: 50 credits available.",
        "  20 credits promo · expires 2099-01-01 11:00 UTC",
        "  30 credits promo · never expires",
    ]


def test_a_grant_given_both_expiry_options_is_refused_by_its_usage(tmp_path: Path) -> None:
    refused = imagine_bot(
        tmp_path, "grant", "discord:7", "5", "--expires-in", "7d", "--expires-at", "2099-01-01"
    )

    assert refused.returncode == 2
    assert "not allowed with argument" in refused.stderr


def test_a_grant_run_twice_with_one_idempotency_key_grants_once(tmp_path: Path) -> None:
    first = imagine_bot(tmp_path, "grant", "discord:42", "50", "--idempotency-key", "march-1")
    again = imagine_bot(tmp_path, "grant", "discord:42", "50", "--idempotency-key", "march-1")

    assert first.returncode == 0, first.stderr
    assert "Granted 50 credits to discord:42" in first.stdout
    assert again.returncode == 0, again.stderr
    assert "Already granted 50 credits to discord:42 with this key" in again.stdout
    balance = imagine_bot(tmp_path, "balance", "discord:42")
    assert "discord:42: Balance: 50 credits available." in balance.stdout


def test_a_revoke_run_twice_with_one_idempotency_key_revokes_once(tmp_path: Path) -> None:
    imagine_bot(tmp_path, "grant", "discord:42", "50")
    for _ in range(2):
        result = imagine_bot(tmp_path, "revoke", "discord:42", "20", "--idempotency-key", "r-1")
        assert result.returncode == 0, result.stderr

    assert "Already revoked 20 credits from discord:42 with this key" in result.stdout
    balance = imagine_bot(tmp_path, "balance", "discord:42")
    assert "discord:42: Balance: 30 credits available." in balance.stdout


@pytest.mark.parametrize(
    "reused_for",
    [("grant", "discord:42", "60"), ("grant", "discord:43", "50"), ("revoke", "discord:42", "50")],
    ids=["another amount", "another account", "another action"],
)
def test_an_idempotency_key_reused_for_a_different_change_is_refused(
    tmp_path: Path, reused_for: tuple[str, str, str]
) -> None:
    imagine_bot(tmp_path, "grant", "discord:42", "50", "--idempotency-key", "march-1")

    result = imagine_bot(tmp_path, *reused_for, "--idempotency-key", "march-1")

    assert result.returncode == 1
    assert "That idempotency key was already used for a different grant or revoke" in result.stderr
    balance = imagine_bot(tmp_path, "balance", "discord:42")
    assert "discord:42: Balance: 50 credits available." in balance.stdout


def test_revoking_more_than_the_balance_is_refused(tmp_path: Path) -> None:
    imagine_bot(tmp_path, "grant", "discord:42", "5")
    result = imagine_bot(tmp_path, "revoke", "discord:42", "6")
    assert result.returncode == 1
    assert "Cannot revoke 6 credits: only 5 are available" in result.stderr


def test_models_check_accepts_the_shipped_registry(tmp_path: Path) -> None:
    result = imagine_bot(tmp_path, "models", "--check")
    assert result.returncode == 0, result.stderr
    assert "no problems found" in result.stdout


def test_models_check_names_every_problem_and_fails(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        '[models.bad]\nprovider = "nowhere"\nprovider_model = "x"\nname = "Bad"\n'
        'credits_per_image = 0\nresolutions = []\naspect_ratios = ["1:1"]\nmax_images = 1\n'
    )
    result = imagine_bot(tmp_path, "models", "--check", "--file", str(broken))
    assert result.returncode == 1
    assert f"{broken}: model 'bad': key 'credits_per_image'" in result.stderr
    assert f"{broken}: model 'bad': key 'resolutions'" in result.stderr


def test_db_upgrade_migrates_a_fresh_database(tmp_path: Path) -> None:
    result = imagine_bot(tmp_path, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "latest" in result.stdout
    assert (tmp_path / "imagine.db").exists()


def test_ledger_verify_passes_on_a_consistent_ledger(tmp_path: Path) -> None:
    imagine_bot(tmp_path, "console", stdin="/imagine model:local-sketch a fox\ny\n")
    result = imagine_bot(tmp_path, "ledger", "verify")
    assert result.returncode == 0, result.stderr
    assert "Every balance agrees" in result.stdout


def test_a_bad_setting_names_the_variable(tmp_path: Path) -> None:
    result = imagine_bot(tmp_path, "models", STARTING_CREDITS="-3")
    assert result.returncode == 2
    assert "STARTING_CREDITS" in result.stderr


def sigterm_while_generating(tmp_path: Path, settings: dict[str, str], count: int) -> str:
    """Confirm ``count`` images in a console, SIGTERM it once they are generating; what it printed after.

    Also checks that the console then exits 0.
    """
    command, env = command_and_environment(tmp_path, settings)
    console = subprocess.Popen(
        [*command, "console"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert console.stdin is not None and console.stdout is not None
    assert console.stderr is not None
    console.stdin.write(f"/imagine model:local-sketch count:{count} a fox\ny\n")
    console.stdin.flush()
    for line in console.stdout:
        if f"Generating {count} images" in line:
            break
    console.send_signal(signal.SIGTERM)
    rest = console.stdout.read()
    assert console.wait(timeout=30) == 0
    for pipe in (console.stdin, console.stdout, console.stderr):
        pipe.close()
    return rest


def test_sigterm_past_the_grace_period_releases_the_hold_and_exits_cleanly(tmp_path: Path) -> None:
    sigterm_while_generating(
        tmp_path, {"LOCAL_DELAY_SECONDS": "60", "SHUTDOWN_GRACE_SECONDS": "0.2"}, count=3
    )

    balance = imagine_bot(tmp_path, "balance", "console:local")
    assert "Balance: 100 credits available." in balance.stdout
    history = imagine_bot(tmp_path, "history", "console:local")
    assert "0/3 images  0 credits  failed" in history.stdout


def test_config_prints_every_setting_with_secrets_masked(tmp_path: Path) -> None:
    result = imagine_bot(
        tmp_path,
        "config",
        DISCORD_TOKEN="discord-token-that-must-not-show-1234",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}",
        OPENAI_API_KEY="sk-a-key-that-must-not-show-5678",
    )

    assert result.returncode == 0, result.stderr
    assert "discord-token-that-must-not-show" not in result.stdout
    assert "sk-a-key-that-must-not-show" not in result.stdout
    assert re.search(r"^DISCORD_TOKEN\s+set \(…1234\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^USER_CONCURRENCY\s+2$", result.stdout, re.MULTILINE)


def test_sigterm_lets_a_running_generation_finish_within_the_grace_period(
    tmp_path: Path,
) -> None:
    rest = sigterm_while_generating(
        tmp_path, {"LOCAL_DELAY_SECONDS": "0.5", "SHUTDOWN_GRACE_SECONDS": "30"}, count=2
    )

    assert "Done: 2 images for 2 credits." in rest
    balance = imagine_bot(tmp_path, "balance", "console:local")
    assert "Balance: 98 credits available." in balance.stdout


def test_an_admin_command_run_as_a_user_id_without_a_name_is_recorded_by_that_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As in a container started with a bare user id (docker run --user 1234).
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(variable, raising=False)

    def no_such_user(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_such_user)

    assert cli._cli_actor() == f"cli:uid{os.getuid()}"


def test_statement_lists_every_change_by_lot_with_the_running_balance(tmp_path: Path) -> None:
    imagine_bot(tmp_path, "grant", "discord:42", "50")
    imagine_bot(tmp_path, "grant", "discord:42", "20", "--expires-in", "7d")
    imagine_bot(tmp_path, "revoke", "discord:42", "25")

    shown = imagine_bot(tmp_path, "statement", "discord:42", "--format", "json")

    assert shown.returncode == 0, shown.stderr
    changes = [
        (row["kind"], row["lot"], row["available_change"], row["available"])
        for row in json.loads(shown.stdout)
    ]
    # The revoke takes the expiring lot first, as a hold would.
    assert changes == [
        ("grant", "1 promo", 50, 50),
        ("grant", "2 promo", 20, 70),
        ("adjustment", "1 promo", -5, 65),
        ("adjustment", "2 promo", -20, 45),
    ]


def test_a_statement_since_a_date_starts_from_the_balance_then(tmp_path: Path) -> None:
    imagine_bot(tmp_path, "grant", "discord:42", "50")

    shown = imagine_bot(tmp_path, "statement", "discord:42", "--since", "2099-01-01")
    as_csv = imagine_bot(tmp_path, "statement", "discord:42", "--format", "csv")

    assert shown.stdout.strip() == messages.NO_STATEMENT
    assert as_csv.stdout.splitlines()[0] == (
        "time,kind,lot,available_change,held_change,generation,model,available,held,owed"
    )
    assert as_csv.stdout.splitlines()[1].endswith(",grant,1 promo,50,0,,,50,0,0")


def test_a_statement_since_a_date_that_is_not_one_says_so(tmp_path: Path) -> None:
    imagine_bot(tmp_path, "grant", "discord:42", "50")

    refused = imagine_bot(tmp_path, "statement", "discord:42", "--since", "last week")

    assert refused.returncode == 2
    assert "'last week' is not a date" in refused.stderr


async def one_paid_purchase(database: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    await migrate.upgrade(engine)
    ledger = Ledger(engine)
    try:
        await ledger.open_purchase(
            NewPurchase("pur_1", "stripe", "slack:T1:U2", "starter", 500, 499, "usd", "cs_1")
        )
        await ledger.fulfil_purchase("pur_1", PaymentEvent("evt_1", "checkout.session.completed"))
    finally:
        await ledger.close()


def test_purchases_lists_each_pack_bought_with_its_status(tmp_path: Path) -> None:
    asyncio.run(one_paid_purchase(tmp_path / "imagine.db"))

    listed = imagine_bot(tmp_path, "purchases", "--format", "json")
    nobody = imagine_bot(tmp_path, "purchases", "discord:9")

    [row] = json.loads(listed.stdout)["purchases"]
    assert (row["account"], row["pack"], row["price"], row["status"]) == (
        "slack:T1:U2",
        "starter",
        "4.99 USD",
        "paid",
    )
    assert nobody.stdout.strip() == messages.NO_PURCHASES
