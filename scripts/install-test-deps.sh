#!/usr/bin/env bash
# What the integration tests need beyond the Rust toolchain: a headless
# chromium for the dashboard test (simulate/tests/dashboard.rs). Debian's
# package, so nothing is downloaded at test time. Safe to run repeatedly.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
