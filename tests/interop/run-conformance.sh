#!/usr/bin/env bash
# Runs the MCP conformance suite (@modelcontextprotocol/conformance, pinned in
# package.json) against a running server, one scenario at a time.
#
#   tests/interop/run-conformance.sh URL                # the required scenarios
#   tests/interop/run-conformance.sh URL NAME...        # these scenarios, all required
#   tests/interop/run-conformance.sh URL all            # every server scenario; only the
#                                                       # required ones decide the exit code
#
# URL is the MCP endpoint, e.g. http://127.0.0.1:8080/mcp. It must name
# localhost, 127.0.0.1 or [::1] for dns-rebinding-protection to be able to pass.
#
# Output, one line per scenario, then a summary line:
#   PASS <scenario>
#   FAIL <scenario>: <reason>                  (a required scenario: exit code 1)
#   FAIL <scenario>: <reason> [not required]   (with "all": reported, not counted)
#   conformance: N passed, M failed
# A scenario passes when its checks.json has at least one SUCCESS check and no
# FAILURE check, and no WARNING check either (a WARNING is how the suite reports
# a check it could not make, e.g. no Mcp-Session-Id for server-sse-multiple-streams;
# CONFORMANCE_ALLOW_WARNINGS=1 lets warnings pass, reported after the PASS line
# as "  warning <scenario>: <text>").
#
# Environment:
#   PGMCP_CACHE                 where install-mcp-clients.sh put the clients (default <repo>/.cache)
#   CONFORMANCE_BIN             the conformance CLI (default $PGMCP_CACHE/node/node_modules/.bin/conformance)
#   CONFORMANCE_RESULTS         keep per-scenario logs and checks.json here (default: a temp dir, removed)
#   CONFORMANCE_TIMEOUT         seconds per scenario (default 120)
#   CONFORMANCE_ALLOW_WARNINGS  1 = WARNING checks do not fail a scenario
#   CONFORMANCE_VERBOSE         1 = print the suite's own output of each failing scenario to stderr
#
# Exit status: 0 all required scenarios passed, 1 some failed, 2 bad usage or missing tools.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${PGMCP_CACHE:-$ROOT/.cache}"
BIN="${CONFORMANCE_BIN:-$CACHE/node/node_modules/.bin/conformance}"
TIMEOUT="${CONFORMANCE_TIMEOUT:-120}"

# The scenarios that apply to pgmcp, a server with only tools (no prompts,
# resources, completions or logging). See tests/interop/README.md for the rest.
REQUIRED=(server-initialize ping tools-list server-sse-multiple-streams dns-rebinding-protection)

