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
COORDINATORS         ?= 1
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
# With COORDINATORS above 1, make up writes the compose file of the extra
# coordinators here (scripts/compose-coordinators.sh), and every compose
# command uses it for as long as it exists: make stop, log and clean then
# reach the coordinators the last make up started, whatever COORDINATORS
# says now.
COMPOSE_COORDINATORS := target/compose/coordinators.yml
COMPOSE_RUN = IMAGE=$(IMAGE) DOCKERFILE=$(DOCKERFILE) BUILD_CONTEXT=$(BUILD_CONTEXT) \
	HTTP_PORT=$(HTTP_PORT) $(COMPOSE) -p $(COMPOSE_PROJECT_NAME) -f docker-compose.yml \
	$$(test -f $(COMPOSE_COORDINATORS) && echo "-f $(COMPOSE_COORDINATORS)")

.PHONY: chaos-long all build run test fmt-check clippy unit-and-integration schemathesis bench bench-engines simulate status clean-data help \
	up dev log stop clean cluster-token compose-coordinators image docker-images docker-images-if-engine docker-images-from-binaries test-deps \
	fuzz fuzz-smoke deploy-check sim sim-mutations

# `make` alone prints this list. Every target has a `## ` line after its
# name: help prints those lines, so a new target shows up by writing one
# (simulate/tests/cli.rs checks that none is missing).
.DEFAULT_GOAL := help

help: ## this list
	@echo "tally: make TARGET (settings from .env, or on the command line: make run HTTP_PORT=9000)"
	@echo
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / { printf "  make %-28s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

all: build ## the same as make build

# The failpoint builds are for tests only: the coordinator can crash
# between logging a commit decision and sending it, a counter between its
# durable yes vote and applying the commit. Cargo keeps both feature sets'
# artifacts, so switching back and forth does not recompile. Both builds
# select every target of the workspace, so dependencies resolve to the same
# features as `cargo test` and are compiled once for all three (the second
# build recompiles only the coordinator and counter crates).
build: ## release binaries, and coordinator- and counter-failpoints for the tests
	$(CARGO) build --release --workspace --all-targets \
	  --features tally-coordinator/failpoints,tally-counter/failpoints
	cp $(BIN)/coordinator $(BIN)/coordinator-failpoints
	cp $(BIN)/counter $(BIN)/counter-failpoints
	$(CARGO) build --release --workspace --all-targets

# The coordinator takes HTTP_PORT, any other coordinators (COORDINATORS)
# the ports after it, and the counters the ports after those; a port in
# use stops it at once with the name of the holder when known.
run: ## build and start $(COORDINATORS) coordinator(s) from :$(HTTP_PORT) and $(COUNTERS) counters (Ctrl-C stops)
	$(CARGO) build --release --workspace --bins
	$(BIN)/simulate cluster --counters $(COUNTERS) --base-port $(HTTP_PORT) \
	  --coordinators $(COORDINATORS) --data-dir data

test: fmt-check clippy build docker-images-if-engine test-deps unit-and-integration sim-mutations schemathesis deploy-check fuzz-smoke ## everything CI runs (.ci/run)

# A headless chromium for the dashboard's browser test (apt, if missing),
# schemathesis (PyPI, pinned) in target/schemathesis-venv, and promtool,
# kubectl and kubernetes-validate in target/tools (scripts/install-deploy-deps.sh).
test-deps: ## install what the tests need beyond Rust (apt, pip; idempotent)
	scripts/install-test-deps.sh
	scripts/install-schemathesis.sh
	scripts/install-deploy-deps.sh

# deploy/ checked offline: the alerting rules with promtool, the Kubernetes
# base rendered, schema-validated and its key settings checked
# (docs/kubernetes.md says what this does and does not prove).
deploy-check: ## check deploy/: alerting rules, Kubernetes manifests (offline)
	scripts/install-deploy-deps.sh
	scripts/check-deploy.sh

fmt-check: ## cargo fmt --check on the workspace and fuzz/
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check

# With the failpoint features, so the test-only crash points are linted too
# (they only add code).
clippy: ## clippy on every target, warnings are errors
	$(CARGO) clippy --release --workspace --all-targets \
	  --features tally-coordinator/failpoints,tally-counter/failpoints -- -D warnings

unit-and-integration: ## cargo test on the workspace (real processes on loopback)
	TALLY_BIN_DIR=$(CURDIR)/$(BIN) $(CARGO) test --release --workspace

# The chaos tests (simulate/tests/chaos.rs, docs/testing.md) over many
# seeds and longer runs than make test gives them: CHAOS_SEEDS seeds
# ("1-20" or "4,9,17") of CHAOS_DURATION each, one test at a time.
CHAOS_SEEDS    ?= 1-20
CHAOS_DURATION ?= 30s

chaos-long: build ## the chaos tests over CHAOS_SEEDS seeds of CHAOS_DURATION each
	TALLY_BIN_DIR=$(CURDIR)/$(BIN) TALLY_CHAOS_SEEDS=$(CHAOS_SEEDS) \
	  TALLY_CHAOS_DURATION=$(CHAOS_DURATION) \
	  $(CARGO) test --release -p tally-simulate --test chaos -- --test-threads 1 --nocapture

# The deterministic simulation (docs/testing.md, "Deterministic
# simulation"): SEEDS seeds from a random start it prints, or SEED=S to
# replay one seed step by step. Each seed draws one coordinator or three;
# COORDINATORS=1 or 3 on the command line makes every world so (make run's
# default of 1 does not count: left alone, worlds are mixed). make test runs
# seeds 1-2000 (and 1-500 with three coordinators) through cargo test, and
# sim-mutations.
SEEDS        ?= 2000
SEED         ?=
SIM_SHAPE    := $(if $(filter command line environment,$(origin COORDINATORS)),--coordinators $(COORDINATORS))

sim: ## the deterministic simulation: SEEDS ($(SEEDS)) seeds from a random start, or SEED=S traced
	$(CARGO) build --release -p tally-sim
	@if [ -n "$(SEED)" ]; then \
	  $(BIN)/sim --seed $(SEED) $(SIM_SHAPE) --trace; \
	else \
	  start=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); \
	  echo "sim: $(SEEDS) seeds from $$start $(SIM_SHAPE)"; \
	  $(BIN)/sim --seeds $(SEEDS) --start $$start $(SIM_SHAPE); \
	fi

