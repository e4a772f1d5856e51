#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS seconds each, one after the
# other (make fuzz: 60 s, make fuzz-smoke: a short pass that make test
# runs). Fails on the first crash, leaving the input that crashed in
# fuzz/artifacts/<target>/ (reproduce: the command printed below, with
# `run <target> <file>`). New inputs the fuzzer finds go to a working corpus
# under fuzz/target/corpus/, so the committed seeds in fuzz/corpus/ stay
# small.
#
# Toolchain: with a nightly toolchain installed, cargo-fuzz builds with
# AddressSanitizer (its default, which needs nightly's -Zsanitizer). With
# only the stable toolchain it builds with `--sanitizer none`: the same
# libFuzzer and coverage instrumentation (plain -C flags, accepted by
# stable rustc), so panics, overflows and hangs in the decoders are still
# found; only the memory checks of unsafe code are lost, and the decoders
# have none. FUZZ_TOOLCHAIN=stable or =nightly forces one.
set -euo pipefail
seconds=${1:-60}
cd "$(dirname "$0")/.."
scripts/install-fuzz-deps.sh

toolchain=${FUZZ_TOOLCHAIN:-}
if [ -z "$toolchain" ]; then
    if cargo +nightly --version >/dev/null 2>&1; then
        toolchain=nightly
    else
        toolchain=stable
    fi
fi
case "$toolchain" in
nightly) fuzz=(cargo +nightly fuzz) build=() ;;
stable) fuzz=(cargo fuzz) build=(--sanitizer none) ;;
*)
    echo "FUZZ_TOOLCHAIN must be stable or nightly, not $toolchain" >&2
    exit 2
    ;;
esac
if [ "$toolchain" = nightly ]; then rustc=$(rustc +nightly --version); else rustc=$(rustc --version); fi
run=("${fuzz[@]}" run "${build[@]}")
echo "== fuzzing with $rustc, sanitizer: ${build[*]:-address} (reproduce: ${run[*]} <target> <input>)"

targets=$("${fuzz[@]}" list)
"${fuzz[@]}" build "${build[@]}"
summary=()
for target in $targets; do
    work="fuzz/target/corpus/$target"
    mkdir -p "$work" "fuzz/corpus/$target"
    log="fuzz/target/$target.log"
    echo "== fuzzing $target for ${seconds}s"
    if ! "${fuzz[@]}" run "${build[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    corpus=$(find "$work" -type f | wc -l)
    summary+=("$(printf '%-22s %10s runs  %8s/s  corpus %s' "$target" "${runs:-?}" \
        "$(( ${runs:-0} / seconds ))" "$corpus")")
done
echo "== fuzz summary (${seconds}s per target, $toolchain)"
printf '%s\n' "${summary[@]}"
