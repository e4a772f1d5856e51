#!/usr/bin/env bash
# What `make fuzz` and `make fuzz-smoke` need beyond the stable toolchain:
# cargo-fuzz, built from crates.io, and the nightly toolchain it drives
# (libFuzzer's sanitizer flags are nightly-only). Safe to run repeatedly:
# it installs nothing that is already there.
set -euo pipefail
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
