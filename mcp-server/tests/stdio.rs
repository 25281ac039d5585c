//! The `pgmcp-server --stdio` process with raw JSON-RPC lines: many calls in flight on one
//! process, each answered once, requests before `initialize` left to the session rules, and a
//! clean exit when stdin closes with calls still running. Over pipes (how Python and Rust
//! clients start servers), a socket pair (how Node's do), and stdin from a file.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use common::server::{BIN, shop_args};
use common::shop;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};

fn line(value: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).unwrap();
    line.push(b'\n');
    line
}

fn server(shop: &common::Shop, dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .arg("--stdio")
        .args(shop_args(shop, dir))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn concurrent_calls_are_each_answered_once_and_stdin_eof_ends_the_process() {
    let shop = shop("stdio raw").await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = server(&shop, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    converse(stdin, stdout, child).await;
}

/// Node's `child_process` (and so the MCP Inspector, VS Code, Claude Desktop) gives a child
/// one end of a socket pair as stdin and as stdout.
#[tokio::test]
async fn a_socket_pair_as_stdin_and_stdout_serves_the_same() {
    let shop = shop("stdio socket").await;
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let child = server(&shop, dir.path())
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(
            theirs.try_clone().unwrap(),
        )))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .spawn()
        .unwrap();
    ours.set_nonblocking(true).unwrap();
    let (stdout, stdin) = tokio::net::UnixStream::from_std(ours).unwrap().into_split();
    converse(stdin, stdout, child).await;
}

/// `pgmcp-server --stdio < requests.jsonl`: a file cannot be polled, and is read through a
/// blocking thread; every request is still answered and the process exits at its end.
#[tokio::test]
async fn requests_from_a_file_are_all_answered() {
    let shop = shop("stdio file").await;
    let dir = tempfile::tempdir().unwrap();
    let mut requests = line(
        &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "file", "version": "1"}}}),
    );
    requests.extend(line(
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    ));
    for i in 1..=5 {
        requests.extend(line(
            &json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": "query", "arguments": {"sql": format!("SELECT {i} AS n")}}}),
        ));
    }
    let path = dir.path().join("requests.jsonl");
    std::fs::write(&path, requests).unwrap();
    let output = server(&shop, dir.path())
        .stdin(std::fs::File::open(&path).unwrap())
        .stderr(Stdio::piped())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the process ends at the end of its input")
        .unwrap();
    assert!(output.status.success(), "{}", output.status);
    let answers: HashMap<String, Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|text| {
            let answer: Value = serde_json::from_str(text).unwrap();
            (answer["id"].to_string(), answer)
        })
        .collect();
    for i in 1..=5 {
        assert_eq!(
            answers[&i.to_string()]["result"]["structuredContent"]["rows"],
            json!([[i]]),
            "{answers:?}"
        );
    }
    // Stdout carries MCP only: the audit events go to stderr, one per call.
    assert!(
        answers.values().all(|a| a["jsonrpc"] == "2.0"),
        "{answers:?}"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    let audit: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|event| event["type"] == "pgmcp.audit")
        .collect();
    let mut statements: Vec<&str> = audit
        .iter()
        .map(|event| event["statement"].as_str().unwrap())
        .collect();
    statements.sort_unstable();
    assert_eq!(
        statements,
        (1..=5)
            .map(|i| format!("SELECT {i} AS n"))
            .collect::<Vec<_>>(),
        "{stderr}"
    );
}

/// Initializes a session on a running `--stdio` server, sends forty calls and `tools/list` at
/// once, closes stdin, and checks every answer and the exit status.
async fn converse(
    mut stdin: impl AsyncWrite + Unpin,
    stdout: impl AsyncRead + Unpin,
    mut child: tokio::process::Child,
) {
    let mut answers = BufReader::new(stdout).lines();

    // Before initialize: rmcp's session rules apply (the call is not run by the fast path).
    stdin
        .write_all(&line(
            &json!({"jsonrpc": "2.0", "id": "early", "method": "tools/call",
            "params": {"name": "query", "arguments": {"sql": "SELECT 1"}}}),
        ))
        .await
        .unwrap();
    stdin
        .write_all(&line(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw-stdio", "version": "1"}}}),
        ))
        .await
        .unwrap();
    let mut by_id: HashMap<String, Value> = HashMap::new();
    while !by_id.contains_key("0") {
        let text = tokio::time::timeout(Duration::from_secs(20), answers.next_line())
            .await
            .expect("an answer within 20 s")
            .unwrap()
            .expect("stdout open");
        let answer: Value = serde_json::from_str(&text).unwrap();
        by_id.insert(
            answer["id"].to_string().trim_matches('"').to_owned(),
            answer,
        );
    }
    assert_eq!(by_id["0"]["result"]["protocolVersion"], json!("2025-11-25"));
    stdin
        .write_all(&line(
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        ))
        .await
        .unwrap();

    // Forty calls at once, some slow, some refused; then stdin closes at once.
    let mut batch = Vec::new();
    for i in 1..=40 {
        let sql = match i % 4 {
            0 => "SELECT pg_catalog.count(*) FROM generate_series(1, 200000)".to_owned(),
            1 => "DELETE FROM customers".to_owned(),
            _ => format!("SELECT {i} AS n"),
        };
        batch.extend(line(
            &json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": "query", "arguments": {"sql": sql}}}),
        ));
    }
    batch.extend(line(
        &json!({"jsonrpc": "2.0", "id": 41, "method": "tools/list", "params": {}}),
    ));
    stdin.write_all(&batch).await.unwrap();
    stdin.shutdown().await.unwrap();
    drop(stdin);

    let mut seen = 0;
    while let Ok(Some(text)) = answers.next_line().await {
        let answer: Value = serde_json::from_str(&text).unwrap();
        let id = answer["id"].to_string().trim_matches('"').to_owned();
        assert!(
            by_id.insert(id.clone(), answer).is_none(),
            "answered twice: {id}"
        );
        seen += 1;
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the process ends after stdin closes")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(seen >= 41, "{seen} answers");
    for i in 1..=40 {
        let answer = &by_id[&i.to_string()];
        let result = &answer["result"];
        match i % 4 {
            0 => assert_eq!(
                result["structuredContent"]["rows"],
                json!([[200000]]),
                "{answer}"
            ),
            1 => {
                assert_eq!(result["isError"], json!(true), "{answer}");
                assert!(result.get("resultType").is_none(), "{answer}");
            }
            _ => assert_eq!(
                result["structuredContent"]["rows"],
                json!([[i]]),
                "{answer}"
            ),
        }
    }
    assert!(
        by_id["41"]["result"]["tools"].as_array().unwrap().len() >= 9,
        "{}",
        by_id["41"]
    );
    assert!(
        by_id.contains_key("early"),
        "the early call was answered too"
    );
}
