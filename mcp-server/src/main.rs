//! pgmcp-server: parses the arguments and runs the server ([`pgmcp_server::run`]).

use clap::Parser;
use pgmcp_server::config::Args;

/// The static (musl) images allocate with mimalloc, without transparent huge pages. musl's own
/// allocator maps and unmaps memory several times per call: +40 % server CPU per call against
/// the glibc build. With huge pages allowed, mimalloc backs its arenas with 2 MiB pages and
/// idle RSS doubles. glibc builds keep glibc's allocator: as fast here, and about 1 MB smaller
/// at idle (BENCHMARKS.md).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    Ok(pgmcp_server::run(Args::parse())?)
}
