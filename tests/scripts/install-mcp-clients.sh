#!/usr/bin/env bash
# Installs the third-party MCP clients the interop tests drive against pgmcp:
#   * the official MCP Python SDK (pinned in tests/interop/requirements.txt)
#     in a venv at $PGMCP_CACHE/venv/mcp, used by tests/interop/mcp_client.py;
#   * @modelcontextprotocol/inspector (its --cli mode) from npm, pinned by
#     tests/interop/package.json + package-lock.json, in $PGMCP_CACHE/node;
#   * the Azure AI Foundry agent sample's SDK (pinned in
#     examples/foundry-agent/requirements.txt) in a venv at $PGMCP_CACHE/venv/foundry-agent;
#   * through install-conformance.sh, @modelcontextprotocol/conformance and the
#     Node 22 it runs on, in $PGMCP_CACHE/conformance.
# PGMCP_CACHE defaults to <repo root>/.cache; pip's and npm's caches live there too.
#
# Idempotent: a stamp (sha256 of the pin files, this script, and the python3 and
# node versions) makes a second run a no-op. Concurrent runs serialise on a lock.
#
# Progress goes to stderr. Stdout gets only the result, as KEY=path lines:
#   MCP_PYTHON=…       venv python with the MCP SDK
#   MCP_CLIENT=…       tests/interop/mcp_client.py (run it with MCP_PYTHON)
#   MCP_INSPECTOR=…    inspector launcher; use as: MCP_INSPECTOR --cli URL --transport http --method tools/list
#   FOUNDRY_PYTHON=…   venv python with azure-ai-projects, for examples/foundry-agent/agent.py
#   MCP_CONFORMANCE=…  conformance CLI on Node 22; use as:
#                      MCP_CONFORMANCE server --url URL --scenario NAME --spec-version REVISION
#   MCP_NODE22=…       the Node 22 it runs on
# and, as the last line, the cache directory.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${PGMCP_CACHE:-$ROOT/.cache}"
INTEROP="$ROOT/tests/interop"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
# shellcheck source=lib/install-once.sh
source "$HERE/lib/install-once.sh"

REQUIREMENTS="$INTEROP/requirements.txt"
FOUNDRY_REQUIREMENTS="$ROOT/examples/foundry-agent/requirements.txt"
PACKAGE_JSON="$INTEROP/package.json"
PACKAGE_LOCK="$INTEROP/package-lock.json"

VENV="$CACHE/venv/mcp"
VENV_PY="$VENV/bin/python"
FOUNDRY_VENV="$CACHE/venv/foundry-agent"
FOUNDRY_PY="$FOUNDRY_VENV/bin/python"
NODE_DIR="$CACHE/node"
INSPECTOR="$NODE_DIR/node_modules/.bin/mcp-inspector"
STAMP="$CACHE/mcp-clients.stamp"

