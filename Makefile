# tally: see README.md. `make run` starts a local cluster, `make test` runs
# everything CI runs.

CARGO    ?= cargo
BIN      := target/release
COUNTERS ?= 3

.PHONY: all build run test fmt-check clippy unit-and-integration bench bench-engines simulate status clean-data help

all: build

help:
	@echo "make run        build and start a coordinator on :8080 and $(COUNTERS) counters (Ctrl-C stops)"
	@echo "make test       fmt check, clippy, unit and integration tests"
	@echo "make bench      benchmarks, table on stdout, results in target/bench/"
	@echo "make simulate   the seed scenario (checked) and a 10 s load against :8080"
	@echo "make status     table of the running cluster"

# The failpoint build of the coordinator is for tests only: it can crash
# between logging a commit decision and sending it. Cargo keeps both
# feature sets' artifacts, so switching back and forth does not recompile.
build:
	$(CARGO) build --release -p tally-coordinator --features failpoints
	cp $(BIN)/coordinator $(BIN)/coordinator-failpoints
	$(CARGO) build --release --workspace --bins

run:
	$(CARGO) build --release --workspace --bins
	$(BIN)/simulate cluster --counters $(COUNTERS) --base-port 8080 --data-dir data

test: fmt-check clippy build unit-and-integration

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

unit-and-integration:
	TALLY_BIN_DIR=$(CURDIR)/$(BIN) $(CARGO) test --release --workspace

bench: build
	$(BIN)/simulate bench --out target/bench/results.json

bench-engines:
	cd bench/engines && $(CARGO) run --release -- --out ../../target/engine-bench.json

simulate: build
	$(BIN)/simulate scenario
	$(BIN)/simulate load --duration 10s --clients 16 --target http://127.0.0.1:8080

status:
	$(BIN)/simulate status

clean-data:
	rm -rf data