usage() {
	sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

[[ $# -ge 1 ]] || usage
URL="$1"
shift
[[ "$URL" == http://* || "$URL" == https://* ]] || {
	echo "run-conformance.sh: URL must start with http:// or https://, got '$URL'" >&2
	exit 2
}
if [[ ! -x "$BIN" ]]; then
	echo "run-conformance.sh: conformance CLI not found at $BIN; run tests/scripts/install-mcp-clients.sh" >&2
	exit 2
fi
command -v python3 >/dev/null 2>&1 || {
	echo "run-conformance.sh: python3 is needed to read the results" >&2
	exit 2
}

mapfile -t KNOWN < <("$BIN" list --server | sed -n 's/^  - //p')
[[ ${#KNOWN[@]} -gt 0 ]] || {
	echo "run-conformance.sh: '$BIN list --server' listed no scenarios" >&2
	exit 2
}

is_required() {
	local s
	for s in "${REQUIRED[@]}"; do [[ "$s" == "$1" ]] && return 0; done
	return 1
}

SCENARIOS=()
ONLY_REQUIRED_COUNT=0
if [[ $# -eq 0 ]]; then
	SCENARIOS=("${REQUIRED[@]}")
elif [[ $# -eq 1 && "$1" == all ]]; then
	SCENARIOS=("${KNOWN[@]}")
	ONLY_REQUIRED_COUNT=1
else
	SCENARIOS=("$@")
fi
for s in "${SCENARIOS[@]}"; do
	found=0
	for k in "${KNOWN[@]}"; do [[ "$k" == "$s" ]] && found=1; done
	if [[ $found -eq 0 ]]; then
		echo "run-conformance.sh: unknown scenario '$s'; known: ${KNOWN[*]}" >&2
		exit 2
	fi
done

if [[ -n "${CONFORMANCE_RESULTS:-}" ]]; then
	OUT="$CONFORMANCE_RESULTS"
	mkdir -p "$OUT"
else
	OUT="$(mktemp -d "${TMPDIR:-/tmp}/pgmcp-conformance.XXXXXX")"
	trap 'rm -rf "$OUT"' EXIT
fi

# judge CHECKS_JSON SCENARIO: prints "PASS" or "FAIL <reason>",
# then any warnings on further lines as "WARN <text>".
judge() {
	python3 - "$1" "$2" "${CONFORMANCE_ALLOW_WARNINGS:-0}" <<'EOF'
import json, sys
path, scenario, allow_warnings = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
with open(path, encoding="utf-8") as f:
    checks = json.load(f)
def why(c):
    msg = c.get("errorMessage") or (c.get("details") or {}).get("message") or c.get("description", "")
    msg = " ".join(str(msg).split())
    return msg if c.get("id") == scenario else f"{c.get('id')}: {msg}"
failures = [c for c in checks if c.get("status") == "FAILURE"]
warnings = [c for c in checks if c.get("status") == "WARNING"]
successes = [c for c in checks if c.get("status") == "SUCCESS"]
if failures:
    print("FAIL " + "; ".join(why(c) for c in failures))
elif warnings and not allow_warnings:
    print("FAIL " + "; ".join("WARNING " + why(c) for c in warnings))
elif not successes and not warnings:
    print("FAIL no check succeeded (" + ", ".join(f"{c.get('id')}={c.get('status')}" for c in checks) + ")")
else:
    print("PASS")
    for c in warnings:
        print("WARN " + why(c))
EOF
}

passed=0
failed=0
required_failed=0
for s in "${SCENARIOS[@]}"; do
	dir="$OUT/$s"
	rm -rf "$dir"
	mkdir -p "$dir"
	rc=0
	timeout --kill-after=10 "$TIMEOUT" "$BIN" server --url "$URL" --scenario "$s" -o "$dir" \
		>"$dir/output.log" 2>&1 </dev/null || rc=$?
	checks=("$dir"/server-"$s"-*/checks.json)
	if [[ -f "${checks[0]}" ]]; then
		verdict="$(judge "${checks[0]}" "$s")"
	elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
		verdict="FAIL timed out after ${TIMEOUT}s"
	else
		last="$(grep -v '^\s*$' "$dir/output.log" | tail -n 1 | cut -c1-300)"
		verdict="FAIL the suite wrote no results (exit $rc): $last"
	fi
	first="${verdict%%$'\n'*}"
	# The suite's own exit code must agree with a PASS (it ignores warnings).
	if [[ "$first" == PASS && $rc -ne 0 ]]; then
		first="FAIL the suite exited $rc although checks.json shows no failure"
	fi
	if is_required "$s" || [[ $ONLY_REQUIRED_COUNT -eq 0 ]]; then
		counts=1
	else
		counts=0
	fi
	if [[ "$first" == PASS ]]; then
		passed=$((passed + 1))
		echo "PASS $s"
		if [[ "$verdict" == *$'\n'* ]]; then
			printf '%s\n' "${verdict#*$'\n'}" | sed "s/^WARN /  warning $s: /"
		fi
	else
		failed=$((failed + 1))
		suffix=""
		if [[ $counts -eq 1 ]]; then
			required_failed=$((required_failed + 1))
		else
			suffix=" [not required]"
		fi
		echo "FAIL $s: ${first#FAIL }$suffix"
		if [[ "${CONFORMANCE_VERBOSE:-0}" == 1 ]]; then
			sed "s/^/  [$s] /" "$dir/output.log" >&2
		fi
	fi
done

echo "conformance: $passed passed, $failed failed"
if [[ -n "${CONFORMANCE_RESULTS:-}" ]]; then
	echo "results in $OUT (per scenario: output.log, server-<scenario>-<time>/checks.json)" >&2
fi
[[ $required_failed -eq 0 ]]
