//! The MCP server's OpenTelemetry: its spans and its audit events as log records.
//!
//! `pgmcp-telemetry` (shared with the operator) sets up export from the standard `OTEL_*`
//! variables; this module says what the server exports once [`install`]ed. Each tool call is a
//! trace of four levels: the HTTP request (`POST /mcp`, kind server, its parent the request's
//! `traceparent` header), the call (`tools/call <tool>`, MCP semantic conventions; its parent
//! the request's `_meta.traceparent` when the client sends one, as the 2026-07-28 revision
//! allows), the SQL guard (`sql_guard`), and the statement (`<operation> <database>`, kind
//! client, database semantic conventions, with the statement text as the audit setting shows
//! it). Over stdio the call is the root, or the child of `_meta.traceparent`. Each audit event
//! becomes a log record in the call's trace ([`export_audit`]).
//!
//! Without export every helper here returns a disabled span: the spans cost a branch.

use std::sync::OnceLock;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::TraceContextExt as _;
use pgmcp_telemetry::opentelemetry;
use pgmcp_telemetry::opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use pgmcp_telemetry::tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing::Span;

use crate::audit::Event;

/// The audit log records' logger, set when export is on.
static AUDIT_LOGGER: OnceLock<SdkLogger> = OnceLock::new();

/// Turns export on for this process's spans and audit events (`logger`: the provider
/// `pgmcp_telemetry::init` built, when it exports).
pub fn install(logger: Option<SdkLoggerProvider>) {
    if let Some(provider) = logger {
        let _ = AUDIT_LOGGER.set(provider.logger("pgmcp.audit"));
    }
}

/// Whether spans and audit events are exported.
pub fn exporting() -> bool {
    AUDIT_LOGGER.get().is_some()
}

/// The span of one HTTP request to `/mcp`, continuing the caller's `traceparent`.
pub fn request_span(headers: &axum::http::HeaderMap) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: "pgmcp::trace",
        "POST /mcp",
        otel.kind = "server",
        http.request.method = "POST",
        url.path = "/mcp",
        mcp.session.id = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()),
    );
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    continue_trace(&span, header("traceparent"), header("tracestate"));
    span
}

/// Makes the span a `traceparent`'s child, when there is one (before the span starts).
fn continue_trace(span: &Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if traceparent.is_some() {
        let _ = span.set_parent(pgmcp_telemetry::parent_from(traceparent, tracestate));
    }
}

/// The W3C trace context a request carried in `_meta`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaTrace {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl MetaTrace {
    /// The keys of a request's `_meta` object.
    pub fn from_meta(meta: &serde_json::Map<String, serde_json::Value>) -> Self {
        let text = |key: &str| meta.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        MetaTrace {
            traceparent: text("traceparent"),
            tracestate: text("tracestate"),
        }
    }
}

/// The span of one tool call: the child of `_meta.traceparent` when the request carried one,
/// else of the current span (the HTTP request's).
pub fn call_span(tool: &str, trace: Option<&MetaTrace>, class: Option<&str>) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: "pgmcp::trace",
        "tools/call",
        otel.name = format!("tools/call {tool}"),
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        mcp.method.name = "tools/call",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = tool,
        pgmcp.caller.class = class,
        pgmcp.outcome = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    if let Some(trace) = trace {
        continue_trace(
            &span,
            trace.traceparent.as_deref(),
            trace.tracestate.as_deref(),
        );
    }
    span
}

/// Records a finished call's outcome on its span.
pub fn end_call(span: &Span, outcome: &str) {
    if span.is_none() {
        return;
    }
    span.record("pgmcp.outcome", outcome);
    if outcome != "ok" {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", outcome);
    }
}

/// The span of the SQL guard's checks of the caller's statement.
pub fn guard_span() -> Span {
    if !exporting() {
        return Span::none();
    }
    tracing::info_span!(target: "pgmcp::trace", "sql_guard", otel.kind = "internal")
}

/// The span of one statement on PostgreSQL: `text` is the statement as the audit setting
/// shows it (none in fingerprint mode, and for the server's own catalog SQL).
pub fn statement_span(database: &str, text: Option<&str>, server: (&str, u16)) -> Span {
    if !exporting() {
        return Span::none();
    }
    let operation = text
        .and_then(|t| t.split_whitespace().next())
        .map_or("SELECT".to_owned(), str::to_uppercase);
    tracing::info_span!(
        target: "pgmcp::trace",
        "statement",
        otel.name = format!("{operation} {database}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "postgresql",
        db.namespace = database,
        db.operation.name = operation,
        db.query.text = text,
        server.address = server.0,
        server.port = i64::from(server.1),
        db.response.returned_rows = tracing::field::Empty,
        db.response.status_code = tracing::field::Empty,
    )
}

/// Records a statement's result on its span.
pub fn end_statement(span: &Span, rows: Option<usize>, sqlstate: Option<&str>) {
    if span.is_none() {
        return;
    }
    if let Some(rows) = rows {
        // As a signed integer: the OpenTelemetry layer exports unsigned ones as text.
        span.record(
            "db.response.returned_rows",
            i64::try_from(rows).unwrap_or(i64::MAX),
        );
    }
    if let Some(code) = sqlstate {
        span.record("db.response.status_code", code);
        span.record("otel.status_code", "ERROR");
    }
}

/// The trace of the current span (32 hex digits), when exporting.
pub fn current_trace_id() -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Exports `event` as a log record (event name `pgmcp.audit`, the JSON line as body, each field
/// an attribute) in the current span's trace, when exporting.
pub fn export_audit(event: &Event<'_>, line: &[u8]) {
    let Some(logger) = AUDIT_LOGGER.get() else {
        return;
    };
    let mut record = logger.create_log_record();
    record.set_event_name("pgmcp.audit");
    record.set_severity_number(Severity::Info);
    record.set_severity_text("INFO");
    let body = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line)).into_owned();
    record.set_body(AnyValue::from(body));
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(event) {
        let mut attributes = Vec::new();
        flatten("", &fields, &mut attributes);
        record.add_attributes(attributes);
    }
    let context = Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        record.set_trace_context(
            span_context.trace_id(),
            span_context.span_id(),
            Some(span_context.trace_flags()),
        );
    }
    logger.emit(record);
}

/// `fields` as attributes, nested objects' keys joined with dots; nulls left out.
fn flatten(
    prefix: &str,
    fields: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<(String, AnyValue)>,
) {
    for (key, value) in fields {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::Bool(b) => out.push((key, AnyValue::Boolean(*b))),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => out.push((key, AnyValue::Int(i))),
                None => out.push((key, AnyValue::Double(n.as_f64().unwrap_or_default()))),
            },
            serde_json::Value::String(s) => out.push((key, AnyValue::from(s.clone()))),
            serde_json::Value::Object(inner) => flatten(&key, inner, out),
            serde_json::Value::Array(items) => out.push((
                key,
                AnyValue::from(serde_json::Value::Array(items.clone()).to_string()),
            )),
        }
    }
}
