# tally: see README.md. `make run` starts a local cluster, `make test` runs
# everything CI runs.

CARGO    ?= cargo
BIN      := target/release

# Containers (docs/containers.md): .env, when present, sets these, and a
# variable given on the make command line wins over it. make up copies
# .env.dist to .env when there is none.
ifneq ($(wildcard .env),)
include .env
endif
COUNTERS             ?= 3
HTTP_PORT            ?= 8080
DOCKERFILE           ?= Dockerfile.dev
COMPOSE_PROJECT_NAME ?= tally
ifeq ($(DOCKERFILE),Dockerfile.dev)
IMAGE          ?= tally:dev
BUILD_CONTEXT ?= target/docker
else
IMAGE          ?= tally:latest
BUILD_CONTEXT ?= .
endif
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_RUN = IMAGE=$(IMAGE) DOCKERFILE=$(DOCKERFILE) BUILD_CONTEXT=$(BUILD_CONTEXT) \
	HTTP_PORT=$(HTTP_PORT) $(COMPOSE) -p $(COMPOSE_PROJECT_NAME)

.PHONY: chaos-long all build run test fmt-check clippy unit-and-integration schemathesis bench bench-engines simulate status clean-data help \
	up dev log stop clean cluster-token image docker-images docker-images-if-engine docker-images-from-binaries test-deps \
	fuzz fuzz-smoke

all: build

help:
	@echo "make run        build and start a coordinator on :8080 and $(COUNTERS) counters (Ctrl-C stops)"
	@echo "make test       fmt check, clippy, unit and integration tests, schemathesis"
	@echo "make schemathesis  a live cluster against its OpenAPI document (docs/api.md)"
	@echo "make bench      benchmarks, table on stdout, results in target/bench/"
	@echo "make chaos-long the chaos tests over CHAOS_SEEDS ($(CHAOS_SEEDS)), CHAOS_DURATION ($(CHAOS_DURATION)) each"
	@echo "make fuzz       every fuzz target for FUZZ_SECONDS ($(FUZZ_SECONDS)) seconds each"
	@echo "make up         the cluster in containers ($(COUNTERS) counters), image from $(DOCKERFILE)"
	@echo "make dev        the same with the development image (Dockerfile.dev)"
	@echo "make log        follow the containers' logs; make stop stops them"
	@echo "make clean      remove the containers, their network and volumes (data)"
	@echo "make simulate   the seed scenario (checked) and a 10 s load against :$(HTTP_PORT)"
	@echo "make status     table of the running cluster"

# The failpoint builds are for tests only: the coordinator can crash
# between logging a commit decision and sending it, a counter between its
# durable yes vote and applying the commit. Cargo keeps both feature sets'
# artifacts, so switching back and forth does not recompile. Both builds
# select every target of the workspace, so dependencies resolve to the same
# features as `cargo test` and are compiled once for all three (the second
# build recompiles only the coordinator and counter crates).
build:
	$(CARGO) build --release --workspace --all-targets \
	  --features tally-coordinator/failpoints,tally-counter/failpoints
	cp $(BIN)/coordinator $(BIN)/coordinator-failpoints
	cp $(BIN)/counter $(BIN)/counter-failpoints
	$(CARGO) build --release --workspace --all-targets

run:
	$(CARGO) build --release --workspace --bins
	$(BIN)/simulate cluster --counters $(COUNTERS) --base-port 8080 --data-dir data

test: fmt-check clippy build docker-images-if-engine test-deps unit-and-integration schemathesis fuzz-smoke

# A headless chromium for the dashboard's browser test (apt, if missing),
# and schemathesis (PyPI, pinned) in target/schemathesis-venv.
test-deps:
	scripts/install-test-deps.sh
	scripts/install-schemathesis.sh

fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check

clippy:
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

unit-and-integration:
	TALLY_BIN_DIR=$(CURDIR)/$(BIN) $(CARGO) test --release --workspace

# The chaos tests (simulate/tests/chaos.rs, docs/testing.md) over many
# seeds and longer runs than make test gives them: CHAOS_SEEDS seeds
# ("1-20" or "4,9,17") of CHAOS_DURATION each, one test at a time.
CHAOS_SEEDS    ?= 1-20
CHAOS_DURATION ?= 30s

