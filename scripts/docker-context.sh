#!/bin/sh
# Builds the context of Dockerfile.dev in target/docker/: the release
# binaries and every shared library they link, at the paths the dynamic
# loader looks for them, so that a FROM scratch image can run them.
#
# usage: scripts/docker-context.sh [BIN_DIR [OUT_DIR]]
set -eu
bin_dir=${1:-target/release}
out=${2:-target/docker}
bins="coordinator counter simulate"

rm -rf "$out"
mkdir -p "$out/rootfs/usr/local/bin" "$out/rootfs/data" "$out/rootfs/tmp"
for bin in $bins; do
    test -x "$bin_dir/$bin" || { echo "missing $bin_dir/$bin: run make build" >&2; exit 1; }
    cp "$bin_dir/$bin" "$out/rootfs/usr/local/bin/$bin"
done
# ldd prints "name => /path (addr)" for libraries and "/path (addr)" for the
# loader; linux-vdso has no file. Copy each file, following symlinks, to
# the same path inside the image.
for bin in $bins; do
    ldd "$bin_dir/$bin"
done | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u |
while read -r lib; do
    mkdir -p "$out/rootfs$(dirname "$lib")"
    cp -L "$lib" "$out/rootfs$lib"
done
# Host name lookups: glibc reads this file (files first, then DNS: docker
# writes /etc/hosts and /etc/resolv.conf into every container).
mkdir -p "$out/rootfs/etc"
echo "hosts: files dns" > "$out/rootfs/etc/nsswitch.conf"
cp "$(dirname "$0")/../Dockerfile.dev" "$out/Dockerfile.dev"
echo "built $out: $(du -sh "$out" | cut -f1)"
