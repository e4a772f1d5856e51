#!/usr/bin/env bash
# The simulator's teeth (docs/testing.md, "Deterministic simulation"): the
# unmutated build must pass SIM_SEEDS seeds (the number make test runs),
# and a build with each mutation of tally-common must fail within them.
# The mutations are the mutate-* features of sim/Cargo.toml: the one list.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
SEEDS=${SIM_SEEDS:-2000}
mapfile -t MUTATIONS < <(grep -o '^mutate-[a-z-]*' sim/Cargo.toml)
# Mutations the fault mix does not find yet (docs/testing.md would say
# why): reported, not failed on, until the simulator finds them. None now.
KNOWN_GAPS=${SIM_KNOWN_GAPS:-}
if [ "${#MUTATIONS[@]}" -eq 0 ]; then
  echo "no mutate-* features in sim/Cargo.toml" >&2
  exit 1
fi

echo "== unmutated: $SEEDS seeds must pass"
$CARGO build --release -q -p tally-sim
target/release/sim --seeds "$SEEDS"

missed=()
for m in "${MUTATIONS[@]}"; do
  echo "== $m: some seed of $SEEDS must fail"
  $CARGO build --release -q -p tally-sim --features "$m"
  if ! target/release/sim --seeds "$SEEDS" --mutation-check | grep -E '^(FAIL|the mutation|NOT)'; then
    if [[ " $KNOWN_GAPS " == *" $m "* ]]; then
      echo "   (a known gap, see docs/testing.md)"
    else
      missed+=("$m")
    fi
  fi
done
# Leave the ordinary binary behind.
$CARGO build --release -q -p tally-sim

if [ "${#missed[@]}" -ne 0 ]; then
  echo "NOT CAUGHT within $SEEDS seeds: ${missed[*]}" >&2
  exit 1
fi
if [ -n "$KNOWN_GAPS" ]; then
  echo "every mutation of ${#MUTATIONS[@]} caught within $SEEDS seeds, known gaps aside ($KNOWN_GAPS)"
else
  echo "every mutation of ${#MUTATIONS[@]} caught within $SEEDS seeds"
fi