sim-mutations: ## each mutate-* build of tally-common must fail the simulation (scripts/check-mutations.sh)
	scripts/check-mutations.sh

# Fuzzing (docs/testing.md): cargo-fuzz on the nightly toolchain, each
# target in turn. make test runs the short pass.
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 20

fuzz: ## every fuzz target for FUZZ_SECONDS ($(FUZZ_SECONDS)) s each (docs/testing.md)
	scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke: ## every fuzz target for FUZZ_SMOKE_SECONDS ($(FUZZ_SMOKE_SECONDS)) s each
	scripts/fuzz.sh $(FUZZ_SMOKE_SECONDS)

# A coordinator and two counters on free ports, checked by schemathesis
# against the OpenAPI document the coordinator serves (docs/api.md).
schemathesis: build ## a live cluster against its OpenAPI document (docs/api.md)
	scripts/install-schemathesis.sh
	TALLY_BIN_DIR=$(CURDIR)/$(BIN) scripts/schemathesis.sh

bench: build ## benchmarks (and one coordinator against three), tables on stdout, results in target/bench/
	scripts/install-bench-deps.sh
	$(BIN)/simulate bench --out target/bench/results.json
	$(BIN)/simulate coordinators-bench --out target/bench/coordinators.json

bench-engines: ## the storage engine comparison (docs/storage-engine.md)
	cd bench/engines && $(CARGO) run --release -- --out ../../target/engine-bench.json

# The scenario runs against the containers when the compose project is up
# (make up), else on its own local processes; the load goes to :HTTP_PORT.
simulate: build ## the walkthrough scenario (checked) and a 10 s load against :$(HTTP_PORT)
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

# The same build as make run's (a narrower -p build would resolve features
# differently and compile the dependencies again).
status: ## table of the running cluster's counters
	$(CARGO) build --release --workspace --bins
	$(BIN)/simulate status --coordinator http://127.0.0.1:$(HTTP_PORT)

