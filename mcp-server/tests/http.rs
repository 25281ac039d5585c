//! The `pgmcp-server` binary over Streamable HTTP: health, metrics, Host/Origin checks, bad
//! input, start-up refusals, graceful shutdown. Raw HTTP, so nothing is hidden by a client.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::time::{Duration, Instant};

use common::server::{BIN, MCP_HEADERS, ServerProcess, http, open_session, refs, shop_args};
use common::shop;
use serde_json::{Value, json};

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw-test","version":"1"}}}"#;

/// The JSON-RPC message in a response body (plain JSON or the data of an SSE event).
fn message(body: &str) -> Value {
    pgmcp_tests::http::jsonrpc_message(body)
        .unwrap_or_else(|| panic!("no JSON-RPC message in: {body}"))
}

async fn call(server: &ServerProcess, headers: &[(String, String)], body: &str) -> (u16, Value) {
    let refs = refs(headers);
    let (status, _, body) = server.request("POST", "/mcp", &refs, body).await.unwrap();
    let value = if status == 200 {
        message(&body)
    } else {
        json!({ "body": body })
    };
    (status, value)
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let shop = shop("http health").await;
    let server = ServerProcess::start(&shop, &[]).await;
    assert_eq!(
        server.request("GET", "/healthz", &[], "").await.unwrap().0,
        200
    );
    assert_eq!(
        server.request("GET", "/readyz", &[], "").await.unwrap().0,
        200
    );
    let headers = open_session(&server).await;
    let (_, answer) = call(
        &server,
        &headers,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"query","arguments":{"sql":"SELECT * FROM products"}}}"#,
    )
    .await;
    assert_eq!(answer["result"]["structuredContent"]["row_count"], json!(5));
    let (status, _, metrics) = server.request("GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"pgmcp_tool_calls_total{tool="query",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"pgmcp_rows_returned_total{tool="query"} 5"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgmcp_tool_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"pgmcp_db_pool_connections{state="max"}"#),
        "{metrics}"
    );
    // One audit event per call, with the statement as sent, and never the password.
    let audit = server.audit_events();
    assert_eq!(audit.len(), 1, "{}", server.log());
    assert_eq!(audit[0]["tool"], json!("query"));
    assert_eq!(audit[0]["rows"], json!(5));
    assert_eq!(audit[0]["outcome"], json!("ok"));
    assert_eq!(audit[0]["statement"], json!("SELECT * FROM products"));
    assert_eq!(audit[0]["statement_mode"], json!("full"));
    assert!(
        !server.log().contains(common::READER_PASSWORD),
        "the password is never logged"
    );
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused() {
    let shop = shop("http host origin").await;
    let server = ServerProcess::start(
        &shop,
        &[
            "--allowed-host",
            "mcp.example.com",
            "--allowed-origin",
            "https://app.example.com",
        ],
    )
    .await;
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut headers = MCP_HEADERS.to_vec();
        headers.extend_from_slice(extra);
        headers
    };
    // Expected status: 200 accepted, 403 refused.
    let cases: [(&[(&str, &str)], u16); 6] = [
        (&[("Host", "evil.example.com")], 403),
        (&[("Host", "mcp.example.com")], 200),
        (&[("Origin", "http://evil.example.com")], 403),
        (&[("Origin", "https://app.example.com")], 200),
        (&[("Origin", "http://localhost:3000")], 200),
        (&[], 200),
    ];
    for (extra, expected) in cases {
        let (status, head, _) = server
            .request("POST", "/mcp", &with(extra), INITIALIZE)
            .await
            .unwrap();
        assert_eq!(status, expected, "{extra:?}: {head}");
    }
}

