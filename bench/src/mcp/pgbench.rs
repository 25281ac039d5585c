//! The physical limit: `pgbench -S` (select-only: `SELECT abalance FROM pgbench_accounts WHERE
//! aid = N`, simple protocol) with the same client count, as the same read-only role, against
//! the same PostgreSQL — directly, or through pgbouncer (the one-hop limit, see
//! [`super::pgbouncer`]).

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::seed::{DATABASE, READER, Seeded, pgbench};

/// One pgbench run.
#[derive(Debug, Clone, Copy)]
pub struct PgbenchResult {
    pub clients: usize,
    pub tps: f64,
    pub latency_avg_ms: f64,
    pub failed: u64,
}

/// `pgbench -S -n -c clients -j min(clients, nproc) -T secs` against `port` on the seeded host:
/// PostgreSQL's own (`seeded.port`) or pgbouncer's.
pub fn run(
    seeded: &Seeded,
    port: u16,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<PgbenchResult> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = Command::new(pgbench())
        .args(["-S", "-n"])
        .args(["-c", &clients.to_string()])
        .args(["-j", &clients.min(cpus).to_string()])
        .args(["-T", &duration.as_secs().max(1).to_string()])
        .args(["-h", &seeded.host, "-p", &port.to_string()])
        .args(["-U", READER, DATABASE])
        .env("PGPASSWORD", &seeded.reader_password)
        .output()
        .context("failed to run pgbench -S")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench -S failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&stdout, clients)
}

fn parse(stdout: &str, clients: usize) -> anyhow::Result<PgbenchResult> {
    let number_after = |prefix: &str| -> Option<f64> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Ok(PgbenchResult {
        clients,
        tps: number_after("tps = ").context("no `tps =` line in pgbench's output")?,
        latency_avg_ms: number_after("latency average = ").unwrap_or(f64::NAN),
        failed: number_after("number of failed transactions: ").map_or(0, |n| n as u64),
    })
}

/// `pgbench --version`.
pub fn version() -> String {
    Command::new(pgbench())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_15_output_parses() {
        let out = "transaction type: <builtin: select only>\nscaling factor: 10\n\
                   number of clients: 8\nnumber of failed transactions: 0 (0.000%)\n\
                   latency average = 0.412 ms\ninitial connection time = 12.345 ms\n\
                   tps = 19412.345678 (without initial connection time)\n";
        let r = parse(out, 8).expect("parse");
        assert_eq!(r.tps, 19412.345678);
        assert_eq!(r.latency_avg_ms, 0.412);
        assert_eq!(r.failed, 0);
    }
}
