#!/usr/bin/env bash
# Installs the MCP servers `make bench-mcp` compares pgmcp with, from the package registries,
# into $PGMCP_CACHE/bench (default <repo root>/.cache/bench; never committed):
#   * npm (pinned by bench/peers/package.json + package-lock.json, `npm ci`):
#       @modelcontextprotocol/server-postgres 0.6.2   stdio
#       @toolbox-sdk/server 1.12.0                    `toolbox --prebuilt postgres`, stdio and HTTP
#       @azure/mcp 2.0.5                              postgres tools for Azure hosts only (see BENCHMARKS.md)
#   * PyPI: postgres-mcp 0.3.0 (crystaldba) in a venv. It declares Python >= 3.12; on 3.11 it
#     works with three adjustments, all made here:
#       1. the package itself is installed with --no-deps --ignore-requires-python;
#       2. its requirements come from bench/peers/postgres-mcp.txt (a freeze of postgres-mcp.in:
#          pglast 7.22 instead of the missing 7.2.0, mcp < 2 for mcp.server.fastmcp);
#       3. a .pth file makes `typing.override` (3.12) typing_extensions.override, the one 3.12
#          name the package imports (postgres_mcp/index/{dta_calc,llm_opt}.py).
#
# Idempotent: a stamp (sha256 of the pin files, this script, python3 and node versions) makes a
# second run a no-op. Concurrent runs serialise on a lock. Progress goes to stderr; stdout gets
# the cache directory only. Nothing is downloaded from anywhere but npm and PyPI.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PEERS="$ROOT/bench/peers"
CACHE="${PGMCP_CACHE:-$ROOT/.cache}/bench"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
NODE_DIR="$CACHE/node"
VENV="$CACHE/venv/postgres-mcp"
STAMP="$CACHE/peers.stamp"
POSTGRES_MCP_VERSION=0.3.0

exec 3>&1 1>&2 # stdout is for the result only

die() {
	echo "install-peers.sh: $*" >&2
	exit 1
}

command -v python3 >/dev/null 2>&1 || die "'python3' not found in PATH"
command -v node >/dev/null 2>&1 || die "'node' not found in PATH"
command -v npm >/dev/null 2>&1 || die "'npm' not found in PATH"
PY_VERSION="$(python3 -c 'import sys; print(sys.version.split()[0])')"
NODE_VERSION="$(node --version)"

stamp_value() {
	{
		sha256sum "$PEERS/package.json" "$PEERS/package-lock.json" "$PEERS/postgres-mcp.txt" "$SELF" | cut -d' ' -f1
		echo "python $PY_VERSION"
		echo "node $NODE_VERSION"
	} | sha256sum | cut -d' ' -f1
}

installed() {
	[[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" &&
		-x "$VENV/bin/postgres-mcp" && -x "$NODE_DIR/node_modules/.bin/toolbox" ]]
}

if installed; then
	echo "$CACHE" >&3
	exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/peers.lock"
if command -v flock >/dev/null 2>&1; then
	flock 9
fi
if installed; then
	echo "$CACHE" >&3
	exit 0
fi
rm -f "$STAMP"
start=$SECONDS

# ----------------------------------------------------------------------------------- npm
echo "installing the npm peers into $NODE_DIR"
mkdir -p "$NODE_DIR" "$CACHE/npm"
cp -f "$PEERS/package.json" "$PEERS/package-lock.json" "$NODE_DIR/"
# --ignore-scripts: @azure/mcp's postinstall only checks that its platform package (an
# optionalDependency, installed by npm itself) is there; nothing needs to run.
# `npm install` with the lock rather than `npm ci`: @toolbox-sdk/server names platform packages
# for darwin and win32 that the registry does not serve, and `npm ci` refuses such a lock.
npm install --prefix "$NODE_DIR" --cache "$CACHE/npm" --ignore-scripts --no-audit --no-fund \
	--update-notifier=false --loglevel=error
pkg_version() { node -p "require('$NODE_DIR/node_modules/$1/package.json').version"; }
for pkg in @modelcontextprotocol/server-postgres@0.6.2 @toolbox-sdk/server@1.12.0 \
	@toolbox-sdk/server-linux-x64@1.12.0 @azure/mcp@2.0.5 @azure/mcp-linux-x64@2.0.5; do
	name="${pkg%@*}"
	got="$(pkg_version "$name")"
	[[ "$got" == "${pkg##*@}" ]] || die "expected $pkg, got '$got'"
done

# ------------------------------------------------------------------- postgres-mcp (PyPI)
if ! python3 -m venv --help >/dev/null 2>&1; then
	die "'python3 -m venv' is not available for $(command -v python3)"
fi
if [[ ! -x "$VENV/bin/python" ]] ||
	[[ "$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)" != "$PY_VERSION" ]]; then
	echo "creating venv $VENV (python $PY_VERSION)"
	rm -rf "$VENV"
	mkdir -p "$(dirname "$VENV")"
	python3 -m venv "$VENV"
fi
echo "installing postgres-mcp $POSTGRES_MCP_VERSION into $VENV (Python $PY_VERSION; it declares >= 3.12)"
pip() { PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip "$@"; }
pip install --cache-dir "$CACHE/pip" --no-input --quiet --prefer-binary -r "$PEERS/postgres-mcp.txt"
pip install --cache-dir "$CACHE/pip" --no-input --quiet --no-deps --ignore-requires-python \
	"postgres-mcp==$POSTGRES_MCP_VERSION"
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo 'import typing, typing_extensions; typing.override = getattr(typing, "override", typing_extensions.override)' \
	>"$site/pgmcp_bench_py311.pth"
"$VENV/bin/python" -c 'import postgres_mcp.server' || die "postgres-mcp does not import on Python $PY_VERSION"

stamp_value >"$STAMP"
echo "bench peers installed in $((SECONDS - start))s"
echo "$CACHE" >&3
