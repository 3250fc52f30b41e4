"""`imagine-bot ledger verify` against a ledger whose stored balance was tampered with."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.cli_helpers import imagine_bot


def test_verify_names_the_tampered_account_and_exits_1(tmp_path: Path) -> None:
    assert imagine_bot(tmp_path, "grant", "discord:42", "100").returncode == 0
    assert imagine_bot(tmp_path, "grant", "discord:43", "50").returncode == 0
    with sqlite3.connect(tmp_path / "imagine.db") as database:
        database.execute("UPDATE accounts SET available = available + 7 WHERE id = 'discord:42'")

    result = imagine_bot(tmp_path, "ledger", "verify")

    assert result.returncode == 1
    assert result.stdout.startswith(
        "discord:42: stored 107 available / 0 held, entries add up to 100 / 0"
    )
    assert "discord:43" not in result.stdout
