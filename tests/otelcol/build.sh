#!/usr/bin/env bash
# Builds the OpenTelemetry Collector the telemetry tests export to (OTLP receiver,
# file exporter) from the Go modules pinned in this directory's go.mod/go.sum.
#
# Output: $PGMCP_CACHE/otelcol/<collector release>/otelcol where PGMCP_CACHE
# defaults to <repo root>/.cache. Go's module and build caches are the ones
# tests/controlplane/build.sh uses ($PGMCP_CACHE/go), so a brand-new machine only
# needs `go` and the Go module proxy. A second run with the binary present and an
# unchanged stamp (sha256 of go.mod, go.sum, main.go and this script) exits at
# once without running the Go toolchain. Prints the output directory as last line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${PGMCP_CACHE:-$ROOT/.cache}"

# The collector release is whatever go.mod requires of go.opentelemetry.io/collector/otelcol.
RELEASE="$(awk '$1 == "go.opentelemetry.io/collector/otelcol" { print $2; exit }' "$HERE/go.mod")"
if [[ -z "$RELEASE" ]]; then
	echo "build.sh: cannot find the go.opentelemetry.io/collector/otelcol version in $HERE/go.mod" >&2
	exit 1
fi

OUT="$CACHE/otelcol/$RELEASE"
STAMP_FILE="$OUT/.stamp"
BINARY="$OUT/otelcol"

stamp() {
	cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/main.go" "$HERE/build.sh" | sha256sum | cut -d' ' -f1
}

up_to_date() {
	[[ -x "$BINARY" && -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$(stamp)" ]]
}

if up_to_date; then
	echo "otelcol $RELEASE up to date in $OUT"
	echo "$OUT"
	exit 0
fi

mkdir -p "$OUT"

# Serialise concurrent builds (e.g. several test binaries starting at once).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$CACHE/otelcol/.build.lock"
	flock 9
	if up_to_date; then
		echo "otelcol $RELEASE up to date in $OUT"
		echo "$OUT"
		exit 0
	fi
fi

if ! command -v go >/dev/null 2>&1; then
	echo "build.sh: 'go' not found in PATH (Go >= 1.26 is needed)" >&2
	exit 1
fi

export GOPATH="$CACHE/go"
export GOMODCACHE="$CACHE/go/pkg/mod"
export GOCACHE="$CACHE/go/build"
export CGO_ENABLED=0
export GOWORK=off
export GOFLAGS="-mod=readonly -buildvcs=false"

TMP="$(mktemp -d "$OUT/.build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

start=$SECONDS
echo "building otelcol $RELEASE into $OUT (go: $(go version))"
cd "$HERE"
go mod download
echo "modules ready after $((SECONDS - start))s"
go build -p 2 -trimpath -ldflags "-s -w" -o "$TMP/otelcol" .

mv -f "$TMP/otelcol" "$BINARY" # same filesystem: atomic rename
echo "built $BINARY ($(du -h "$BINARY" | cut -f1))"
stamp >"$STAMP_FILE.tmp.$$"
mv -f "$STAMP_FILE.tmp.$$" "$STAMP_FILE"
echo "otelcol $RELEASE built in $((SECONDS - start))s"
echo "$OUT"
