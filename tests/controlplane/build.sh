#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd)
# and the test node (kubelet, and the static "pause" program its pods' sandbox image holds)
# from the Go modules pinned in this directory's go.mod/go.sum.
#
# Output: $PGMCP_CACHE/controlplane/<k8s version>/{kube-apiserver,kube-controller-manager,
# kube-scheduler,kubelet,etcd,pause}
# where PGMCP_CACHE defaults to <repo root>/.cache. Go's module and build caches
# live under $PGMCP_CACHE/go so a brand-new machine only needs `go` and the
# Go module proxy. A second run with all binaries present and an unchanged
# stamp (sha256 of go.mod, go.sum, etcd/main.go and this script) exits at once
# without running the Go toolchain. Prints the output directory as last line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${PGMCP_CACHE:-$ROOT/.cache}"

# The Kubernetes release is whatever go.mod requires.
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' "$HERE/go.mod")"
if [[ -z "$K8S_VERSION" ]]; then
	echo "build.sh: cannot find the k8s.io/kubernetes version in $HERE/go.mod" >&2
	exit 1
fi
K8S_MINOR="$(cut -d. -f2 <<<"$K8S_VERSION")"

OUT="$CACHE/controlplane/$K8S_VERSION"
STAMP_FILE="$OUT/.stamp"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet etcd pause)

stamp() {
	cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/etcd/main.go" "$HERE/pause/main.go" "$HERE/build.sh" | sha256sum | cut -d' ' -f1
}

up_to_date() {
	local b
	for b in "${BINARIES[@]}"; do
		[[ -x "$OUT/$b" ]] || return 1
	done
	[[ -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$(stamp)" ]]
}

if up_to_date; then
	echo "control plane $K8S_VERSION up to date in $OUT"
	echo "$OUT"
	exit 0
fi

mkdir -p "$OUT"

# Serialise concurrent builds (e.g. several test binaries starting at once).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$CACHE/controlplane/.build.lock"
	flock 9
	if up_to_date; then
		echo "control plane $K8S_VERSION up to date in $OUT"
		echo "$OUT"
		exit 0
	fi
fi

if ! command -v go >/dev/null 2>&1; then
	echo "build.sh: 'go' not found in PATH (Go >= 1.24 is needed)" >&2
	exit 1
fi

export GOPATH="$CACHE/go"
export GOMODCACHE="$CACHE/go/pkg/mod"
export GOCACHE="$CACHE/go/build"
export CGO_ENABLED=0
export GOWORK=off
export GOFLAGS="-mod=readonly -buildvcs=false"

LDFLAGS="-s -w"
LDFLAGS+=" -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
LDFLAGS+=" -X k8s.io/component-base/version.gitMajor=1"
LDFLAGS+=" -X k8s.io/component-base/version.gitMinor=$K8S_MINOR"
LDFLAGS+=" -X k8s.io/component-base/version.gitTreeState=clean"

TMP="$(mktemp -d "$OUT/.build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

start=$SECONDS
echo "building control plane $K8S_VERSION into $OUT (go: $(go version))"
cd "$HERE"
go mod download
echo "modules ready after $((SECONDS - start))s"
# One invocation builds them all so the big links can run in parallel.
# The -X flags only touch k8s.io/component-base, which etcd and pause do not link.
go build -p 2 -trimpath -ldflags "$LDFLAGS" -o "$TMP/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kubelet \
	./etcd \
	./pause

for b in "${BINARIES[@]}"; do
	mv -f "$TMP/$b" "$OUT/$b" # same filesystem: atomic rename
	echo "built $OUT/$b ($(du -h "$OUT/$b" | cut -f1))"
done
stamp >"$STAMP_FILE.tmp.$$"
mv -f "$STAMP_FILE.tmp.$$" "$STAMP_FILE"
echo "control plane $K8S_VERSION built in $((SECONDS - start))s"
echo "$OUT"
