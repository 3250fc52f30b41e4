#!/usr/bin/env bash
# Run the bot. With no DISCORD_TOKEN or SLACK_BOT_TOKEN set, at a terminal, this is the console
# chat on the local SQLite database with the offline `local` model (from a pipe: ./run.sh console). Arguments go to `imagine-bot`
# (e.g. ./run.sh console --as console:alice, ./run.sh models).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-venv.sh ""
if [ "$#" -eq 0 ]; then
    set -- run
fi
exec .venv/bin/imagine-bot "$@"
