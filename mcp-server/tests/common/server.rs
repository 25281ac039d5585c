//! The `pgmcp-server` binary as a process, and raw HTTP against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgmcp_tests::daemon::{Daemon, Spec};

use super::{READER_PASSWORD, Shop};

pub const BIN: &str = env!("CARGO_BIN_EXE_pgmcp-server");

/// A running server on a free loopback port; stopped (SIGTERM) when dropped.
pub struct ServerProcess {
    pub port: u16,
    pub dir: tempfile::TempDir,
    daemon: Daemon,
}

/// The flags that point the server at `shop` as its reader role (password from a file).
pub fn shop_args(shop: &Shop, dir: &Path) -> Vec<String> {
    shop_args_with(shop, dir, "sslmode=disable")
}

/// [`shop_args`] with `query` as the database URL's query string.
pub fn shop_args_with(shop: &Shop, dir: &Path, query: &str) -> Vec<String> {
    let pg = shop.db.server();
    let password_file = dir.join("password");
    std::fs::write(&password_file, READER_PASSWORD).expect("password file");
    vec![
        "--database-url".into(),
        format!(
            "postgres://{}@{}:{}/{}?{query}",
            shop.role,
            pg.host(),
            pg.port(),
            shop.db.name
        ),
        "--password-file".into(),
        password_file.display().to_string(),
        "--grant".into(),
        "public".into(),
    ]
}

impl ServerProcess {
    /// Starts the server with `shop_args` plus `extra`, and waits for /readyz.
    pub async fn start(shop: &Shop, extra: &[&str]) -> Self {
        Self::start_with_url(shop, "sslmode=disable", extra).await
    }

    /// Like [`ServerProcess::start`], with `query` as the database URL's query string.
    pub async fn start_with_url(shop: &Shop, query: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = pgmcp_tests::paths::free_port().expect("port");
        let mut args = shop_args_with(shop, dir.path(), query);
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let daemon =
            Daemon::spawn(Spec::new("pgmcp-server", BIN, dir.path().join("server.log")).args(args))
                .expect("start pgmcp-server");
        let mut server = Self { port, dir, daemon };
        if let Err(err) =
            pgmcp_tests::http::wait_ready(port, &mut server.daemon, Duration::from_secs(30)).await
        {
            panic!("{err:#}\n{}", server.log());
        }
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, String, String)> {
        http(self.port, method, path, headers, body).await
    }
}

pub use pgmcp_tests::http::request as http;

/// JSON-RPC POST headers of a 2025-11-25 client.
pub const MCP_HEADERS: [(&str, &str); 2] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
];

/// Paths of the third-party clients installed by tests/scripts/install-mcp-clients.sh.
pub struct Clients {
    pub python: PathBuf,
    pub client: PathBuf,
    pub inspector: PathBuf,
    pub conformance: PathBuf,
}

pub fn clients() -> Clients {
    let root = pgmcp_tests::paths::workspace_root();
    let cache = pgmcp_tests::paths::cache_dir();
    let clients = Clients {
        python: cache.join("venv/mcp/bin/python"),
        client: root.join("tests/interop/mcp_client.py"),
        inspector: cache.join("node/node_modules/.bin/mcp-inspector"),
        conformance: root.join("tests/interop/run-conformance.sh"),
    };
    for path in [&clients.python, &clients.inspector] {
        assert!(
            path.exists(),
            "{} missing: run `make mcp-clients` (tests/scripts/install-mcp-clients.sh)",
            path.display()
        );
    }
    clients
}
