//! `pgmcp-bench-mcp`: the MCP server benchmark (`make bench-mcp`, `make bench-mcp-smoke`).
//! Arguments in [`pgmcp_bench::mcp::Options`]; everything else lives in that module.

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let options = pgmcp_bench::mcp::Options::parse();
    // Two workers: enough to keep up with the servers on a small machine without taking
    // every core from the server under test (the report shows the generator's CPU).
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(pgmcp_bench::mcp::main(options))
}
