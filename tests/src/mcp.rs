//! A minimal MCP client over Streamable HTTP (raw requests, see [`crate::http`]): enough for the
//! harness to check that a server it started answers like any MCP client expects. The real
//! third-party clients are exercised in the interop tests.

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::http;

const VERSION: &str = "2025-11-25";

/// An initialized session with the server on 127.0.0.1:`port`.
#[derive(Debug)]
pub struct Session {
    port: u16,
    id: String,
    next: u64,
}

impl Session {
    /// `initialize` + `notifications/initialized`.
    pub async fn open(port: u16) -> anyhow::Result<Self> {
        let init = json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "pgmcp-harness", "version": "1"}}
        });
        let (status, head, body) = http::request(
            port,
            "POST",
            "/mcp",
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
            ],
            &init.to_string(),
        )
        .await?;
        anyhow::ensure!(status == 200, "initialize answered {status}: {body}");
        let id =
            http::header(&head, "mcp-session-id").context("the server sent no Mcp-Session-Id")?;
        let session = Self { port, id, next: 2 };
        session
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(session)
    }

    async fn post(&self, message: &Value) -> anyhow::Result<String> {
        let (status, _, body) = http::request(
            self.port,
            "POST",
            "/mcp",
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
                ("Mcp-Session-Id", self.id.as_str()),
                ("MCP-Protocol-Version", VERSION),
            ],
            &message.to_string(),
        )
        .await?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "the server answered {status}: {body}"
        );
        Ok(body)
    }

    /// One JSON-RPC request; returns its `result`.
    pub async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next;
        self.next += 1;
        let body = self
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        let message = http::jsonrpc_message(&body)
            .with_context(|| format!("{method} gave no JSON-RPC answer: {body}"))?;
        message
            .get("result")
            .cloned()
            .with_context(|| format!("{method} failed: {message}"))
    }

    /// Names of the server's tools.
    pub async fn tool_names(&mut self) -> anyhow::Result<Vec<String>> {
        let result = self.request("tools/list", json!({})).await?;
        Ok(result["tools"]
            .as_array()
            .context("tools/list gave no tools")?
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect())
    }
}

/// The names of the tools in an answer of [`run_python_client`], in the order listed.
pub fn listed_tool_names(answer: &Value) -> Vec<&str> {
    answer["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default()
}

/// Runs tests/interop/mcp_client.py (the official MCP Python SDK, from `make mcp-clients`) with
/// `args`, feeding `script` on stdin, with `env` added to its environment.
pub fn run_python_client(
    args: &[String],
    script: &Value,
    env: &[(&str, &str)],
) -> std::process::Output {
    let python = crate::paths::cache_dir().join("venv/mcp/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `make mcp-clients` (tests/scripts/install-mcp-clients.sh)",
        python.display()
    );
    let client = crate::paths::workspace_root().join("tests/interop/mcp_client.py");
    let mut child = std::process::Command::new(&python)
        .arg(&client)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python client");
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, script.to_string().as_bytes()).expect("script");
    }
    child.wait_with_output().expect("python client output")
}
