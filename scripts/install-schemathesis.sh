#!/usr/bin/env bash
# schemathesis (PyPI) for `make schemathesis`, in a virtualenv under target/
# so nothing is installed system-wide and `cargo clean` removes it. The
# version is pinned: a new release may add checks, and a red build should
# come from a change here, not from PyPI. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
VENV=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
PYTHON=${PYTHON:-python3}

if [ -x "$VENV/bin/schemathesis" ] &&
    [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$VERSION"
"$VENV/bin/schemathesis" --version
