//! pgmcp-server: the read-only PostgreSQL MCP server each binding runs.
//!
//! This release ships the API (the CRD) only; the server follows.

use clap::Parser;

/// Read-only PostgreSQL MCP server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _args = Args::parse();
    eprintln!("pgmcp-server is not part of this release yet: only the CRD is");
    std::process::ExitCode::FAILURE
}
