//! The one-hop limit: pgbouncer (Debian's package, which `make deps` installs) in transaction
//! pooling mode in front of the benchmark's PostgreSQL, with as many server connections as
//! pgmcp-server's pool. `pgbench -S` through it pays one network hop and one process more than
//! pgbench alone — as an MCP call does — so pgmcp ÷ this is what pgmcp costs beyond being a hop.
//!
//! It runs on a free loopback port from an ini and a userlist in a directory of its own, as
//! `postgres` when we are root (pgbouncer refuses root), under the harness's lifeline: dropping
//! [`Pgbouncer`] (or this process dying) stops it and removes the directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pgmcp_tests::daemon::{Daemon, Spec};

use super::seed::{DATABASE, READER, Seeded};

/// The OS user pgbouncer runs as when we are root (the Debian package's service user too).
const RUN_AS: &str = "postgres";

/// pgmcp-server's PostgreSQL pool with its default settings, as the benchmark runs it: the
/// pooler gets as many server connections, so both funnel the clients into the same number.
pub fn pgmcp_pool_size() -> usize {
    pgmcp_crds::config::DatabaseConfig::default().pool_size
}

/// What [`ini`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen_port: u16,
    pub server_host: String,
    pub server_port: u16,
    pub auth_file: PathBuf,
    /// Server connections (`default_pool_size`, and `max_db_connections` so no reserve or
    /// second pool adds any).
    pub pool_size: usize,
    pub max_client_conn: usize,
}

impl Config {
    /// Room for `max_clients` pgbench clients and the readiness login.
    pub fn new(seeded: &Seeded, listen_port: u16, auth_file: PathBuf, max_clients: usize) -> Self {
        Self {
            listen_port,
            server_host: seeded.host.clone(),
            server_port: seeded.port,
            auth_file,
            pool_size: pgmcp_pool_size(),
            max_client_conn: max_clients + 10,
        }
    }
}

/// `pgbouncer.ini`: database `bench` only, TCP on 127.0.0.1 only (no Unix socket), clients
/// authenticated with SCRAM against the userlist, whose plain password pgbouncer also uses to
/// log in to PostgreSQL (SCRAM as well) — the same read-only role as every other client.
pub fn ini(c: &Config) -> String {
    let mut out = String::from("; written by pgmcp-bench-mcp\n[databases]\n");
    let _ = writeln!(
        out,
        "{DATABASE} = host={} port={} dbname={DATABASE}\n",
        c.server_host, c.server_port
    );
    out.push_str("[pgbouncer]\n");
    for (key, value) in [
        ("listen_addr", "127.0.0.1".to_owned()),
        ("listen_port", c.listen_port.to_string()),
        ("unix_socket_dir", String::new()),
        ("auth_type", "scram-sha-256".to_owned()),
        ("auth_file", c.auth_file.display().to_string()),
        ("pool_mode", "transaction".to_owned()),
        ("default_pool_size", c.pool_size.to_string()),
        ("max_db_connections", c.pool_size.to_string()),
        ("min_pool_size", "0".to_owned()),
        ("reserve_pool_size", "0".to_owned()),
        ("max_client_conn", c.max_client_conn.to_string()),
        ("server_tls_sslmode", "disable".to_owned()),
        ("log_connections", "0".to_owned()),
        ("log_disconnections", "0".to_owned()),
    ] {
        let _ = writeln!(out, "{key} = {value}");
    }
    out
}

/// One `auth_file` line: `"user" "password"`, a `"` inside doubled.
pub fn userlist_line(user: &str, password: &str) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    format!("{} {}\n", quote(user), quote(password))
}

/// A running pgbouncer; dropping it stops it.
#[derive(Debug)]
pub struct Pgbouncer {
    port: u16,
    daemon: Daemon,
}