#[tokio::test]
async fn malformed_requests_get_protocol_errors_and_the_server_keeps_serving() {
    let shop = shop("http malformed").await;
    let server = ServerProcess::start(&shop, &[]).await;
    let headers = open_session(&server).await;
    // Not JSON, not JSON-RPC, wrong shapes: refused without a crash.
    for body in [
        "{",
        "[]",
        "42",
        r#"{"jsonrpc":"2.0"}"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        "\u{0}\u{1}",
    ] {
        let (status, answer) = call(&server, &headers, body).await;
        assert!(
            status >= 400 || answer.get("error").is_some(),
            "{body:?} -> {status} {answer}"
        );
    }
    // What the specification names: 400 with a parse error for what is not JSON (or not
    // UTF-8, or nested deeper than anyone writes), 400 with an invalid-request error for a
    // batch in a revision without batches.
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    for (body, code) in [
        ("{".as_bytes(), -32700),
        (b"\xff\xfe{}".as_slice(), -32700),
        (deep.as_bytes(), -32700),
        (
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.as_slice(),
            -32600,
        ),
    ] {
        let refs = refs(&headers);
        let (status, _, answer) = server
            .request_bytes("POST", "/mcp", &refs, body)
            .await
            .unwrap();
        assert_eq!(status, 400, "{answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"]["code"], json!(code), "{answer}");
    }
    let (_, unknown) = call(&server, &headers, r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"drop_database","arguments":{}}}"#).await;
    assert!(
        unknown["error"]["code"].is_i64(),
        "an unknown tool is a protocol error: {unknown}"
    );
    let (_, wrong) = call(&server, &headers, r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"query","arguments":{"sql":42}}}"#).await;
    // MCP 2025-11-25: argument validation errors are tool errors, so the model can correct itself.
    assert_eq!(wrong["result"]["isError"], json!(true), "{wrong}");
    assert!(
        wrong["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("invalid type: integer `42`, expected a string"),
        "{wrong}"
    );
    let (_, missing) = call(&server, &headers, r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"describe_table","arguments":{}}}"#).await;
    assert!(
        missing["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("missing field `table`"),
        "{missing}"
    );
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"query","arguments":{{"sql":"SELECT '{}'"}}}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, answer) = call(&server, &headers, &huge).await;
    assert_eq!(status, 413, "bodies over 1 MiB are refused");
    assert!(
        answer["body"].as_str().unwrap().contains("1048576 bytes"),
        "the answer names the limit: {answer}"
    );
    let (_, refused) = call(&server, &headers, r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"query","arguments":{"sql":"DELETE FROM orders"}}}"#).await;
    assert_eq!(
        refused["result"]["isError"],
        json!(true),
        "a forbidden statement is a tool error: {refused}"
    );
    let text = refused["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("refused:"), "{text}");
    // Still serving.
    let (_, ok) = call(&server, &headers, r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"query","arguments":{"sql":"SELECT count(*) AS n FROM orders"}}}"#).await;
    assert_eq!(
        ok["result"]["structuredContent"]["rows"],
        json!([[5]]),
        "{ok}"
    );
    assert_eq!(
        server.request("GET", "/healthz", &[], "").await.unwrap().0,
        200
    );
}

