#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser tests (tests/browser, driven by Playwright
# with executable_path; Playwright's own browser downloads are never used). Run by
# scripts/test.sh only: the quick start does not need a browser.
set -euo pipefail
say() { echo "setup: $*"; }
if [ -x /usr/bin/chromium ]; then
    say "chromium present"
else
    say "installing Debian's chromium (apt-get)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    install_chromium() {
        command -v apt-get >/dev/null 2>&1 || return 1
        $SUDO apt-get install -y --no-install-recommends chromium && return 0
        $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends chromium
    }
    if ! install_chromium; then
        if [ "${CI:-}" = "true" ]; then
            echo "setup: could not install chromium, which the browser tests need" >&2
            exit 1
        fi
        say "could not install chromium: the browser tests will be skipped"
    fi
fi
