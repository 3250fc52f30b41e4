"""``imagine-bot price set/list/clear``: an account's own prices from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import messages
from tests.cli_helpers import imagine_bot

ACCOUNT = "discord:1001"


def prices(tmp_path: Path) -> str:
    listed = imagine_bot(tmp_path, "price", "list", ACCOUNT)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def test_a_fixed_price_and_a_percent_off_are_set_listed_and_cleared(tmp_path: Path) -> None:
    fixed = imagine_bot(
        tmp_path, "price", "set", ACCOUNT, "gemini-3-pro", "8", "--reason", "friend"
    )
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.startswith(f"{ACCOUNT} now pays 8 credits per image of gemini-3-pro")
    percent = imagine_bot(
        tmp_path,
        "price",
        "set",
        ACCOUNT,
        "--percent-off",
        "15",
        "--until",
        "2099-01-01T12:00+02:00",
        "--reason",
        "beta tester",
    )
    assert percent.returncode == 0, percent.stderr
    assert "15% off every model until 2099-01-01 10:00 UTC" in percent.stdout
    listed = prices(tmp_path).splitlines()
    assert listed[0].startswith(f"{ACCOUNT}  every model: 15% off until 2099-01-01 10:00 UTC")
    assert listed[0].endswith(": beta tester")
    assert listed[1].startswith(f"{ACCOUNT}  gemini-3-pro: 8 credits per image  set by cli:")

    cleared = imagine_bot(tmp_path, "price", "clear", ACCOUNT, "gemini-3-pro")
    assert cleared.stdout.startswith(f"Cleared 1 price override of {ACCOUNT} for gemini-3-pro")
    assert len(prices(tmp_path).splitlines()) == 1
    imagine_bot(tmp_path, "price", "clear", ACCOUNT)
    assert prices(tmp_path) == messages.no_price_overrides(ACCOUNT) + "\n"


def test_setting_a_price_again_replaces_the_rule_of_the_same_scope(tmp_path: Path) -> None:
    for credits in ("8", "6"):
        imagine_bot(tmp_path, "price", "set", ACCOUNT, "gemini-3-pro", credits, "--reason", "x")
    [line] = prices(tmp_path).splitlines()
    assert "gemini-3-pro: 6 credits per image" in line


@pytest.mark.parametrize(
    ("arguments", "sentence"),
    [
        (("gemini-3-pro", "0"), messages.invalid_amount("0")),
        (("gemini-3-pro", "2.5"), messages.invalid_amount("2.5")),
        (
            ("gemini-3-po", "8"),
            "There is no model called 'gemini-3-po'. Did you mean gemini-3-pro,",
        ),
        (("--percent-off", "0"), messages.bad_percent("0")),
        (("--percent-off", "101"), messages.bad_percent("101")),
        (("--percent-off", "ten"), messages.bad_percent("ten")),
        (("--percent-off", "10", "--until", "2001-01-01"), "2001-01-01 00:00 UTC has already"),
        (("--percent-off", "10", "--until", "next week"), messages.bad_date("next week")),
        (("gemini-3-pro",), messages.PRICE_ONE_RULE),
        (("gemini-3-pro", "8", "--percent-off", "10"), messages.PRICE_ONE_RULE),
        (("--percent-off", "10", "--reason", " "), messages.PRICE_REASON_NEEDED),
    ],
)
def test_bad_price_input_is_refused_in_one_sentence_and_changes_nothing(
    tmp_path: Path, arguments: tuple[str, ...], sentence: str
) -> None:
    reason = () if "--reason" in arguments else ("--reason", "x")
    refused = imagine_bot(tmp_path, "price", "set", ACCOUNT, *arguments, *reason)
    assert refused.returncode == 2
    assert refused.stderr.startswith(sentence)
    assert len(refused.stderr.strip().splitlines()) == 1
    assert prices(tmp_path) == messages.no_price_overrides(ACCOUNT) + "\n"


def test_models_check_names_the_pricing_file_s_problems(tmp_path: Path) -> None:
    pricing = tmp_path / "pricing.toml"
    pricing.write_text('[packs.small]\ncredits = 5\nprice = "five"\n')
    checked = imagine_bot(tmp_path, "models", "--check", PRICING_FILE=str(pricing))
    assert checked.returncode == 1
    assert f"{pricing}: key 'packs.small.price': 'five' is not a price" in checked.stderr


def test_a_pricing_file_named_but_missing_is_refused(tmp_path: Path) -> None:
    checked = imagine_bot(tmp_path, "models", "--check", PRICING_FILE="missing.toml")
    assert checked.returncode == 1
    assert "missing.toml: file not found" in checked.stderr


def test_without_a_pricing_file_at_the_default_there_are_no_discounts(tmp_path: Path) -> None:
    checked = imagine_bot(tmp_path, "models", "--check")
    assert checked.returncode == 0, checked.stderr
    assert "config/pricing.toml: no such file, so no allowance and no batch discounts." in (
        checked.stdout
    )
