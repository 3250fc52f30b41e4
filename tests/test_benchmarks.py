"""The benchmarks still run: each `--quick` run finishes and prints its headline as its last line.

These check that the scripts work, not how fast anything is (machines here are
shared and noisy; bench/README.md has the figures).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_postgres

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("name", "headline"),
    [
        ("dashboard", "dashboard: slowest page"),
        ("delivery", "delivery: worst fit/JPEG ratio"),
        ("inflight", "inflight: "),
        ("ledger", "ledger: worst ledger/raw ratio"),
        ("latency", "latency: confirm p99"),
        ("references", "references: peak RSS growth"),
        ("report", "report: slowest report sqlite"),
    ],
)
def test_a_quick_benchmark_run_prints_its_headline(name: str, headline: str) -> None:
    assert last_line_of_quick_run(name).startswith(headline)


@pytest.mark.postgres
async def test_a_quick_run_with_the_ledger_on_postgresql_prints_its_headline() -> None:
    # One benchmark is enough: every --database postgresql goes through bench.common's
    # ledger_database, and each quick run costs the suite seconds (this one, in a single
    # process, the fewest).
    await require_postgres()

    last_line = last_line_of_quick_run("inflight", "--database", "postgresql")

    assert last_line.startswith("inflight: ")


def last_line_of_quick_run(name: str, *arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]
