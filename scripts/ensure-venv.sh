# Sourced by run.sh and test.sh: make .venv with Python 3.11+ and install the project into it,
# again only when pyproject.toml changed. $1 names the extras to install ("" or "dev").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${1:-}"

find_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "Imagine bot needs Python 3.11 or newer; install it and run this again." >&2
    return 1
}

if [ ! -x "$venv/bin/python" ]; then
    python="$(find_python)"
    echo "Creating $venv with $python…" >&2
    "$python" -m venv "$venv"
fi

stamp="$venv/.install-stamp${extras:+-$extras}"
wanted="$(cksum <"$root/pyproject.toml")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "Installing dependencies into $venv (first run only; the log is $venv/install.log)…" >&2
    target="$root"
    [ -n "$extras" ] && target="$root[$extras]"
    if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
        "$venv/bin/python" -m pip install --disable-pip-version-check -e "$target"; } \
        >"$venv/install.log" 2>&1; then
        tail -n 30 "$venv/install.log" >&2
        echo "Installing the dependencies failed; the whole log is $venv/install.log." >&2
        exit 1
    fi
    echo "$wanted" >"$stamp"
fi
