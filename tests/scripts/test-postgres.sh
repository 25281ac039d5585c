#!/usr/bin/env bash
# Runs the server's and the operator's PostgreSQL tests on each PostgreSQL major named, with the
# npm builds tests/scripts/install-postgres.sh installs (PGMCP_POSTGRES_VERSION=<major>), and
# prints one line per major. `make test-pg18` (part of `make test`) and `make test-pg-matrix`.
#
#   tests/scripts/test-postgres.sh MAJOR...
#
# The tests are those whose outcome depends on what PostgreSQL answers: the server's catalog
# and SQL tools, its read-only layers and role check, the SQL guard against PostgreSQL's parser,
# its connections (TLS, restarts, stdio and HTTP end to end), per-caller access and the wire
# client's protocol; the operator's grants, read-only probe and Entra principal. Not the tests of caller authentication, MCP interoperability or
# Kubernetes objects, which PostgreSQL's version does not change (they run once, on 15, in
# `make integration`). A new test file that exercises PostgreSQL belongs in these lists.
#
# Expects the binaries the Makefile's BIN_ENV names and the control plane (`make bins
# controlplane tools`). Every major runs even when one fails; the exit status says whether all
# passed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CARGO="${CARGO:-cargo}"
read -r -a CARGO_FLAGS <<<"${CARGO_FLAGS:---locked}"

SERVER_TESTS=(tools read_only guard_properties faults http stdio tls callers protocol)
OPERATOR_TESTS=(database caller_classes entra_database postgres)

if (($# == 0)); then
	echo "usage: $0 MAJOR... (pinned: $(awk '$1 ~ /^[0-9]+$/ { printf "%s ", $1 }' "$ROOT/tests/postgres/versions.txt"))" >&2
	exit 2
fi
bash "$HERE/install-postgres.sh" "$@" >/dev/null

# The operator's tests select pgmcp-server too, as `make integration` does: pgmcp-tests alone
# resolves other dependency features and would build everything again. (The server's alone
# resolve the same; with both, `--test faults` would also pick the operator's Kubernetes faults.)
server=(-p pgmcp-server -p pgmcp-postgres-wire)
for name in "${SERVER_TESTS[@]}"; do server+=(--test "$name"); done
operator=(-p pgmcp-tests -p pgmcp-server)
for name in "${OPERATOR_TESTS[@]}"; do operator+=(--test "$name"); done

cd "$ROOT"
summary=()
failed=0
for major in "$@"; do
	echo "=== PostgreSQL $major: the server's and the operator's PostgreSQL tests" >&2
	start=$SECONDS
	status=passed
	PGMCP_POSTGRES_VERSION="$major" "$CARGO" test "${CARGO_FLAGS[@]}" --no-fail-fast "${server[@]}" || status=FAILED
	PGMCP_POSTGRES_VERSION="$major" "$CARGO" test "${CARGO_FLAGS[@]}" --no-fail-fast "${operator[@]}" || status=FAILED
	[[ "$status" == passed ]] || failed=1
	build="$(cut -d' ' -f1 <"${PGMCP_CACHE:-$ROOT/.cache}/postgres/$major/.stamp")"
	summary+=("PostgreSQL $major (npm $build): $status in $((SECONDS - start)) s")
done
printf '%s\n' "${summary[@]}" >&2
exit "$failed"
