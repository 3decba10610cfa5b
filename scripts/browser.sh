#!/usr/bin/env bash
# Installs what the console's browser test (tests/it/console.rs, tests/console/) needs on a fresh
# Debian machine, when missing: Chromium from Debian's packages, and playwright-core (pinned in
# tests/console/package-lock.json) with npm. Node is for this test only. Idempotent and quiet when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v chromium >/dev/null 2>&1; then
    echo "browser.sh: installing chromium" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "browser.sh: installing nodejs and npm" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
fi

# npm ci only when the installed tree is not the one the lock file describes (npm writes its own
# copy of the lock to node_modules/.package-lock.json on every install).
lock=tests/console/package-lock.json
installed=tests/console/node_modules/.package-lock.json
if [ ! -f "$installed" ] || [ ! -d tests/console/node_modules/playwright-core ] ||
    [ "$lock" -nt "$installed" ]; then
    echo "browser.sh: npm ci --prefix tests/console" >&2
    npm ci --prefix tests/console --no-audit --no-fund
fi
