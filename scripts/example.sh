#!/usr/bin/env bash
# Run the hello_cities example (arguments go to it). It starts Azurite if none answers.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m examples.hello_cities "$@"
