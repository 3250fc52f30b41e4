#!/usr/bin/env bash
# Install the test dependencies and run the whole suite: lint, then pytest.
# Arguments go to pytest (e.g. ./test.sh -k ledger). PostgreSQL tests skip when the server at
# 127.0.0.1:5432 is unreachable, unless REQUIRE_POSTGRES=1.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-venv.sh dev
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/python -m pytest "$@"
