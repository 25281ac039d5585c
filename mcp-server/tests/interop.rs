//! Third-party MCP clients against the `pgmcp-server` binary: the official Python SDK over
//! Streamable HTTP and stdio, the MCP Inspector CLI, the MCP conformance suite, and two server
//! replicas behind one round-robin address.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::server::{BIN, ServerProcess, clients, shop_args};
use common::shop;
use pgmcp_tests::mcp::run_python_client;
use serde_json::{Value, json};

const TOOLS: [&str; 9] = [
    "describe_table",
    "explain",
    "list_databases",
    "list_relationships",
    "list_schemas",
    "list_tables",
    "query",
    "search_objects",
    "server_info",
];

/// One call of every tool.
fn every_tool_script() -> Value {
    json!({"calls": [
        {"tool": "list_databases", "arguments": {}},
        {"tool": "list_schemas", "arguments": {}},
        {"tool": "list_tables", "arguments": {}},
        {"tool": "describe_table", "arguments": {"table": "customers"}},
        {"tool": "list_relationships", "arguments": {"table": "orders"}},
        {"tool": "search_objects", "arguments": {"pattern": "customer"}},
        {"tool": "query", "arguments": {"sql": "SELECT count(*) AS n FROM products WHERE price > $1", "params": [40]}},
        {"tool": "explain", "arguments": {"sql": "SELECT * FROM orders"}},
        {"tool": "server_info", "arguments": {}},
        {"tool": "query", "arguments": {"sql": "UPDATE products SET price = 0"}},
    ]})
}