impl Pgbouncer {
    /// Starts pgbouncer in front of `seeded` for up to `max_clients` clients and waits until
    /// the reader logs in through it and gets an answer (30 s at most).
    pub async fn start(seeded: &Seeded, max_clients: usize) -> anyhow::Result<Self> {
        let program = binary();
        pgmcp_tests::paths::require(
            &program,
            "install pgbouncer (`apt-get install pgbouncer`, done by `make deps`) or set PGMCP_PGBOUNCER",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("pgmcp-bench-pgbouncer-")
            .tempdir()?
            .keep();
        let port = pgmcp_tests::paths::free_port()?;
        let auth_file = dir.join("userlist.txt");
        let config = Config::new(seeded, port, auth_file.clone(), max_clients);
        std::fs::write(&auth_file, userlist_line(READER, &seeded.reader_password))?;
        let ini_file = dir.join("pgbouncer.ini");
        std::fs::write(&ini_file, ini(&config))?;
        let run_as = pgmcp_tests::postgres::running_as_root()?.then(|| RUN_AS.to_owned());
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(&dir)
                .status()
                .context("failed to run chown")?;
            anyhow::ensure!(status.success(), "chown {user}: {} failed", dir.display());
        }
        let mut spec = Spec::new("pgbouncer", program, dir.join("pgbouncer.log")).args([&ini_file]);
        spec.cleanup_dir = Some(dir);
        spec.run_as = run_as;
        let mut daemon = Daemon::spawn(spec)?;

        let started = Instant::now();
        let mut db = tokio_postgres::Config::new();
        db.host(&seeded.host)
            .port(port)
            .user(READER)
            .password(&seeded.reader_password)
            .dbname(DATABASE)
            .connect_timeout(Duration::from_secs(5));
        loop {
            let answered = async {
                let (client, connection) = db.connect(tokio_postgres::NoTls).await?;
                let connection = tokio::spawn(connection);
                client.simple_query("SELECT 1").await?;
                drop(client);
                let _ = connection.await;
                Ok::<_, tokio_postgres::Error>(())
            }
            .await;
            match answered {
                Ok(()) => break,
                Err(err) if daemon.exited() || started.elapsed() > Duration::from_secs(30) => {
                    anyhow::bail!(
                        "pgbouncer did not let {READER} in ({err}):\n{}",
                        daemon.log_tail(20)
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Ok(Self { port, daemon })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail(20)
    }
}

/// `$PGMCP_PGBOUNCER`, else Debian's /usr/sbin/pgbouncer.
fn binary() -> PathBuf {
    std::env::var_os("PGMCP_PGBOUNCER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("/usr/sbin/pgbouncer").to_path_buf())
}

/// `PgBouncer 1.18.0` (the first line of `pgbouncer --version`).
pub fn version() -> String {
    Command::new(binary())
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_pools_transactions_into_pgmcps_pool_size() {
        let config = Config {
            listen_port: 40001,
            server_host: "127.0.0.1".into(),
            server_port: 40000,
            auth_file: "/tmp/x/userlist.txt".into(),
            pool_size: 8,
            max_client_conn: 42,
        };
        assert_eq!(
            ini(&config),
            "; written by pgmcp-bench-mcp\n\
             [databases]\n\
             bench = host=127.0.0.1 port=40000 dbname=bench\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = 40001\n\
             unix_socket_dir = \n\
             auth_type = scram-sha-256\n\
             auth_file = /tmp/x/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = 8\n\
             max_db_connections = 8\n\
             min_pool_size = 0\n\
             reserve_pool_size = 0\n\
             max_client_conn = 42\n\
             server_tls_sslmode = disable\n\
             log_connections = 0\n\
             log_disconnections = 0\n"
        );
    }

    #[test]
    fn config_matches_pgmcps_default_pool_and_exceeds_the_client_count() {
        let seeded = Seeded {
            host: "127.0.0.1".into(),
            port: 5432,
            reader_password: "pw".into(),
            login_password: "pw2".into(),
            accounts: 100_000,
            tables: 1,
            postgres_version: String::new(),
        };
        let config = Config::new(&seeded, 6432, "/a/userlist.txt".into(), 32);
        assert_eq!(config.pool_size, pgmcp_pool_size());
        assert!(config.max_client_conn > 32);
        assert_eq!(
            (config.server_host.as_str(), config.server_port),
            ("127.0.0.1", 5432)
        );
    }

    #[test]
    fn userlist_quotes_and_doubles_quotes() {
        assert_eq!(
            userlist_line("bench_reader", "0a1b"),
            "\"bench_reader\" \"0a1b\"\n"
        );
        assert_eq!(
            userlist_line("a\"b", "p\"\"q"),
            "\"a\"\"b\" \"p\"\"\"\"q\"\n"
        );
    }
}
