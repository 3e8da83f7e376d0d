#!/usr/bin/env bash
# Prepare a checkout: .venv with the package and dev tools, and the pinned Azurite.
# Idempotent and quick when nothing changed; works from any directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV_PY="$ROOT/.venv/bin/python"
STAMP="$ROOT/.venv/.durable-azure-setup.sha256"

say() { echo "setup: $*"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "setup: $PYTHON not found; install Python >= 3.11" >&2
    exit 1
fi

if [ ! -x "$VENV_PY" ]; then
    say "creating .venv with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$ROOT/.venv"
fi

# Reinstall only when pyproject.toml (or the venv's Python) changed, or the package is gone.
want="$("$VENV_PY" - <<'PY'
import hashlib, sys
h = hashlib.sha256(open("pyproject.toml", "rb").read())
h.update(sys.version.encode())
print(h.hexdigest())
PY
)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" = "$have" ] && "$VENV_PY" -c 'import importlib.metadata as m; m.version("durable-azure")' >/dev/null 2>&1; then
    say "python packages up to date"
else
    say "installing the package and dev tools into .venv (pip install -e '.[dev]')"
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    echo "$want" >"$STAMP"
fi

say "checking Azurite"
"$PYTHON" "$ROOT/azurite/azurite.py" install

say "done"
