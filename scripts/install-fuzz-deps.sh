#!/usr/bin/env bash
# What `make fuzz` and `make fuzz-smoke` need beyond the stable toolchain:
# cargo-fuzz, built from crates.io. A nightly toolchain is used when present
# (scripts/fuzz.sh), never required. Safe to run repeatedly: it installs
# nothing that is already there.
set -euo pipefail
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