/// Runs the Python SDK client with `args`, feeding `script`; returns its JSON document.
fn python_client(args: &[String], script: &Value, env: &[(&str, &str)]) -> Value {
    let out = run_python_client(args, script, env);
    assert!(
        out.status.success(),
        "mcp_client.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

fn assert_every_tool_answered(doc: &Value) {
    let mut names: Vec<&str> = doc["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, TOOLS);
    for tool in doc["tools"].as_array().unwrap() {
        assert_eq!(tool["annotations"]["readOnlyHint"], json!(true), "{tool}");
        assert!(tool["description"].as_str().unwrap().len() > 40, "{tool}");
    }
    let results = doc["results"].as_array().unwrap();
    for result in &results[..9] {
        assert_eq!(result["isError"], json!(false), "{result}");
    }
    assert_eq!(
        results[2]["structuredContent"]["row_count"],
        json!(5),
        "list_tables"
    );
    assert_eq!(
        results[3]["structuredContent"]["primary_key"],
        json!(["id"]),
        "describe_table"
    );
    assert_eq!(
        results[6]["structuredContent"]["rows"],
        json!([[3]]),
        "query with a parameter"
    );
    assert!(
        results[7]["structuredContent"]["plan"][0]["Plan"].is_object(),
        "explain"
    );
    assert_eq!(
        results[8]["structuredContent"]["read_only"],
        json!(true),
        "server_info"
    );
    assert_eq!(results[9]["isError"], json!(true), "UPDATE is refused");
    assert!(
        results[9]["text"].as_str().unwrap().contains("refused"),
        "{}",
        results[9]
    );
}

#[tokio::test]
async fn python_sdk_calls_every_tool_over_streamable_http() {
    let shop = shop("python http").await;
    let server = ServerProcess::start(&shop, &[]).await;
    let doc = python_client(&["--url".into(), server.url()], &every_tool_script(), &[]);
    assert_eq!(doc["server"]["name"], json!("pgmcp-server"));
    assert_eq!(doc["server"]["protocolVersion"], json!("2025-11-25"));
    assert!(
        doc["sessionId"].is_string(),
        "2025-11-25 clients get a session id"
    );
    assert_every_tool_answered(&doc);
}

#[tokio::test]
async fn python_sdk_calls_every_tool_over_stdio() {
    let shop = shop("python stdio").await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--stdio".to_owned(),
        "--".to_owned(),
        BIN.to_owned(),
        "--stdio".to_owned(),
    ];
    args.extend(shop_args(&shop, dir.path()));
    let doc = python_client(&args, &every_tool_script(), &[("RUST_LOG", "warn")]);
    assert_every_tool_answered(&doc);
}

#[tokio::test]
async fn mcp_inspector_cli_lists_and_calls_tools() {
    let shop = shop("inspector").await;
    let server = ServerProcess::start(&shop, &[]).await;
    let c = clients();
    let inspector = |args: &[&str]| {
        // The Inspector refuses to run below a directory with a package.json: run it from /.
        let out = Command::new(&c.inspector)
            .current_dir("/")
            .args(["--cli", &server.url(), "--transport", "http"])
            .args(args)
            .output()
            .expect("inspector");
        assert!(
            out.status.success(),
            "inspector {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("inspector prints JSON")
    };
    let listed = inspector(&["--method", "tools/list"]);
    assert_eq!(listed["tools"].as_array().unwrap().len(), TOOLS.len());
    let called = inspector(&[
        "--method",
        "tools/call",
        "--tool-name",
        "query",
        "--tool-arg",
        "sql=SELECT name FROM products ORDER BY price DESC LIMIT 1",
    ]);
    assert_eq!(
        called["structuredContent"]["rows"],
        json!([["27\" monitor"]]),
        "{called}"
    );
}

#[tokio::test]
async fn mcp_conformance_suite_passes_every_applicable_scenario() {
    let shop = shop("conformance").await;
    let server = ServerProcess::start(&shop, &[]).await;
    let c = clients();
    let out = Command::new("bash")
        .arg(&c.conformance)
        .arg(server.url())
        .output()
        .expect("conformance");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    for scenario in [
        "server-initialize",
        "ping",
        "tools-list",
        "server-sse-multiple-streams",
        "dns-rebinding-protection",
    ] {
        assert!(
            report.lines().any(|l| l == format!("PASS {scenario}")),
            "{scenario} did not pass:\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(out.status.success(), "{report}");
}

/// Accepts connections on a free port and hands each to the next backend in turn.
async fn round_robin(backends: Vec<u16>) -> (u16, Arc<Vec<AtomicUsize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = Arc::new(
        backends
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect::<Vec<_>>(),
    );
    let seen = counts.clone();
    tokio::spawn(async move {
        let mut next = 0;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let i = next % backends.len();
            next += 1;
            seen[i].fetch_add(1, Ordering::Relaxed);
            let backend = backends[i];
            tokio::spawn(async move {
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_works_across_two_replicas_without_affinity() {
    let shop = shop("two replicas").await;
    let a = ServerProcess::start(&shop, &[]).await;
    let b = ServerProcess::start(&shop, &[]).await;
    let (port, counts) = round_robin(vec![a.port, b.port]).await;
    let script = json!({"calls": [
        {"tool": "list_tables", "arguments": {}},
        {"tool": "query", "arguments": {"sql": "SELECT count(*) FROM orders"}},
        {"tool": "describe_table", "arguments": {"table": "orders"}},
        {"tool": "query", "arguments": {"sql": "SELECT max(price) FROM products"}},
    ]});
    // A new connection per request: consecutive requests of one session alternate replicas.
    let url = format!("http://127.0.0.1:{port}/mcp");
    let doc = python_client(
        &[
            "--url".into(),
            url,
            "--no-keepalive".into(),
            "--sessions".into(),
            "3".into(),
        ],
        &script,
        &[],
    );
    for session in doc["sessions"].as_array().unwrap() {
        let results = session["results"].as_array().unwrap();
        assert!(
            results.iter().all(|r| r["isError"] == json!(false)),
            "{session}"
        );
        assert_eq!(results[1]["structuredContent"]["rows"], json!([[5]]));
        assert_eq!(results[3]["structuredContent"]["rows"], json!([[289.0]]));
    }
    for (server, count) in [(&a, &counts[0]), (&b, &counts[1])] {
        assert!(
            count.load(Ordering::Relaxed) > 3,
            "both replicas got connections"
        );
        let (_, _, metrics) = server.request("GET", "/metrics", &[], "").await.unwrap();
        let calls: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("pgmcp_tool_calls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(calls > 0, "each replica answered tool calls:\n{metrics}");
    }
}
