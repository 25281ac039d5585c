//! pgmcp-operator: parses the arguments, starts logging (and OpenTelemetry export when the
//! standard `OTEL_*` variables ask for it) and runs the operator ([`pgmcp_operator::run`]).

use clap::Parser;
use pgmcp_operator::settings::Args;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before the runtime: the exporters' blocking HTTP client must not start on a runtime thread.
    let telemetry = pgmcp_telemetry::init(
        "pgmcp-operator",
        &args.log_format,
        "info",
        pgmcp_telemetry::LogWriter::Stdout,
    );
    let dropped = telemetry.dropped();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(pgmcp_operator::run(args, dropped));
    // Off the runtime: the exporters send what waits.
    telemetry.shutdown();
    Ok(result?)
}
