#!/usr/bin/env bash
# Install the test dependencies and run the whole suite: lint, then pytest.
# Arguments go to pytest (e.g. ./test.sh -k ledger; -n 0 runs every test in one process).
# PostgreSQL tests skip when the server at 127.0.0.1:5432 is unreachable, unless REQUIRE_POSTGRES=1.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-venv.sh dev
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
# The suite starts many Python processes (workers, bots, benchmarks); each compiles the project's
# modules and pytest rewrites every test module again unless bytecode may be cached (gitignored).
unset PYTHONDONTWRITEBYTECODE
# Four pytest-xdist workers, even on two cores: much of the suite waits (on platform deadlines,
# sockets, subprocesses), so more workers than cores finish sooner; a worker that runs out
# of tests takes some of another's, so one long test file does not finish alone.
exec .venv/bin/python -m pytest -n 4 --dist worksteal "$@"
