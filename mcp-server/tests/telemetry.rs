//! OpenTelemetry from the `pgmcp-server` binary to a real OpenTelemetry Collector
//! (`pgmcp_tests::otel`, built from Go modules): the spans of a call continue the caller's
//! trace (the `traceparent` header, and `_meta.traceparent` in the 2026-07-28 revision), the
//! audit event arrives as a log record in the same trace, statements appear as the audit
//! setting says, and a collector that cannot be reached costs the calls nothing but the drops
//! it counts.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::time::Duration;

use common::server::{MCP_HEADERS, ServerProcess, open_session, refs, shop_args};
use common::shop;
use pgmcp_tests::otel::{Collector, LogRecord, Span, SpanKind};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// A server on `shop` exporting to `endpoint`, with `extra` flags.
async fn exporting_server(shop: &common::Shop, endpoint: &str, extra: &[&str]) -> ServerProcess {
    let dir = tempfile::tempdir().unwrap();
    let mut args = shop_args(shop, dir.path());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    ServerProcess::start_args(
        dir,
        args,
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            endpoint.to_owned(),
        )],
    )
    .await
}

/// Calls `query` with `sql` in a session, with `traceparent` as an HTTP header.
async fn query_in_trace(server: &ServerProcess, sql: &str, traceparent: &str) -> Value {
    let mut headers = open_session(server).await;
    headers.push(("traceparent".into(), traceparent.into()));
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "query", "arguments": {"sql": sql, "params": ["Ada Lovelace"]}}});
    let (status, head, body) = server
        .request("POST", "/mcp", &refs(&headers), &body.to_string())
        .await
        .unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    pgmcp_tests::http::jsonrpc_message(&body).unwrap()
}

fn trace_id(traceparent: &str) -> &str {
    &traceparent[3..35]
}

fn in_trace<'a>(spans: &'a [Span], trace: &str, name: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.trace_id == trace && s.name == name)
}

fn audit_in_trace<'a>(logs: &'a [LogRecord], trace: &str) -> Option<&'a LogRecord> {
    logs.iter()
        .find(|l| l.trace_id == trace && l.attributes.get("type") == Some(&json!("pgmcp.audit")))
}

const SQL: &str = "SELECT count(*) FROM customers WHERE name <> $1 AND id > 4242";

#[tokio::test]
async fn a_call_is_one_trace_from_the_callers_span_to_postgresql_with_its_audit_record() {
    let collector = Collector::start().await.unwrap();
    let shop = shop("telemetry trace").await;
    let server = exporting_server(&shop, &collector.endpoint(), &[]).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answer = query_in_trace(&server, SQL, traceparent).await;
    assert_eq!(answer["result"]["structuredContent"]["rows"], json!([[0]]));
    let trace = trace_id(traceparent);

    let spans = collector
        .wait_for_spans(
            // The request's span ends last.
            |spans| in_trace(spans, trace, "POST /mcp").is_some(),
            WAIT,
        )
        .await
        .unwrap();
    // The request continues the caller's span; the call, the guard and the statement nest in it.
    let request = in_trace(&spans, trace, "POST /mcp").unwrap();
    assert_eq!(request.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(request.kind, SpanKind::Server);
    assert_eq!(request.resource["service.name"], json!("pgmcp-server"));
    let call = in_trace(&spans, trace, "tools/call query").unwrap();
    assert_eq!(call.parent_span_id, request.span_id);
    assert_eq!(call.attributes["gen_ai.tool.name"], json!("query"));
    assert_eq!(call.attributes["mcp.method.name"], json!("tools/call"));
    assert_eq!(call.attributes["pgmcp.outcome"], json!("ok"));
    let guard = in_trace(&spans, trace, "sql_guard").unwrap();
    assert_eq!(guard.parent_span_id, call.span_id);
    let statement = spans
        .iter()
        .find(|s| s.trace_id == trace && s.kind == SpanKind::Client)
        .unwrap();
    assert_eq!(statement.parent_span_id, call.span_id);
    assert_eq!(statement.name, format!("SELECT {}", shop.db.name));
    assert_eq!(statement.attributes["db.system.name"], json!("postgresql"));
    assert_eq!(statement.attributes["db.namespace"], json!(shop.db.name));
    assert_eq!(statement.attributes["db.query.text"], json!(SQL));
    assert_eq!(statement.attributes["db.response.returned_rows"], json!(1));
    assert_eq!(
        statement.attributes["server.port"],
        json!(shop.db.server().port())
    );

    // The audit event, as a log record in the call's trace: who, what, the result.
    let logs = collector
        .wait_for_logs(|logs| audit_in_trace(logs, trace).is_some(), WAIT)
        .await
        .unwrap();
    let audit = audit_in_trace(&logs, trace).unwrap();
    assert_eq!(audit.span_id, call.span_id);
    assert_eq!(audit.attributes["tool"], json!("query"));
    assert_eq!(audit.attributes["statement"], json!(SQL));
    assert_eq!(audit.attributes["params"], json!(1));
    assert_eq!(audit.attributes["rows"], json!(1));
    assert_eq!(audit.attributes["outcome"], json!("ok"));
    assert_eq!(audit.attributes["trace_id"], json!(trace));
    let body: Value = serde_json::from_str(audit.body.as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        server.audit_events()[0],
        "the record's body is the JSON line"
    );
    assert!(
        !audit.body.to_string().contains("Ada Lovelace"),
        "parameter values never appear"
    );

    // A refused statement: the call's span says so, the record says why.
    let refused = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let answer = query_in_trace(&server, "DELETE FROM customers", refused).await;
    assert_eq!(answer["result"]["isError"], json!(true));
    let logs = collector
        .wait_for_logs(
            |logs| audit_in_trace(logs, trace_id(refused)).is_some(),
            WAIT,
        )
        .await
        .unwrap();
    let audit = audit_in_trace(&logs, trace_id(refused)).unwrap();
    assert_eq!(audit.attributes["outcome"], json!("refused_sql"));
    assert!(
        audit.attributes["refusal"]
            .as_str()
            .unwrap()
            .starts_with("refused: "),
        "{audit}"
    );
    let spans = collector
        .wait_for_spans(
            |spans| in_trace(spans, trace_id(refused), "tools/call query").is_some(),
            WAIT,
        )
        .await
        .unwrap();
    let call = in_trace(&spans, trace_id(refused), "tools/call query").unwrap();
    assert_eq!(call.attributes["error.type"], json!("refused_sql"));
}

#[tokio::test]
async fn the_trace_context_in_meta_continues_the_callers_trace() {
    let collector = Collector::start().await.unwrap();
    let shop = shop("telemetry meta").await;
    let server = exporting_server(&shop, &collector.endpoint(), &[]).await;
    let traceparent = "00-5ce0e9a56015fec5aadfa328ae398115-ab54a98ceb1f0ad2-01";
    let mut headers = MCP_HEADERS.to_vec();
    headers.extend([
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "list_tables"),
    ]);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
    "name": "list_tables", "arguments": {},
    "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
        "traceparent": traceparent
    }}});
    let (status, head, body) = server
        .request("POST", "/mcp", &headers, &call.to_string())
        .await
        .unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    let trace = trace_id(traceparent);
    let spans = collector
        .wait_for_spans(
            |spans| in_trace(spans, trace, "tools/call list_tables").is_some(),
            WAIT,
        )
        .await
        .unwrap();
    let call = in_trace(&spans, trace, "tools/call list_tables").unwrap();
    assert_eq!(call.parent_span_id, "ab54a98ceb1f0ad2");
    // The server's own catalog SQL is a statement span without text.
    let statement = spans
        .iter()
        .find(|s| s.trace_id == trace && s.kind == SpanKind::Client)
        .unwrap();
    assert!(
        !statement.attributes.contains_key("db.query.text"),
        "{statement}"
    );
}

