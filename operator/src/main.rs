//! pgmcp-operator: parses the arguments and runs the operator ([`pgmcp_operator::run`]).

use clap::Parser;
use pgmcp_operator::settings::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Ok(pgmcp_operator::run(Args::parse()).await?)
}
