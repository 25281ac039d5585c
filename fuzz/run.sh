#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for a fixed time: `make fuzz` (FUZZ_SECONDS
# each) and `make fuzz-smoke` (a few seconds each, --smoke).
#
#   fuzz/run.sh SECONDS [--smoke] [TARGET...]
#
# What it needs, and where it comes from:
# - cargo-fuzz, installed from crates.io into .cache/cargo-fuzz on first use;
# - a toolchain that accepts libFuzzer's instrumentation: rustup's nightly when it is installed
#   or can be installed (tried once; a failure is remembered in .cache/cargo-fuzz), otherwise the
#   stable toolchain with RUSTC_BOOTSTRAP=1. Runs use `--sanitizer none` (FUZZ_SANITIZER): the
#   code is safe Rust, and coverage-guided runs without ASan are about twice as fast.
#
# Each target reads the committed inputs in fuzz/seeds/<target> and fuzz/regressions/<target>
# and writes what it finds to fuzz/corpus/<target> (ignored by git). A crash leaves its input in
# fuzz/artifacts/<target>; once fixed, copy it to fuzz/regressions/<target> so every run replays
# it. With --smoke, cargo-fuzz that cannot be installed skips the fuzz runs instead of failing
# (a build that fails still fails).
set -euo pipefail

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$fuzz_dir")
cache=${PGMCP_CACHE:-$root/.cache}
[[ $cache = /* ]] || cache=$root/$cache
seconds=${1:?usage: fuzz/run.sh SECONDS [--smoke] [TARGET...]}
shift
smoke=false
if [[ ${1:-} == --smoke ]]; then
    smoke=true
    shift
fi
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(sql_guard tool_args jwt binding_validate)
fi
sanitizer=${FUZZ_SANITIZER:-none}
if ((seconds == 0)); then
    echo "fuzz: 0 seconds: the cargo-fuzz targets are skipped" >&2
    exit 0
fi
cargo_fuzz_version=0.13.2

unavailable() {
    if $smoke; then
        echo "fuzz-smoke: skipping the cargo-fuzz targets: $*" >&2
        exit 0
    fi
    echo "fuzz: $*" >&2
    exit 1
}

# cargo-fuzz
cargo_fuzz=$cache/cargo-fuzz/bin/cargo-fuzz
if [[ ! -x $cargo_fuzz ]]; then
    echo "fuzz: installing cargo-fuzz $cargo_fuzz_version into $cache/cargo-fuzz" >&2
    cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz_version" \
        --root "$cache/cargo-fuzz" >&2 || unavailable "cargo install cargo-fuzz failed"
fi

# The toolchain: nightly if present or installable (tried once), else stable + RUSTC_BOOTSTRAP.
# FUZZ_TOOLCHAIN=stable skips nightly (checked: libFuzzer builds and finds crashes that way).
nightly=false
nightly_failed=$cache/cargo-fuzz/nightly-unavailable
if [[ ${FUZZ_TOOLCHAIN:-} == stable ]]; then
    :
elif rustup run nightly rustc --version >/dev/null 2>&1; then
    nightly=true
elif command -v rustup >/dev/null && [[ ! -e $nightly_failed ]]; then
    echo "fuzz: installing the nightly toolchain (minimal profile)" >&2
    if timeout 600 rustup toolchain install nightly --profile minimal >&2; then
        nightly=true
    else
        mkdir -p "$(dirname "$nightly_failed")"
        date -u >"$nightly_failed"
    fi
fi
# `cargo fuzz …` runs `cargo-fuzz fuzz …`, which calls `cargo` (rustup's proxy) in turn.
if $nightly; then
    fuzz=(env RUSTUP_TOOLCHAIN=nightly "$cargo_fuzz" fuzz)
else
    echo "fuzz: using the default toolchain with RUSTC_BOOTSTRAP=1 (no nightly)" >&2
    fuzz=(env RUSTC_BOOTSTRAP=1 "$cargo_fuzz" fuzz)
fi

cd "$fuzz_dir"
"${fuzz[@]}" build --sanitizer "$sanitizer" >&2

status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "seeds/$target" "regressions/$target"
    echo "fuzz: $target for ${seconds}s" >&2
    if ! "${fuzz[@]}" run --sanitizer "$sanitizer" "$target" \
        "corpus/$target" "seeds/$target" "regressions/$target" -- \
        -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 2>"corpus/$target.log"; then
        tail -n 40 "corpus/$target.log" >&2
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target" >&2
        status=1
    else
        grep -E '^(stat::number_of_executed_units|stat::new_units_added)' "corpus/$target.log" |
            sed "s/^/fuzz: $target /" >&2 || true
    fi
done
exit $status