#[tokio::test]
async fn statements_in_spans_and_records_follow_the_audit_setting() {
    let collector = Collector::start().await.unwrap();
    let shop = shop("telemetry modes").await;
    for (mode, shown) in [
        (
            "redacted",
            Some("select count ( * ) from customers where name <> $1 and id > ?"),
        ),
        ("fingerprint", None),
    ] {
        let server =
            exporting_server(&shop, &collector.endpoint(), &["--audit-statements", mode]).await;
        let traceparent = if mode == "redacted" {
            "00-11111111111111111111111111111111-1111111111111111-01"
        } else {
            "00-22222222222222222222222222222222-2222222222222222-01"
        };
        query_in_trace(&server, SQL, traceparent).await;
        let trace = trace_id(traceparent);
        let logs = collector
            .wait_for_logs(|logs| audit_in_trace(logs, trace).is_some(), WAIT)
            .await
            .unwrap();
        let audit = audit_in_trace(&logs, trace).unwrap();
        assert_eq!(audit.attributes["statement_mode"], json!(mode));
        assert_eq!(
            audit.attributes.get("statement"),
            shown.map(|s| json!(s)).as_ref()
        );
        assert_eq!(
            audit.attributes["fingerprint"],
            server.audit_events()[0]["fingerprint"]
        );
        let spans = collector
            .wait_for_spans(
                |spans| {
                    spans
                        .iter()
                        .any(|s| s.trace_id == trace && s.kind == SpanKind::Client)
                },
                WAIT,
            )
            .await
            .unwrap();
        let statement = spans
            .iter()
            .find(|s| s.trace_id == trace && s.kind == SpanKind::Client)
            .unwrap();
        assert_eq!(
            statement.attributes.get("db.query.text"),
            shown.map(|s| json!(s)).as_ref()
        );
        // No literal of the statement anywhere in what was exported for it.
        for exported in [audit.to_string(), statement.to_string(), server.log()] {
            assert!(!exported.contains("4242"), "{exported}");
        }
    }
}

#[tokio::test]
async fn an_unreachable_collector_costs_the_calls_nothing_and_the_drops_are_counted() {
    // A port nothing listens on: every export is refused.
    let port = pgmcp_tests::paths::free_port().unwrap();
    let shop = shop("telemetry down").await;
    let server = exporting_server(&shop, &format!("http://127.0.0.1:{port}"), &[]).await;
    let headers = open_session(&server).await;
    for id in 0..50 {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "query", "arguments": {"sql": "SELECT 1"}}});
        let (status, _, body) = server
            .request("POST", "/mcp", &refs(&headers), &body.to_string())
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("\"isError\":false"), "{body}");
    }
    let dropped = |metrics: &str, name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, _, metrics) = server.request("GET", "/metrics", &[], "").await.unwrap();
        let spans = dropped(&metrics, "pgmcp_telemetry_dropped_spans_total");
        let logs = dropped(&metrics, "pgmcp_telemetry_dropped_logs_total");
        if spans >= 200 && logs >= 50 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the drops were not counted: spans {spans}, logs {logs}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