clean-data: ## delete make run's data directory (data/)
	rm -rf data

# ---- containers ----

.env:
	cp .env.dist .env

# Every `make up` cluster runs with a cluster token: one is generated into
# .env when none is set there.
cluster-token: .env ## give .env a random TALLY_CLUSTER_TOKEN if it has none
	@scripts/ensure-cluster-token.sh .env

# Dockerfile.dev's context: the release binaries and the libraries they
# link, in target/docker (scripts/docker-context.sh).
docker-images: ## build the tally:dev image from this machine's release binaries
	$(CARGO) build --release --workspace --bins
	$(MAKE) --no-print-directory docker-images-from-binaries

docker-images-from-binaries: ## the same, without building the binaries first
	scripts/docker-context.sh $(BIN) target/docker
	docker build -q -f target/docker/Dockerfile.dev -t tally:dev target/docker

# make test: the Docker tests need the image; without an engine they skip.
# `build` has just built the binaries (all targets, so with the features the
# tests use); building --bins here would compile part of the tree again.
docker-images-if-engine: build ## tally:dev when a Docker engine answers (make test)
	@if docker info >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory docker-images-from-binaries; \
	  docker compose version >/dev/null 2>&1 || docker-compose version >/dev/null 2>&1 || \
	    echo "no docker compose or docker-compose: the Docker tests (simulate/tests/docker.rs) will be SKIPPED"; \
	else \
	  echo "no Docker engine reachable: the Docker tests (simulate/tests/docker.rs) will be SKIPPED"; \
	fi

# The image DOCKERFILE names: Dockerfile.dev from this machine's binaries,
# Dockerfile by compose (multi-stage, pulls rust and debian).
image: ## the image DOCKERFILE names ($(DOCKERFILE))
ifeq ($(DOCKERFILE),Dockerfile.dev)
	$(MAKE) --no-print-directory docker-images
else
	$(COMPOSE_RUN) build
endif

# COORDINATORS=1 removes the file, so docker-compose.yml alone is used.
compose-coordinators: ## write (or, for COORDINATORS=1, remove) the compose file of the extra coordinators
	@if [ "$(COORDINATORS)" = 1 ]; then \
	  rm -f $(COMPOSE_COORDINATORS); \
	else \
	  mkdir -p $(dir $(COMPOSE_COORDINATORS)) && \
	  scripts/compose-coordinators.sh $(COORDINATORS) $(HTTP_PORT) > $(COMPOSE_COORDINATORS).tmp && \
	  mv $(COMPOSE_COORDINATORS).tmp $(COMPOSE_COORDINATORS); \
	fi

up: .env cluster-token image compose-coordinators ## the cluster in containers ($(COORDINATORS) coordinator(s), $(COUNTERS) counters), image from $(DOCKERFILE)
	$(COMPOSE_RUN) up -d --no-build --scale counter=$(COUNTERS)
	$(COMPOSE_RUN) exec -T coordinator /usr/local/bin/simulate status \
	  --coordinator http://127.0.0.1:8080 --wait-counters $(COUNTERS)
	@echo
	@echo "tally is up: $(COUNTERS) counters (make log, make stop, make clean)"
	@echo "  coordinator  http://localhost:$(HTTP_PORT)"
	@if [ "$(COORDINATORS)" != 1 ]; then \
	  for i in $$(seq 2 $(COORDINATORS)); do \
	    echo "  coordinator-$$i  http://localhost:$$(($(HTTP_PORT) + i - 1))"; \
	  done; \
	fi
	@echo "  dashboard    http://localhost:$(HTTP_PORT)/"

dev: ## make up with the development image (Dockerfile.dev)
	$(MAKE) --no-print-directory up DOCKERFILE=Dockerfile.dev IMAGE=tally:dev BUILD_CONTEXT=target/docker

log: .env ## follow the containers' logs
	$(COMPOSE_RUN) logs -f --tail=100

stop: .env ## stop the containers (their data stays)
	$(COMPOSE_RUN) stop

clean: .env ## remove the containers, their network and volumes (data)
	$(COMPOSE_RUN) down -v --remove-orphans
	rm -rf target/docker $(COMPOSE_COORDINATORS)
