#!/usr/bin/env bash
# What checking deploy/ needs (make deploy-check, part of make test):
#   promtool  from Debian's prometheus package, for the alerting rules and
#             the metrics test (simulate/tests/promtool.rs);
#   kubectl   from Debian's kubernetes-client package, for `kubectl kustomize`
#             (a kubectl already on the PATH is used instead);
#   kubernetes-validate and PyYAML from PyPI (pinned), in a virtualenv.
# The Debian binaries are unpacked from their packages into target/tools/bin
# rather than installed: installing the prometheus package would also start
# a Prometheus server. Nothing is installed system-wide; root (or sudo) is
# needed only if apt's package lists must be refreshed. Safe to run
# repeatedly: what is there already is kept, and a second run takes well
# under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=target/tools
VENV=$TOOLS/deploy-venv
VALIDATE_VERSION=1.37.0
PYYAML_VERSION=6.0.2
PYTHON=${PYTHON:-python3}
mkdir -p "$TOOLS/bin"

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

# Unpacks binary $2 of Debian package $1 into $TOOLS/bin.
unpack() {
    local package=$1 binary=$2 work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    if ! (cd "$work" && apt-get download "$package" >/dev/null 2>&1); then
        $SUDO apt-get update >/dev/null
        (cd "$work" && apt-get download "$package" >/dev/null)
    fi
    dpkg-deb -x "$work"/"$package"_*.deb "$work/root"
    install -m 0755 "$work/root/usr/bin/$binary" "$TOOLS/bin/$binary"
    echo "unpacked $binary from Debian's $package into $TOOLS/bin"
}

if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$TOOLS/bin/promtool" ]; then
    unpack prometheus promtool
fi
if ! kubectl kustomize --help >/dev/null 2>&1 && [ ! -x "$TOOLS/bin/kubectl" ]; then
    unpack kubernetes-client kubectl
fi

have() {
    [ -x "$VENV/bin/python" ] &&
        [ "$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null)" = "$2" ]
}
if ! have kubernetes-validate "$VALIDATE_VERSION" || ! have PyYAML "$PYYAML_VERSION"; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$VALIDATE_VERSION" "PyYAML==$PYYAML_VERSION"
fi
