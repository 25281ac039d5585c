//! The audit trail: one event per tool call, written as a JSON line (on stdout, or on stderr
//! when stdout carries MCP over stdio) and, with OpenTelemetry on, exported as a log record
//! ([`crate::telemetry`]). It answers "who ran which SQL, when, with what result" on its own.
//!
//! The schema is stable and documented in docs/audit-and-telemetry.md: fields are added, never
//! renamed or retyped; `type` is always `pgmcp.audit`, so a log pipeline selects the events by
//! it. The statement appears as `spec.server.audit.statements` (`--audit-statements`) says:
//! as sent (`full`), without literals (`redacted`, [`crate::sql_guard::redact`]), or not at all
//! (`fingerprint`); the fingerprint is in every mode. Parameter values never appear, only their
//! number.

use std::io::Write as _;
use std::time::Duration;

use pgmcp_crds::config::AuditStatements;
use serde::Serialize;

use crate::auth::Caller;
use crate::tools::registry::Output;
use crate::tools::{Call, ToolError};

/// The value of every event's `type`.
pub const EVENT_TYPE: &str = "pgmcp.audit";

/// Where events go, and how they show statements.
#[derive(Debug, Clone)]
pub struct Audit {
    statements: AuditStatements,
    binding: Option<String>,
    sink: Sink,
}

/// The stream events are written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    /// Over stdio, where stdout is the MCP channel.
    Stderr,
}

impl Default for Audit {
    fn default() -> Self {
        Audit::new(AuditStatements::default(), None, Sink::Stdout)
    }
}

/// The caller's SQL, noted by the tools that run it.
#[derive(Debug)]
pub struct NotedStatement {
    /// As the caller sent it.
    pub sql: String,
    /// [`crate::sql_guard::redact`]ed.
    pub redacted: String,
    /// How many parameters came with it.
    pub params: usize,
}

/// One audit event: the JSON line, and the attributes of the OpenTelemetry log record.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    /// When the call finished, RFC 3339 in UTC with milliseconds.
    pub time: String,
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// `namespace/name` of the binding this server serves (null when run on its own).
    pub binding: Option<&'a str>,
    /// The verified caller (null when callers are not authenticated).
    pub caller: Option<CallerFields<'a>>,
    pub tool: &'a str,
    /// The caller's SQL as the statements mode allows (null for the other tools, and in
    /// `fingerprint` mode).
    pub statement: Option<&'a str>,
    /// `full`, `redacted` or `fingerprint`.
    pub statement_mode: &'static str,
    /// 16 hex digits identifying the statement without its literals.
    pub fingerprint: Option<String>,
    /// Number of parameters sent with the statement (never their values).
    pub params: Option<usize>,
    pub rows: usize,
    /// Bytes of the result's JSON.
    pub bytes: usize,
    pub truncated: bool,
    pub elapsed_ms: f64,
    /// `ok`, or why not (the label of `pgmcp_tool_calls_total`'s `outcome`).
    pub outcome: &'static str,
    /// PostgreSQL's SQLSTATE when the database answered with an error.
    pub sqlstate: Option<&'a str>,
    /// The refusal the model was given, when the server refused the call.
    pub refusal: Option<String>,
    /// The OpenTelemetry trace of the call (32 hex digits), when telemetry is on.
    pub trace_id: Option<String>,
}

/// Who called, from the verified token.
#[derive(Debug, Serialize)]
pub struct CallerFields<'a> {
    /// Object id of the user, managed identity or service principal (`oid`).
    pub oid: Option<&'a str>,
    /// Client id of the calling application (`appid`/`azp`).
    pub app_id: Option<&'a str>,
    /// Display name (users).
    pub name: Option<&'a str>,
    /// Signed-in user name (`preferred_username`).
    pub username: Option<&'a str>,
    /// Tenant (`tid`).
    pub tenant_id: Option<&'a str>,
    /// The caller class, with per-caller access.
    pub class: Option<&'a str>,
}

impl<'a> CallerFields<'a> {
    fn of(caller: &'a Caller) -> Self {
        CallerFields {
            oid: caller.oid.as_deref(),
            app_id: caller.app_id.as_deref(),
            name: caller.name.as_deref(),
            username: caller.preferred_username.as_deref(),
            tenant_id: caller.tenant_id.as_deref(),
            class: caller.class.as_deref().map(|c| c.label()),
        }
    }
}

impl Audit {
    pub fn new(statements: AuditStatements, binding: Option<String>, sink: Sink) -> Self {
        Audit {
            statements,
            binding,
            sink,
        }
    }

