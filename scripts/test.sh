#!/usr/bin/env bash
# The whole test suite, as the README gives it: builds what the tests need, then `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The PostgreSQL backend's tests need the server: started (or installed) when it is not up.
bash scripts/postgres.sh
# The console's browser test needs Chromium and playwright-core: installed when missing.
bash scripts/browser.sh
# Plugins are built from source before the tests, so tests never depend on stale binaries.
if [ -x plugins/build.sh ]; then bash plugins/build.sh; fi
cargo test --all-targets
# the plugin SDK's own unit tests run natively
cargo test --manifest-path plugins/Cargo.toml -p hookyard-plugin-sdk
# doc tests are not part of --all-targets
cargo test --doc
