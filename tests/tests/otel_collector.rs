//! The OpenTelemetry Collector harness itself: a span and a log record posted over OTLP/HTTP
//! JSON, as an SDK's exporter would send them, come back from the collector's files with their
//! ids, names, attributes and bodies intact.

use std::time::Duration;

use pgmcp_tests::otel::{Collector, LogRecord, Span, SpanEvent, SpanKind, SpanStatus, StatusCode};
use serde_json::json;

const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const SPAN_ID: &str = "eee19b7ec3c1b174";
const PARENT_SPAN_ID: &str = "eee19b7ec3c1b173";

/// `/v1/<signal>` with an OTLP JSON body; the receiver answers 200 once the exporter has the data.
async fn post(collector: &Collector, signal: &str, body: serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/{signal}", collector.endpoint()))
        .json(&body)
        .send()
        .await
        .expect("post to the collector");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "POST /v1/{signal}: {status} {text}");
}

fn resource() -> serde_json::Value {
    json!({
        "attributes": [
            { "key": "service.name", "value": { "stringValue": "otel-collector-test" } },
        ],
    })
}

#[tokio::test]
async fn a_posted_span_comes_back_with_its_ids_and_attributes() {
    let collector = Collector::start().await.expect("start the collector");
    post(
        &collector,
        "traces",
        json!({
            "resourceSpans": [{
                "resource": resource(),
                "scopeSpans": [{
                    "scope": { "name": "pgmcp-tests" },
                    "spans": [{
                        "traceId": TRACE_ID,
                        "spanId": SPAN_ID,
                        "parentSpanId": PARENT_SPAN_ID,
                        "name": "tools/call query",
                        "kind": 2,
                        "startTimeUnixNano": "1700000000000000000",
                        "endTimeUnixNano": "1700000000250000000",
                        "attributes": [
                            { "key": "db.system", "value": { "stringValue": "postgresql" } },
                            { "key": "db.rows", "value": { "intValue": "42" } },
                            { "key": "cached", "value": { "boolValue": true } },
                            { "key": "ratio", "value": { "doubleValue": 0.5 } },
                            { "key": "tables", "value": { "arrayValue": { "values": [
                                { "stringValue": "sales" }, { "stringValue": "orders" },
                            ] } } },
                        ],
                        "events": [{
                            "timeUnixNano": "1700000000100000000",
                            "name": "rows fetched",
                            "attributes": [{ "key": "n", "value": { "intValue": "2" } }],
                        }],
                        "status": { "code": 2, "message": "canceling statement" },
                    }],
                }],
            }],
        }),
    )
    .await;

    let spans = collector
        .wait_for_spans(|spans| !spans.is_empty(), Duration::from_secs(10))
        .await
        .expect("the span arrives");

    let expected = Span {
        trace_id: TRACE_ID.to_owned(),
        span_id: SPAN_ID.to_owned(),
        parent_span_id: PARENT_SPAN_ID.to_owned(),
        name: "tools/call query".to_owned(),
        kind: SpanKind::Server,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: [
            ("db.system", json!("postgresql")),
            ("db.rows", json!(42)),
            ("cached", json!(true)),
            ("ratio", json!(0.5)),
            ("tables", json!(["sales", "orders"])),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into(),
        events: vec![SpanEvent {
            name: "rows fetched".to_owned(),
            time_unix_nano: 1_700_000_000_100_000_000,
            attributes: [("n".to_owned(), json!(2))].into(),
        }],
        status: SpanStatus {
            code: StatusCode::Error,
            message: "canceling statement".to_owned(),
        },
        resource: [("service.name".to_owned(), json!("otel-collector-test"))].into(),
        scope_name: "pgmcp-tests".to_owned(),
    };
    assert_eq!(spans, [expected]);
    assert!(collector.logs().expect("read logs").is_empty());
}

#[tokio::test]
async fn a_posted_log_record_comes_back_with_its_body_and_trace_context() {
    let collector = Collector::start().await.expect("start the collector");
    post(
        &collector,
        "logs",
        json!({
            "resourceLogs": [{
                "resource": resource(),
                "scopeLogs": [{
                    "scope": { "name": "pgmcp_server::audit" },
                    "logRecords": [{
                        "timeUnixNano": "1700000000000000000",
                        "severityNumber": 13,
                        "severityText": "WARN",
                        "body": { "stringValue": "query refused by the SQL guard" },
                        "attributes": [
                            { "key": "caller", "value": { "stringValue": "agent-1" } },
                            { "key": "duration_ms", "value": { "intValue": "3" } },
                        ],
                        "traceId": TRACE_ID,
                        "spanId": SPAN_ID,
                    }],
                }],
            }],
        }),
    )
    .await;

    let logs = collector
        .wait_for_logs(|logs| !logs.is_empty(), Duration::from_secs(10))
        .await
        .expect("the log record arrives");

    let expected = LogRecord {
        time_unix_nano: 1_700_000_000_000_000_000,
        severity_text: "WARN".to_owned(),
        severity_number: 13,
        body: json!("query refused by the SQL guard"),
        attributes: [
            ("caller".to_owned(), json!("agent-1")),
            ("duration_ms".to_owned(), json!(3)),
        ]
        .into(),
        trace_id: TRACE_ID.to_owned(),
        span_id: SPAN_ID.to_owned(),
        resource: [("service.name".to_owned(), json!("otel-collector-test"))].into(),
        scope_name: "pgmcp_server::audit".to_owned(),
    };
    assert_eq!(logs, [expected]);
    assert!(collector.spans().expect("read spans").is_empty());
}

#[tokio::test]
async fn waiting_for_what_never_arrives_names_what_did() {
    let collector = Collector::start().await.expect("start the collector");
    post(
        &collector,
        "logs",
        json!({
            "resourceLogs": [{
                "resource": resource(),
                "scopeLogs": [{ "logRecords": [{ "body": { "stringValue": "only this" } }] }],
            }],
        }),
    )
    .await;

    let err = collector
        .wait_for_logs(|logs| logs.len() > 1, Duration::from_millis(500))
        .await
        .expect_err("a second record never comes");
    let message = err.to_string();
    assert!(
        message.contains("1 arrived") && message.contains(r#""only this""#),
        "{message}"
    );
}
