//! TLS to PostgreSQL in every sslmode, against the harness server (TLS with its own CA).
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::time::Duration;

use common::server::ServerProcess;
use common::{public_only, shop};
use pgmcp_crds::config::LimitsConfig;
use pgmcp_server::db::Database;
use pgmcp_server::scope::Scope;
use pgmcp_server::tools::Call;
use pgmcp_server::tools::Tools;
use pgmcp_server::tools::catalog::{self, ServerInfoArgs};

async fn connect(shop: &common::Shop, mode: &str, host: &str, ca: bool) -> Result<bool, String> {
    let mut options = shop.connect_options(&public_only(), Duration::from_secs(5));
    options.ssl_mode = mode.to_owned();
    options.host = host.to_owned();
    options.ssl_root_cert = ca.then(|| shop.db.server().ca_cert().to_path_buf());
    let db = Database::new(&options).map_err(|e| e.to_string())?;
    let tools = Tools::new(db, Scope::new(public_only()), LimitsConfig::default());
    let info = catalog::server_info(&tools, &Call::default(), ServerInfoArgs::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(info.tls)
}

#[tokio::test]
async fn every_sslmode_behaves_like_libpq() {
    let shop = shop("tls modes").await;
    assert_eq!(
        connect(&shop, "disable", "127.0.0.1", false).await,
        Ok(false)
    );
    assert_eq!(connect(&shop, "prefer", "127.0.0.1", false).await, Ok(true));
    assert_eq!(
        connect(&shop, "require", "127.0.0.1", false).await,
        Ok(true),
        "require does not verify"
    );
    assert_eq!(
        connect(&shop, "verify-full", "127.0.0.1", true).await,
        Ok(true)
    );
    assert_eq!(
        connect(&shop, "verify-full", "localhost", true).await,
        Ok(true)
    );
    let untrusted = connect(&shop, "verify-full", "127.0.0.1", false)
        .await
        .unwrap_err();
    assert!(untrusted.contains("unavailable"), "{untrusted}");
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "the reason is named: {untrusted}"
    );
}

#[tokio::test]
async fn the_server_binary_verifies_the_database_certificate_from_the_url() {
    let shop = shop("tls binary").await;
    let ca = shop.db.server().ca_cert().display().to_string();
    let server =
        ServerProcess::start_with_url(&shop, &format!("sslmode=verify-full&sslrootcert={ca}"), &[])
            .await;
    let (status, _, _) = server.request("GET", "/readyz", &[], "").await.unwrap();
    assert_eq!(status, 200, "{}", server.log());
    // PostgreSQL's view: every connection of the server's role is encrypted.
    let admin = shop.db.connect().await.unwrap();
    let row = admin
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&shop.role],
        )
        .await
        .unwrap();
    let (connections, all_tls): (i64, bool) = (row.get(0), row.get(1));
    assert!(connections > 0, "the server holds pooled connections");
    assert!(all_tls, "the server's connections use TLS");
}
