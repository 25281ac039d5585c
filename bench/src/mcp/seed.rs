//! The benchmark database on a PostgreSQL of its own (the harness's, restartable for the soak):
//! `pgbench -i` (pgbench_accounts with 100,000 rows per scale unit) plus `tables` wide tables
//! in schema public with keys, foreign keys, indexes and comments for the discovery tools, a
//! LOGIN role with SELECT only that every server under test and pgbench connect as, and the
//! roles of one caller class as the operator makes them (for `pgmcp-http-class`).

use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use pgmcp_tests::Postgres;

/// Database every server reads.
pub const DATABASE: &str = "bench";
/// The read-only role every server (and pgbench) logs in as.
pub const READER: &str = "bench_reader";
/// The login role of the caller-class target: NOINHERIT, CONNECT only, member of
/// [`CLASS_ROLE`] — what the operator makes for a binding with caller classes.
pub const LOGIN: &str = "bench_login";
/// The NOLOGIN role of the class (`<login>__<class>`), holding exactly the reader's grants.
pub const CLASS_ROLE: &str = "bench_login__bench";

/// What was seeded.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub host: String,
    pub port: u16,
    pub reader_password: String,
    /// [`LOGIN`]'s password.
    pub login_password: String,
    /// Rows in pgbench_accounts (100,000 × scale).
    pub accounts: u64,
    /// Number of wide tables (`wide_0001` …).
    pub tables: u32,
    pub postgres_version: String,
}

impl Seeded {
    /// `postgres://bench_reader:…@host:port/bench?sslmode=disable`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{READER}:{}@{}:{}/{DATABASE}?sslmode=disable",
            self.reader_password, self.host, self.port
        )
    }

    /// The wide table `describe_table` asks about (the middle one).
    pub fn described_table(&self) -> String {
        wide_name(self.tables.div_ceil(2))
    }
}

pub fn wide_name(i: u32) -> String {
    format!("wide_{i:04}")
}

/// Creates the database, runs `pgbench -i -s scale`, creates the wide tables and the reader.
pub async fn seed(pg: &Postgres, scale: u32, tables: u32) -> anyhow::Result<Seeded> {
    let started = Instant::now();
    let admin = pg.connect("postgres").await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .context("failed to create database bench")?;
    let out = Command::new(pgbench())
        .args(["-i", "-q", "-n", "--foreign-keys"])
        .args(["-s", &scale.to_string()])
        .args(["-h", pg.host(), "-p", &pg.port().to_string()])
        .args(["-U", pgmcp_tests::postgres::SUPERUSER, DATABASE])
        .env("PGPASSWORD", pg.password())
        .output()
        .context("failed to run pgbench -i")?;
    anyhow::ensure!(
        out.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let db = pg.connect(DATABASE).await?;
    // The catalog tracker, as an administrator installs it (mcp-server/src/tools/snapshot.rs):
    // discovery answers are checked against its record instead of a pass over the catalog.
    db.batch_execute(include_str!("../../../crds/src/catalog_tracker.sql"))
        .await
        .context("failed to install the catalog tracker")?;
    // Commits every 500 tables: one transaction of 10,000 would hold more locks than
    // max_locks_per_transaction allows.
    let mut ddl = String::from("BEGIN;\n");
    for i in 1..=tables {
        if i % 500 == 0 {
            ddl.push_str("COMMIT;\nBEGIN;\n");
        }
        let name = wide_name(i);
        let parent = if i > 1 {
            format!(" REFERENCES {}(id)", wide_name(i - 1))
        } else {
            String::new()
        };
        ddl.push_str(&format!(
            "CREATE TABLE {name} (id bigint PRIMARY KEY, parent_id bigint{parent}, \
             name text NOT NULL, amount numeric(12,2) CHECK (amount >= 0), \
             created_at timestamptz NOT NULL DEFAULT now(), tags text[]);\n\
             CREATE INDEX ON {name} (name);\n\
             COMMENT ON TABLE {name} IS 'wide table {i} of {tables}, for the discovery benchmark';\n\
             COMMENT ON COLUMN {name}.amount IS 'an amount in EUR';\n"
        ));
    }
    ddl.push_str("COMMIT;\n");
    db.batch_execute(&ddl)
        .await
        .context("failed to create the wide tables")?;
    db.batch_execute("ANALYZE")
        .await
        .context("ANALYZE failed")?;

    let reader_password = pgmcp_tests::postgres::random_password()?;
    db.batch_execute(&format!(
        "CREATE ROLE {READER} LOGIN PASSWORD '{reader_password}';
         GRANT CONNECT ON DATABASE {DATABASE} TO {READER};
         GRANT USAGE ON SCHEMA public TO {READER};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER};
         GRANT USAGE ON SCHEMA pgmcp TO {READER};
         GRANT SELECT ON pgmcp.catalog_changes TO {READER};"
    ))
    .await
    .context("failed to create the reader role")?;
    // The caller class: the login role reads nothing itself (NOINHERIT: its membership gives it
    // no privileges until a statement switches to the class role), the class role what the
    // reader reads.
    let login_password = pgmcp_tests::postgres::random_password()?;
    db.batch_execute(&format!(
        "CREATE ROLE {LOGIN} LOGIN NOINHERIT PASSWORD '{login_password}';
         GRANT CONNECT ON DATABASE {DATABASE} TO {LOGIN};
         CREATE ROLE {CLASS_ROLE} NOLOGIN;
         GRANT {CLASS_ROLE} TO {LOGIN};
         GRANT USAGE ON SCHEMA public TO {CLASS_ROLE};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {CLASS_ROLE};
         GRANT USAGE ON SCHEMA pgmcp TO {LOGIN};
         GRANT SELECT ON pgmcp.catalog_changes TO {LOGIN};"
    ))
    .await
    .context("failed to create the caller-class roles")?;
    let row = db
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await?;
    let accounts: i64 = row.get(0);
    eprintln!(
        "seeded: pgbench_accounts {accounts} rows, {tables} wide tables, in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(Seeded {
        host: pg.host().to_owned(),
        port: pg.port(),
        reader_password,
        login_password,
        accounts: u64::try_from(accounts)?,
        tables,
        postgres_version: pg.version().to_owned(),
    })
}

/// `$PGMCP_PGBENCH`, else the pgbench next to the harness's PostgreSQL (Debian's postgresql-15,
/// which `make deps` installs, has one; the npm builds of `PGMCP_POSTGRES_VERSION` have none),
/// else pgbench from PATH.
pub fn pgbench() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("PGMCP_PGBENCH") {
        return path.into();
    }
    match pgmcp_tests::paths::postgres_build() {
        Ok(build) if build.bindir.join("pgbench").exists() => build.bindir.join("pgbench"),
        _ => "pgbench".into(),
    }
}