    /// The statement as the audit setting shows it (also in trace spans).
    pub fn statement_text<'a>(&self, noted: &'a NotedStatement) -> Option<&'a str> {
        match self.statements {
            AuditStatements::Full => Some(&noted.sql),
            AuditStatements::Redacted => Some(&noted.redacted),
            AuditStatements::Fingerprint => None,
        }
    }

    /// The event of one finished call.
    pub fn event<'a>(
        &'a self,
        tool: &'a str,
        call: &'a Call,
        result: &'a Result<Output, ToolError>,
        elapsed: Duration,
    ) -> Event<'a> {
        let noted = call.statement();
        let (rows, bytes, truncated) = match result {
            Ok(output) => (output.rows, output.json.len(), output.truncated),
            Err(_) => (0, 0, false),
        };
        let (outcome, sqlstate, refusal) = match result {
            Ok(_) => ("ok", None, None),
            Err(err) => (
                err.metric_label(),
                match err {
                    ToolError::Db(db) => db.sqlstate(),
                    _ => None,
                },
                err.is_refusal().then(|| err.to_string()),
            ),
        };
        Event {
            time: jiff::Timestamp::now()
                .round(jiff::Unit::Millisecond)
                .unwrap_or_else(|_| jiff::Timestamp::now())
                .to_string(),
            event_type: EVENT_TYPE,
            binding: self.binding.as_deref(),
            caller: call.caller.as_ref().map(CallerFields::of),
            tool,
            statement: noted.and_then(|n| self.statement_text(n)),
            statement_mode: self.statements.as_str(),
            fingerprint: noted.map(|n| crate::sql_guard::fingerprint_redacted(&n.redacted)),
            params: noted.map(|n| n.params),
            rows,
            bytes,
            truncated,
            elapsed_ms: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            outcome,
            sqlstate,
            refusal,
            trace_id: crate::telemetry::current_trace_id(),
        }
    }

    /// Writes `event` as one line, and exports it when telemetry is on.
    pub fn record(&self, event: &Event<'_>) {
        let mut line = match serde_json::to_vec(event) {
            Ok(line) => line,
            Err(err) => {
                tracing::error!(error = %err, "failed to encode an audit event");
                return;
            }
        };
        line.push(b'\n');
        let written = match self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&line),
            Sink::Stderr => std::io::stderr().lock().write_all(&line),
        };
        if let Err(err) = written {
            tracing::error!(error = %err, "failed to write an audit event");
        }
        crate::telemetry::export_audit(event, &line);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::*;
    use crate::tools::registry::Output;

    fn call_with(sql: &str) -> Call {
        let call = Call::default();
        call.note_statement(sql, crate::sql_guard::redact(sql), 2);
        call
    }

    fn event_json(statements: AuditStatements, call: &Call) -> Value {
        let audit = Audit::new(statements, Some("shop/sales".into()), Sink::Stdout);
        let result = Ok(Output {
            json: r#"{"rows":[[1]]}"#.into(),
            rows: 1,
            truncated: true,
            summary: None,
        });
        serde_json::to_value(audit.event("query", call, &result, Duration::from_micros(1500)))
            .unwrap()
    }

    #[test]
    fn each_mode_shows_the_statement_as_it_says() {
        let sql = "SELECT * FROM customers WHERE email = 'ann@contoso.com' AND id > $1";
        let call = call_with(sql);
        let full = event_json(AuditStatements::Full, &call);
        assert_eq!(full["statement"], json!(sql));
        assert_eq!(full["statement_mode"], json!("full"));
        let redacted = event_json(AuditStatements::Redacted, &call);
        assert_eq!(
            redacted["statement"],
            json!("select * from customers where email = ? and id > $1")
        );
        let print = event_json(AuditStatements::Fingerprint, &call);
        assert_eq!(print["statement"], Value::Null);
        assert!(!print.to_string().to_lowercase().contains("customers"));
        for event in [&full, &redacted, &print] {
            assert_eq!(
                event["fingerprint"],
                json!(crate::sql_guard::fingerprint(sql))
            );
            assert_eq!(event["params"], json!(2));
            assert_eq!(event["type"], json!("pgmcp.audit"));
            assert_eq!(event["binding"], json!("shop/sales"));
            assert_eq!(event["rows"], json!(1));
            assert_eq!(event["bytes"], json!(14));
            assert_eq!(event["truncated"], json!(true));
            assert_eq!(event["elapsed_ms"], json!(1.5));
            assert_eq!(event["outcome"], json!("ok"));
        }
    }

    #[test]
    fn refusals_say_why_and_discovery_has_no_statement() {
        let audit = Audit::default();
        let call = Call::default();
        let refused = Err(ToolError::NoClass);
        let event =
            serde_json::to_value(audit.event("list_tables", &call, &refused, Duration::ZERO))
                .unwrap();
        assert_eq!(event["outcome"], json!("no_caller_class"));
        assert!(event["refusal"].as_str().unwrap().starts_with("refused: "));
        assert_eq!(event["statement"], Value::Null);
        assert_eq!(event["fingerprint"], Value::Null);
        assert_eq!(event["caller"], Value::Null);
        let time = event["time"].as_str().unwrap();
        assert!(
            time.parse::<jiff::Timestamp>().is_ok() && time.ends_with('Z'),
            "{time}"
        );
    }

    #[test]
    fn the_documented_example_has_every_field_of_an_event() {
        let docs = include_str!("../../docs/audit-and-telemetry.md");
        let example = docs
            .lines()
            .find(|l| l.starts_with("{\"time\"") && l.contains(EVENT_TYPE))
            .expect("an example event in docs/audit-and-telemetry.md");
        let example: Value = serde_json::from_str(example).unwrap();
        let call = call_with("SELECT name FROM customers WHERE id = $1");
        let event = event_json(AuditStatements::Full, &call);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&example), keys(&event));
        let caller = Caller::default();
        assert_eq!(
            keys(&example["caller"]),
            keys(&serde_json::to_value(CallerFields::of(&caller)).unwrap())
        );
        assert_eq!(example["fingerprint"], event["fingerprint"]);
    }
}
