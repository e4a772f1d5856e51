#!/usr/bin/env bash
# Checks a live cluster against the OpenAPI document its coordinator serves
# (GET /openapi.json): schemathesis generates valid and invalid requests for
# every documented operation and fails on any answer the document does not
# allow (status, headers, body, content type), on a 5xx, and on a valid
# request refused or an invalid one accepted. See docs/api.md.
#
# Starts its own cluster (a coordinator and two counters, `simulate
# cluster`) on free ports with a temporary data directory, and stops it on
# exit. Needs the release binaries (make build) and the virtualenv of
# scripts/install-schemathesis.sh.
#
# Environment: TALLY_BIN_DIR (default target/release), SCHEMATHESIS_BASE_PORT
# (default: free ports), SCHEMATHESIS_MAX_EXAMPLES (default 150),
# SCHEMATHESIS_SEED (default fixed, so a red run can be repeated; set one
# to explore further), SCHEMATHESIS_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${TALLY_BIN_DIR:-target/release}
VENV=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
COUNTERS=2
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-150}
SEED=${SCHEMATHESIS_SEED:-8}
PY="$VENV/bin/python"

for tool in "$BIN/simulate" "$BIN/coordinator" "$BIN/counter" "$VENV/bin/schemathesis"; do
    if [ ! -x "$tool" ]; then
        echo "schemathesis.sh: $tool is missing (make build; scripts/install-schemathesis.sh)" >&2
        exit 2
    fi
done

# The coordinator takes the base port, counter i the base port + i.
if [ -n "${SCHEMATHESIS_BASE_PORT:-}" ]; then
    PORT=$SCHEMATHESIS_BASE_PORT
else
    PORT=$("$PY" - "$COUNTERS" <<'PYEOF'
import random, socket, sys
n = int(sys.argv[1]) + 1
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
for _ in range(200):
    base = random.randrange(20000, 60000 - n)
    if all(free(base + i) for i in range(n)):
        print(base)
        break
else:
    sys.exit("no free port range found")
PYEOF
)
fi
URL="http://127.0.0.1:$PORT"

DATA=$(mktemp -d "${TMPDIR:-/tmp}/tally-schemathesis.XXXXXX")
CLUSTER_PID=
stop_cluster() {
    local status=$?
    if [ -n "$CLUSTER_PID" ] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
        # simulate stops its processes cleanly on SIGINT; if it does not
        # within 20 s, kill its whole process group (setsid made it the
        # leader), so no coordinator or counter outlives the run.
        kill -INT "$CLUSTER_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$CLUSTER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$CLUSTER_PID" 2>/dev/null || true
        wait "$CLUSTER_PID" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -f "$DATA/cluster.log" ]; then
        echo "--- last lines of the cluster's log ($DATA/cluster.log) ---" >&2
        tail -n 40 "$DATA/cluster.log" >&2
    else
        rm -rf "$DATA"
    fi
    exit "$status"
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

setsid "$BIN/simulate" cluster --counters "$COUNTERS" --base-port "$PORT" \
    --data-dir "$DATA/cluster" --health-interval 1s >"$DATA/cluster.log" 2>&1 &
CLUSTER_PID=$!

# Ready when every counter is in sync, so writes can commit (the cluster
# would answer 503 before that, which is documented but not what we test).
DEADLINE=$((SECONDS + 60))
until "$PY" - "$URL/health" "$COUNTERS" <<'PYEOF' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
    sys.exit(0 if json.load(r)["in_sync"] >= int(sys.argv[2]) else 1)
PYEOF
do
    if ! kill -0 "$CLUSTER_PID" 2>/dev/null; then
        echo "schemathesis.sh: the cluster exited before it was ready" >&2
        exit 1
    fi
    if [ "$SECONDS" -ge "$DEADLINE" ]; then
        echo "schemathesis.sh: $URL/health did not report $COUNTERS in-sync counters within 60 s" >&2
        exit 1
    fi
    sleep 0.2
done
echo "cluster ready at $URL (data in $DATA)"

# --checks all: every check, positive and negative data alike.
# --generation-codec ascii: the server limits ids and tenants in bytes of
#   UTF-8, which JSON Schema cannot say; the document's maxLength: 256 is
#   exact for ASCII and only an upper bound otherwise (docs/api.md).
# --workers 1: with two, Python 3.11's ast module, which hypothesis calls
#   from every worker thread, fails now and then with "AST constructor
#   recursion depth mismatch"; one worker also leaves the cluster a core.
START=$SECONDS
"$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$URL/openapi.json" \
    --checks all \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 1 \
    --request-timeout 10 \
    --generation-codec ascii \
    --generation-database none \
    --no-color | tee "$DATA/schemathesis.log"
echo "schemathesis took $((SECONDS - START)) s"
# The plain summary line CI reads, after cargo test's.
PASSED=$(grep -oE '[0-9]+ generated, [0-9]+ passed' "$DATA/schemathesis.log" | grep -oE '[0-9]+ passed$' || true)
echo "schemathesis: ${PASSED:-0 passed}, 0 failed"
