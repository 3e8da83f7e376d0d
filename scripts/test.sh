#!/usr/bin/env bash
# Run the test suite (arguments go to pytest). The session fixture starts Azurite itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
bash "$ROOT/scripts/setup_browser.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
