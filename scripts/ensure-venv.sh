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
wanted="$(cat "$root/pyproject.toml" | cksum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "Installing dependencies into $venv…" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    target="$root"
    [ -n "$extras" ] && target="$root[$extras]"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$target"
    echo "$wanted" >"$stamp"
fi
