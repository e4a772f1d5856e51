#!/usr/bin/env bash
# Instructions per acknowledged request of the coordinator or of one
# counter, under single-item POSTs: a local cluster (coordinator and 3
# counters, release build) with that process under valgrind's callgrind,
# a warm-up, then a bounded wrk run with the counts zeroed before and
# dumped after. Instruction counts do not depend on what else the machine
# runs, so a change is measured on a busy machine too. docs/benchmarks.md
# records the top entries.
#
#   scripts/profile.sh [coordinator|counter] [clients] [seconds] [items per request | count]
#
# With `count` the measured load is count reads of the tenant the warm-up
# wrote, instead of POSTs.
# Prints instructions per request and the top functions (inclusive and
# self); the raw profile stays in $OUT (target/profile/ by default) for
# callgrind_annotate. Under callgrind the profiled process runs about 50x
# slower, so transactions gather more requests than they would outside it:
# per-transaction costs weigh less here than in the CPU table of
# `make bench`.
set -euo pipefail
which=${1:-coordinator}
clients=${2:-64}
secs=${3:-20}
items=${4:-1}
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${TALLY_BIN_DIR:-$repo/target/release}
out=${OUT:-$repo/target/profile}
port=${PORT:-18180}
for tool in valgrind callgrind_control callgrind_annotate wrk; do
  command -v $tool >/dev/null || { echo "profile: $tool is not installed" >&2; exit 1; }
done
case $which in coordinator | counter) ;; *) echo "profile: coordinator or counter" >&2; exit 2 ;; esac

work=$(mktemp -d)
mkdir -p "$out"
cluster_pid=
cleanup() {
  [ -n "$cluster_pid" ] && kill -INT "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The binaries the cluster starts, one of them wrapped in callgrind (for
# the counters, only counter-1).
mkdir "$work/bin"
ln -s "$bin/coordinator" "$work/bin/coordinator.real"
ln -s "$bin/counter" "$work/bin/counter.real"
for name in coordinator counter; do
  cat >"$work/bin/$name" <<EOF
#!/bin/sh
if [ "$name" = "$which" ] && { [ "$name" = coordinator ] || echo "\$*" | grep -q -- '--id counter-1\$\|--id counter-1 '; }; then
  echo \$\$ >"$work/profiled.pid"
  exec valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$name.%p" "$work/bin/$name.real" "\$@"
fi
exec "$work/bin/$name.real" "\$@"
EOF
  chmod +x "$work/bin/$name"
done

TALLY_BIN_DIR="$work/bin" "$repo/target/release/simulate" cluster --counters 3 --base-port "$port" \
  --data-dir "$work/data" --health-interval 1s >"$work/cluster.log" 2>&1 &
cluster_pid=$!
deadline=$((SECONDS + 120))
until curl -fs "http://127.0.0.1:$port/health" 2>/dev/null | grep -q '"in_sync":3'; do
  if [ $SECONDS -gt $deadline ]; then
    echo "profile: the cluster did not come up" >&2
    cat "$work/cluster.log" >&2
    exit 1
  fi
  sleep 0.5
done
vg_pid=$(cat "$work/profiled.pid")
script="$repo/bench/post_items.lua"
url="http://127.0.0.1:$port/"
warm_items=$items
[ "$items" = count ] && warm_items=1
wrk -t1 -c"$clients" -d5s -s "$script" "$url" -- "warm$RANDOM" sequential "$warm_items" >/dev/null
txns() {
  curl -fs "http://127.0.0.1:$port/metrics" |
    awk '/^tally_transactions_total\{outcome="committed"\}/{print $2}'
}
txns_before=$(txns)
callgrind_control -z "$vg_pid" >/dev/null
if [ "$items" = count ]; then
  result=$(wrk -t1 -c"$clients" -d"${secs}s" "${url}items/wrk/count")
else
  result=$(wrk -t1 -c"$clients" -d"${secs}s" -s "$script" "$url" -- "prof$RANDOM" sequential "$items")
fi
callgrind_control -d "$vg_pid" >/dev/null
txns_after=$(txns)
requests=$(echo "$result" | awk '/ requests in /{print $1}')
non2xx=$(echo "$result" | awk '/Non-2xx/{print $NF}')
requests=$((requests - ${non2xx:-0}))
# The dump just made: the newest file of this process.
profile=$(ls -t "$out"/callgrind."$which"."$vg_pid".* | head -1)
total=$(callgrind_annotate "$profile" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
echo "$which under callgrind: $requests requests acknowledged in ${secs}s at $clients clients, $items item(s) each (count: reads)"
echo "instructions: $total, per acknowledged request: $((total / (requests > 0 ? requests : 1)))"
echo "transactions committed: $((txns_after - txns_before)) (from the coordinator's metrics, the dump included)"
echo "profile: $profile"
echo
# Below, `head` may close the pipe early.
set +o pipefail
echo "== inclusive =="
callgrind_annotate --inclusive=yes --threshold=99 "$profile" 2>/dev/null | sed -n '/^Ir/,$p' | head -45
echo
echo "== self =="
callgrind_annotate --threshold=99 "$profile" 2>/dev/null | sed -n '/^Ir/,$p' | head -45