chaos-long: build
	TALLY_BIN_DIR=$(CURDIR)/$(BIN) TALLY_CHAOS_SEEDS=$(CHAOS_SEEDS) \
	  TALLY_CHAOS_DURATION=$(CHAOS_DURATION) \
	  $(CARGO) test --release -p tally-simulate --test chaos -- --test-threads 1 --nocapture

# Fuzzing (docs/testing.md): cargo-fuzz on the nightly toolchain, each
# target in turn. make test runs the short pass.
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 20

fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke:
	scripts/fuzz.sh $(FUZZ_SMOKE_SECONDS)

# A coordinator and two counters on free ports, checked by schemathesis
# against the OpenAPI document the coordinator serves (docs/api.md).
schemathesis: build
	scripts/install-schemathesis.sh
	TALLY_BIN_DIR=$(CURDIR)/$(BIN) scripts/schemathesis.sh

bench: build
	scripts/install-bench-deps.sh
	$(BIN)/simulate bench --out target/bench/results.json

bench-engines:
	cd bench/engines && $(CARGO) run --release -- --out ../../target/engine-bench.json

# The scenario runs against the containers when the compose project is up
# (make up), else on its own local processes; the load goes to :HTTP_PORT.
simulate: build
	@if [ -n "$$(docker ps -q --filter label=com.docker.compose.project=$(COMPOSE_PROJECT_NAME) \
	      --filter label=com.docker.compose.service=coordinator 2>/dev/null)" ]; then \
	  echo "scenario against the containers of project $(COMPOSE_PROJECT_NAME)"; \
	  $(BIN)/simulate scenario --backend docker --project $(COMPOSE_PROJECT_NAME) \
	    --target http://127.0.0.1:$(HTTP_PORT) --step-timeout 60s; \
	else \
	  echo "no containers of project $(COMPOSE_PROJECT_NAME): scenario on local processes"; \
	  $(BIN)/simulate scenario; \
	fi
	$(BIN)/simulate load --duration 10s --clients 16 --target http://127.0.0.1:$(HTTP_PORT)

status:
	$(BIN)/simulate status

clean-data:
	rm -rf data

# ---- containers ----

.env:
	cp .env.dist .env

# Every `make up` cluster runs with a cluster token: one is generated into
# .env when none is set there.
cluster-token: .env
	@scripts/ensure-cluster-token.sh .env

# Dockerfile.dev's context: the release binaries and the libraries they
# link, in target/docker (scripts/docker-context.sh).
docker-images:
	$(CARGO) build --release --workspace --bins
	$(MAKE) --no-print-directory docker-images-from-binaries

docker-images-from-binaries:
	scripts/docker-context.sh $(BIN) target/docker
	docker build -q -f target/docker/Dockerfile.dev -t tally:dev target/docker

# make test: the Docker tests need the image; without an engine they skip.
# `build` has just built the binaries (all targets, so with the features the
# tests use); building --bins here would compile part of the tree again.
docker-images-if-engine: build
	@if docker info >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory docker-images-from-binaries; \
	else \
	  echo "no Docker engine reachable: the Docker tests (simulate/tests/docker.rs) will be SKIPPED"; \
	fi

# The image DOCKERFILE names: Dockerfile.dev from this machine's binaries,
# Dockerfile by compose (multi-stage, pulls rust and debian).
image:
ifeq ($(DOCKERFILE),Dockerfile.dev)
	$(MAKE) --no-print-directory docker-images
else
	$(COMPOSE_RUN) build
endif

up: .env cluster-token image
	$(COMPOSE_RUN) up -d --no-build --scale counter=$(COUNTERS)
	$(COMPOSE_RUN) exec -T coordinator /usr/local/bin/simulate status \
	  --coordinator http://127.0.0.1:8080 --wait-counters $(COUNTERS)
	@echo
	@echo "tally is up: $(COUNTERS) counters (make log, make stop, make clean)"
	@echo "  coordinator  http://localhost:$(HTTP_PORT)"
	@echo "  dashboard    http://localhost:$(HTTP_PORT)/"

dev:
	$(MAKE) --no-print-directory up DOCKERFILE=Dockerfile.dev IMAGE=tally:dev BUILD_CONTEXT=target/docker

log: .env
	$(COMPOSE_RUN) logs -f --tail=100

stop: .env
	$(COMPOSE_RUN) stop

clean: .env
	$(COMPOSE_RUN) down -v --remove-orphans
	rm -rf target/docker
