//! The seeded shop database with a read-only role, as a binding would set it up, and the
//! server binary as a process.
#![allow(dead_code)] // each test binary uses part of it

pub mod server;

use std::time::Duration;

use pgmcp_crds::config::{LimitsConfig, ScopeGrant};
use pgmcp_server::db::{ConnectOptions, Database};
use pgmcp_server::scope::Scope;
use pgmcp_server::tools::Tools;
use pgmcp_tests::{Postgres, TestDatabase};

pub const READER_PASSWORD: &str = "reader-secret-7f3a";

/// `query` arguments for `sql` alone.
pub fn q(sql: &str) -> pgmcp_server::tools::sql::QueryArgs {
    pgmcp_server::tools::sql::QueryArgs {
        sql: sql.to_owned(),
        params: Vec::new(),
        max_rows: None,
    }
}

/// `explain` arguments without parameters.
pub fn explain_args(sql: &str, analyze: bool) -> pgmcp_server::tools::sql::ExplainArgs {
    pgmcp_server::tools::sql::ExplainArgs {
        sql: sql.to_owned(),
        params: Vec::new(),
        analyze,
    }
}

pub struct Shop {
    pub db: TestDatabase,
    pub role: String,
}

/// A new database with tests/fixtures/shop.sql loaded and analyzed, and a LOGIN role that can
/// read schema public (not schema internal), like the role a binding creates.
pub async fn shop(test: &str) -> Shop {
    let db = Postgres::shared()
        .create_database(test)
        .await
        .expect("database");
    let admin = db.connect().await.expect("connect");
    admin
        .batch_execute(include_str!("../../../tests/fixtures/shop.sql"))
        .await
        .expect("load the shop fixture");
    admin.batch_execute("ANALYZE").await.expect("analyze");
    let role = format!("{}_r", db.name);
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN PASSWORD '{READER_PASSWORD}';
             GRANT CONNECT ON DATABASE \"{db}\" TO \"{role}\";
             GRANT USAGE ON SCHEMA public TO \"{role}\";
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{role}\";",
            db = db.name
        ))
        .await
        .expect("create the reader role");
    Shop { db, role }
}

pub fn public_only() -> Vec<ScopeGrant> {
    vec![ScopeGrant {
        schema: "public".into(),
        tables: vec!["*".into()],
    }]
}

impl Shop {
    pub fn connect_options(&self, grants: &[ScopeGrant], timeout: Duration) -> ConnectOptions {
        let pg = self.db.server();
        ConnectOptions {
            host: pg.host().to_owned(),
            port: pg.port(),
            dbname: self.db.name.clone(),
            user: self.role.clone(),
            password: Some(READER_PASSWORD.to_owned()),
            token: None,
            ssl_mode: "disable".into(),
            ssl_root_cert: None,
            pool_size: 4,
            statement_timeout: timeout,
            search_path: grants.iter().map(|g| g.schema.clone()).collect(),
        }
    }

    /// The tools as the reader role, with `grants` as scope.
    pub fn tools_with(&self, grants: Vec<ScopeGrant>, limits: LimitsConfig) -> Tools {
        let timeout = Duration::from_millis(limits.statement_timeout_ms);
        let db = Database::new(&self.connect_options(&grants, timeout)).expect("pool");
        Tools::new(db, Scope::new(grants), limits)
    }

    pub fn tools(&self) -> Tools {
        self.tools_with(public_only(), LimitsConfig::default())
    }

    /// A digest of every row of every table, to prove nothing changed.
    pub async fn checksum(&self) -> String {
        let admin = self.db.connect().await.expect("connect");
        let row = admin
            .query_one(
                "SELECT md5(string_agg(t, '|' ORDER BY t)) FROM (
                   SELECT 'c' || c::text AS t FROM customers c UNION ALL
                   SELECT 'p' || p::text FROM products p UNION ALL
                   SELECT 'o' || o::text FROM orders o UNION ALL
                   SELECT 'i' || i::text FROM order_items i UNION ALL
                   SELECT 'k' || k::text FROM internal.api_keys k UNION ALL
                   SELECT 'n' || n.nspname || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname IN ('public', 'internal')
                 ) all_rows",
                &[],
            )
            .await
            .expect("checksum");
        row.get(0)
    }
}
