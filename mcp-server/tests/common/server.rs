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
        let mut args = shop_args_with(shop, dir.path(), query);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::start_args(dir, args, &[]).await
    }

    /// Starts `pgmcp-server ARGS --listen 127.0.0.1:<free port>` with `env` added to its
    /// environment (through env(1): the test process's own environment is left alone), and
    /// waits for /readyz.
    pub async fn start_args(
        dir: tempfile::TempDir,
        args: Vec<String>,
        env: &[(String, String)],
    ) -> Self {
        let mut server = Self::spawn(dir, args, env);
        if let Err(err) =
            pgmcp_tests::http::wait_ready(server.port, &mut server.daemon, Duration::from_secs(30))
                .await
        {
            panic!("{err:#}\n{}", server.log());
        }
        server
    }

    /// Like [`ServerProcess::start_args`], but waits only for /healthz: the server is up,
    /// ready or not.
    pub async fn start_args_live(
        dir: tempfile::TempDir,
        args: Vec<String>,
        env: &[(String, String)],
    ) -> Self {
        let mut server = Self::spawn(dir, args, env);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !matches!(
            server.request("GET", "/healthz", &[], "").await,
            Ok((200, _, _))
        ) {
            if server.exited() || std::time::Instant::now() > deadline {
                panic!("pgmcp-server did not start:\n{}", server.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn spawn(dir: tempfile::TempDir, args: Vec<String>, env: &[(String, String)]) -> Self {
        let port = pgmcp_tests::paths::free_port().expect("port");
        let mut command: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        command.push(BIN.to_owned());
        command.extend(args);
        command.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        let daemon = Daemon::spawn(
            Spec::new("pgmcp-server", "env", dir.path().join("server.log")).args(command),
        )
        .expect("start pgmcp-server");
        Self { port, dir, daemon }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.daemon.exited()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The audit events the server wrote (JSON lines of type `pgmcp.audit`), in order.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|event| event["type"] == "pgmcp.audit")
            .collect()
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

    /// [`ServerProcess::request`] with a body that need not be UTF-8.
    pub async fn request_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, String, String)> {
        pgmcp_tests::http::request_bytes(self.port, method, path, headers, body).await
    }
}

pub use pgmcp_tests::http::request as http;

/// Owned header pairs as the `&[(&str, &str)]` requests take.
pub fn refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Opens a 2025-11-25 session with `extra` headers on every request (e.g. `Authorization`) and
/// calls `tool`: the `tools/call` result, or the status and head of the first refused request.
pub async fn call_tool(
    port: u16,
    extra: &[(&str, &str)],
    tool: &str,
    arguments: serde_json::Value,
) -> Result<serde_json::Value, (u16, String)> {
    let mut headers: Vec<(String, String)> = MCP_HEADERS
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let post = |headers: Vec<(String, String)>, body: String| async move {
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        http(port, "POST", "/mcp", &refs, &body)
            .await
            .expect("request")
    };
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw-test","version":"1"}}}"#;
    let (status, head, _) = post(headers.clone(), initialize.to_owned()).await;
    if status != 200 {
        return Err((status, head));
    }
    let session = pgmcp_tests::http::header(&head, "mcp-session-id").expect("Mcp-Session-Id");
    headers.push(("Mcp-Session-Id".into(), session));
    headers.push(("MCP-Protocol-Version".into(), "2025-11-25".into()));
    let (status, head, _) = post(
        headers.clone(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
    )
    .await;
    if status != 202 {
        return Err((status, head));
    }
    let call = serde_json::json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    });
    let (status, head, body) = post(headers, call.to_string()).await;
    if status != 200 {
        return Err((status, head));
    }
    let message = pgmcp_tests::http::jsonrpc_message(&body).expect("a JSON-RPC answer");
    Ok(message["result"].clone())
}

/// JSON-RPC POST headers of a 2025-11-25 client.
pub const MCP_HEADERS: [(&str, &str); 2] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
];

/// Paths of the third-party clients installed by tests/scripts/install-mcp-clients.sh (the
/// conformance suite through tests/scripts/install-conformance.sh).
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
        conformance: cache.join("conformance/bin/conformance"),
    };
    for path in [&clients.python, &clients.inspector, &clients.conformance] {
        assert!(
            path.exists(),
            "{} missing: run `make mcp-clients` (tests/scripts/install-mcp-clients.sh)",
            path.display()
        );
    }
    clients
}

/// Initializes a 2025-11-25 session on `server` and returns the headers later requests need.
pub async fn open_session(server: &ServerProcess) -> Vec<(String, String)> {
    let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "1"}}});
    let (status, head, body) = server
        .request("POST", "/mcp", &MCP_HEADERS, &initialize.to_string())
        .await
        .expect("initialize");
    assert_eq!(status, 200, "{head}\n{body}");
    let answer = pgmcp_tests::http::jsonrpc_message(&body).expect("an answer to initialize");
    assert_eq!(answer["result"]["serverInfo"]["name"], "pgmcp-server");
    let session = pgmcp_tests::http::header(&head, "mcp-session-id")
        .unwrap_or_else(|| panic!("no Mcp-Session-Id in:\n{head}"));
    let mut headers: Vec<(String, String)> = MCP_HEADERS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    headers.push(("Mcp-Session-Id".into(), session));
    headers.push(("MCP-Protocol-Version".into(), "2025-11-25".into()));
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, _, _) = server
        .request("POST", "/mcp", &refs(&headers), initialized)
        .await
        .expect("notifications/initialized");
    assert_eq!(status, 202);
    headers
}