# Expected versions, read back after the install as a sanity check.
INSPECTOR_VERSION="$(sed -n 's/.*"@modelcontextprotocol\/inspector": *"\([^"]*\)".*/\1/p' "$PACKAGE_JSON")"

exec 3>&1 1>&2 # stdout is for the result lines only

die() {
	echo "install-mcp-clients.sh: $*" >&2
	exit 1
}

print_result() {
	echo "MCP_PYTHON=$VENV_PY" >&3
	echo "MCP_CLIENT=$INTEROP/mcp_client.py" >&3
	echo "MCP_INSPECTOR=$INSPECTOR" >&3
	echo "FOUNDRY_PYTHON=$FOUNDRY_PY" >&3
	echo "$CONFORMANCE_RESULT" >&3
	echo "$CACHE" >&3
}

# The conformance suite has its own pins, stamp and lock (and needs no system Node).
CONFORMANCE_RESULT="$(PGMCP_CACHE="$CACHE" bash "$HERE/install-conformance.sh")"

# ------------------------------------------------------------------ toolchains
command -v python3 >/dev/null 2>&1 || die "'python3' not found in PATH"
command -v node >/dev/null 2>&1 || die "'node' not found in PATH"
command -v npm >/dev/null 2>&1 || die "'npm' not found in PATH"
NODE_VERSION="$(node --version)"
NODE_MAJOR="${NODE_VERSION#v}"
NODE_MAJOR="${NODE_MAJOR%%.*}"
if ((NODE_MAJOR < 20)); then
	die "Node >= 20 is needed (the inspector's --cli mode), found $NODE_VERSION"
fi
PY_VERSION="$(python3 -c 'import sys; print(sys.version.split()[0])')"

stamp_value() {
	{
		sha256sum "$REQUIREMENTS" "$FOUNDRY_REQUIREMENTS" "$PACKAGE_JSON" "$PACKAGE_LOCK" "$SELF" | cut -d' ' -f1
		echo "python $PY_VERSION"
		echo "node $NODE_VERSION"
	} | sha256sum | cut -d' ' -f1
}

installed() {
	[[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" &&
		-x "$VENV_PY" && -x "$FOUNDRY_PY" && -x "$INSPECTOR" ]]
}

install_once "$CACHE/mcp-clients.lock"
start=$SECONDS

# ----------------------------------------------------------- Python SDKs in venvs
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
	die "'python3 -m venv' with ensurepip is not available for $(command -v python3) ($PY_VERSION).
  Use a Python 3.10+ build that ships the venv and ensurepip modules; this script
  does not fall back to apt (python3-venv is not an option on these machines)."
fi
# venv_install VENV REQUIREMENTS PACKAGE IMPORTS: a venv on this python3 with REQUIREMENTS
# installed and consistent; checks that PACKAGE has the version pinned there and that IMPORTS
# (a comma-separated module list) import.
venv_install() {
	local venv="$1" requirements="$2" package="$3" imports="$4"
	local py="$venv/bin/python" want got
	want="$(sed -n "s/^$package==\([^ ;]*\).*/\1/p" "$requirements")"
	if ! "$py" -c 'import sys' >/dev/null 2>&1 ||
		[[ "$("$py" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)" != "$PY_VERSION" ]]; then
		echo "creating venv $venv (python $PY_VERSION)"
		rm -rf "$venv"
		mkdir -p "$(dirname "$venv")"
		python3 -m venv "$venv"
	fi
	echo "installing $package==$want into $venv"
	PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip install \
		--cache-dir "$CACHE/pip" --no-input --quiet --prefer-binary \
		-r "$requirements"
	PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip check >/dev/null ||
		die "pip check failed in $venv: $("$py" -m pip check 2>&1 | head -5)"
	got="$("$py" -c "import importlib.metadata as m, $imports; print(m.version('$package'))")"
	[[ "$got" == "$want" ]] || die "expected $package $want in $venv, got '$got'"
	echo "$package $got ok"
}
# The MCP Python SDK, and the Foundry agent sample's SDK (examples/foundry-agent/).
venv_install "$VENV" "$REQUIREMENTS" mcp "mcp.client.streamable_http, mcp.client.stdio"
venv_install "$FOUNDRY_VENV" "$FOUNDRY_REQUIREMENTS" azure-ai-projects "azure.ai.projects.models, azure.identity"

# ------------------------------------------------------------- Inspector (npm)
echo "installing @modelcontextprotocol/inspector@$INSPECTOR_VERSION into $NODE_DIR"
mkdir -p "$NODE_DIR" "$CACHE/npm"
cp -f "$PACKAGE_JSON" "$PACKAGE_LOCK" "$NODE_DIR/"
# No package in the lock has an install script; --ignore-scripts and the *_SKIP_*
# variables make sure nothing ever tries to download a browser or a binary.
# engine-strict=false: inspector 1.0.3 declares node>=22.7.5 for its web UI;
# its --cli mode runs on Node 20 (checked by the interop tests).
env PUPPETEER_SKIP_DOWNLOAD=1 PUPPETEER_SKIP_CHROMIUM_DOWNLOAD=1 \
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 ELECTRON_SKIP_BINARY_DOWNLOAD=1 \
	npm ci --prefix "$NODE_DIR" --cache "$CACHE/npm" \
	--ignore-scripts --no-audit --no-fund --engine-strict=false \
	--update-notifier=false --loglevel=error
[[ -x "$INSPECTOR" ]] || die "npm ci did not produce $INSPECTOR"
pkg_version() { node -p "require('$NODE_DIR/node_modules/$1/package.json').version"; }
got="$(pkg_version @modelcontextprotocol/inspector)"
[[ "$got" == "$INSPECTOR_VERSION" ]] || die "expected inspector $INSPECTOR_VERSION, got '$got'"
echo "inspector $INSPECTOR_VERSION ok"

stamp_value >"$STAMP"
echo "MCP clients installed in $((SECONDS - start))s"
print_result