/// Runs the binary to completion with `args`, returning (success, stderr).
fn run_to_exit(args: &[String]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("run pgmcp-server");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn unsafe_roles_and_unauthenticated_public_listeners_are_refused_at_start() {
    let shop = shop("http refusals").await;
    let dir = tempfile::tempdir().unwrap();
    let pg = shop.db.server();
    // The superuser can write: refused unless explicitly allowed.
    let password_file = dir.path().join("admin-password");
    std::fs::write(&password_file, pg.password()).unwrap();
    let superuser = vec![
        "--database-url".to_owned(),
        format!(
            "postgres://postgres@{}:{}/{}?sslmode=disable",
            pg.host(),
            pg.port(),
            shop.db.name
        ),
        "--password-file".to_owned(),
        password_file.display().to_string(),
        "--listen".to_owned(),
        "127.0.0.1:1".to_owned(),
    ];
    let (ok, stderr) = run_to_exit(&superuser);
    assert!(!ok);
    assert!(stderr.contains("refusing to serve"), "{stderr}");
    assert!(stderr.contains("is a superuser"), "{stderr}");
    assert!(
        !stderr.contains(pg.password()),
        "the password is not echoed"
    );

    // A reader that was also granted INSERT is refused too.
    let admin = shop.db.connect().await.unwrap();
    admin
        .batch_execute(&format!("GRANT INSERT ON orders TO \"{}\"", shop.role))
        .await
        .unwrap();
    let mut reader = shop_args(&shop, dir.path());
    reader.extend(["--listen".to_owned(), "127.0.0.1:1".to_owned()]);
    let (ok, stderr) = run_to_exit(&reader);
    assert!(!ok);
    assert!(
        stderr.contains("can write to or owns public.orders"),
        "{stderr}"
    );
    admin
        .batch_execute(&format!("REVOKE INSERT ON orders FROM \"{}\"", shop.role))
        .await
        .unwrap();

    // No caller authentication on a non-loopback address needs the explicit flag.
    let mut public = shop_args(&shop, dir.path());
    public.extend(["--listen".to_owned(), "0.0.0.0:1".to_owned()]);
    let (ok, stderr) = run_to_exit(&public);
    assert!(!ok);
    assert!(
        stderr.contains("--insecure-allow-unauthenticated"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_server_gracefully() {
    let shop = shop("http sigterm").await;
    let dir = tempfile::tempdir().unwrap();
    let port = pgmcp_tests::paths::free_port().unwrap();
    let mut args = shop_args(&shop, dir.path());
    args.extend(["--listen".to_owned(), format!("127.0.0.1:{port}")]);
    let mut child = std::process::Command::new(BIN)
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http(port, "GET", "/readyz", &[], "").await, Ok((200, _, _))) {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop within 10s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
}

/// `_meta` every 2026-07-28 request carries instead of a session.
fn stateless_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

#[tokio::test]
async fn the_stateless_2026_07_28_revision_works_without_initialize_or_sessions() {
    let shop = shop("http stateless").await;
    let server = ServerProcess::start(&shop, &[]).await;
    let headers = |method: &'static str, name: Option<&'static str>| {
        let mut h = MCP_HEADERS.to_vec();
        h.push(("MCP-Protocol-Version", "2026-07-28"));
        h.push(("Mcp-Method", method));
        if let Some(name) = name {
            h.push(("Mcp-Name", name));
        }
        h
    };
    let discover = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": stateless_meta()}});
    let (status, head, body) = server
        .request(
            "POST",
            "/mcp",
            &headers("server/discover", None),
            &discover.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    let discovered = message(&body);
    assert!(discovered["result"].is_object(), "{discovered}");
    assert!(
        !head.to_ascii_lowercase().contains("mcp-session-id"),
        "no session in the stateless revision"
    );

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "query", "arguments": {"sql": "SELECT count(*) AS n FROM customers"}, "_meta": stateless_meta()}});
    let (status, head, body) = server
        .request(
            "POST",
            "/mcp",
            &headers("tools/call", Some("query")),
            &call.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    assert_eq!(
        message(&body)["result"]["structuredContent"]["rows"],
        json!([[5]]),
        "{body}"
    );

    // The routing headers must match the body.
    let (status, _, body) = server
        .request(
            "POST",
            "/mcp",
            &headers("tools/list", None),
            &call.to_string(),
        )
        .await
        .unwrap();
    assert!(
        (400..500).contains(&status),
        "Mcp-Method disagreeing with the body is refused: {status} {body}"
    );
}

/// A result with its timing and its frame's boundary removed, for comparing two answers to the
/// same call.
fn without_timing(mut result: Value) -> Value {
    if let Some(structured) = result["structuredContent"].as_object_mut() {
        structured.remove("elapsed_ms");
    }
    if let Some(text) = result["content"][0]["text"].as_str() {
        // Each answer draws its own boundary: 32 hex digits after the prefix.
        let mut text = text.to_owned();
        let prefix = "untrusted-data-";
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at + prefix.len();
            text.replace_range(start..start + 32, "BOUNDARY");
            from = start;
        }
        let (before, rest) = text
            .split_once("\n{")
            .map_or((text.as_str(), ""), |(b, r)| (b, r));
        let parsed = match rest.rsplit_once("}\n") {
            Some((json, after)) => match serde_json::from_str::<Value>(&format!("{{{json}}}")) {
                Ok(mut parsed) => {
                    if let Some(object) = parsed.as_object_mut() {
                        object.remove("elapsed_ms");
                    }
                    json!([before, parsed, after])
                }
                Err(_) => json!(text),
            },
            None => match serde_json::from_str::<Value>(&text) {
                Ok(mut parsed) => {
                    if let Some(object) = parsed.as_object_mut() {
                        object.remove("elapsed_ms");
                    }
                    parsed
                }
                Err(_) => json!(text),
            },
        };
        result["content"][0]["text"] = parsed;
    }
    result
}

#[tokio::test]
async fn plain_tool_calls_are_answered_directly_with_what_rmcp_would_answer() {
    let shop = shop("http direct").await;
    let server = ServerProcess::start(&shop, &[]).await;
    let headers = open_session(&server).await;
    let refs = refs(&headers);
    let post = |body: Value| {
        let refs = refs.clone();
        let server = &server;
        async move {
            let (status, head, body) = server
                .request("POST", "/mcp", &refs, &body.to_string())
                .await
                .unwrap();
            assert_eq!(status, 200, "{head}\n{body}");
            let content_type = pgmcp_tests::http::header(&head, "content-type").unwrap();
            (content_type, message(&body))
        }
    };
    for arguments in [
        json!({"sql": "SELECT id, name FROM customers ORDER BY id", "max_rows": 2}),
        json!({"sql": "DELETE FROM customers"}),
        json!({"sql": "SELECT * FROM missing_table"}),
    ] {
        // Plain: answered by the server itself, as one JSON body.
        let plain = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "query", "arguments": arguments}});
        let (direct_type, direct) = post(plain).await;
        assert_eq!(direct_type, "application/json");
        // With a progress token in _meta: rmcp's path, answered as an SSE stream.
        let with_meta = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "query", "arguments": arguments, "_meta": {"progressToken": 1}}});
        let (rmcp_type, through_rmcp) = post(with_meta).await;
        assert_eq!(rmcp_type, "text/event-stream");
        assert_eq!(direct["id"], json!(7));
        assert!(direct["result"].get("resultType").is_none(), "{direct}");
        assert_eq!(
            without_timing(direct["result"].clone()),
            without_timing(through_rmcp["result"].clone()),
            "{arguments}"
        );
    }
    let (_, truncated) = post(json!({"jsonrpc": "2.0", "id": "a", "method": "tools/call",
        "params": {"name": "query", "arguments": {"sql": "SELECT id FROM customers", "max_rows": 2}}}))
    .await;
    assert_eq!(truncated["id"], json!("a"));
    assert_eq!(
        truncated["result"]["structuredContent"]["rows"],
        json!([[1], [2]])
    );
    assert_eq!(
        truncated["result"]["structuredContent"]["truncated"],
        json!(true)
    );
}

#[tokio::test]
async fn a_terminated_session_gets_404() {
    let shop = shop("http session end").await;
    let server = ServerProcess::start(&shop, &[]).await;
    let headers = open_session(&server).await;
    let refs = refs(&headers);
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let plain_call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"list_tables","arguments":{}}}"#;
    for body in [list, plain_call] {
        let (status, _, _) = server.request("POST", "/mcp", &refs, body).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }

    let (status, head, body) = server.request("DELETE", "/mcp", &refs, "").await.unwrap();
    assert!((200..300).contains(&status), "{head}\n{body}");
    // Every way in: rmcp's methods, a plain tool call, a notification, and the DELETE again.
    for (method, body) in [
        ("POST", list),
        ("POST", plain_call),
        (
            "POST",
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#,
        ),
        ("DELETE", ""),
    ] {
        let (status, _, answer) = server.request(method, "/mcp", &refs, body).await.unwrap();
        assert_eq!(status, 404, "{method} {body} -> {answer}");
    }
    // A new session works.
    let fresh = open_session(&server).await;
    let (status, answer) = call(&server, &fresh, list).await;
    assert_eq!(status, 200, "{answer}");
}
