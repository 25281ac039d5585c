//! A real OpenTelemetry Collector for the telemetry tests: the OTLP/HTTP receiver on a free
//! loopback port and a file exporter per signal, so a test points a process at
//! [`Collector::endpoint`] and reads back what the collector received as plain structs
//! ([`Collector::spans`], [`Collector::logs`]). The binary is built from Go modules by
//! `tests/otelcol/build.sh` (`make otelcol`). Nothing here produces telemetry or knows what
//! pgmcp exports: tests decide what to look for.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::daemon::{Daemon, Spec};
use crate::paths;

/// Attributes as plain JSON: each OTLP `AnyValue` flattened by [`any_value`].
pub type Attributes = BTreeMap<String, Value>;

/// A running collector. Dropping it stops the collector and removes its directory (kept with
/// `PGMCP_KEEP_TEST_DIRS`).
#[derive(Debug)]
pub struct Collector {
    port: u16,
    traces: PathBuf,
    logs: PathBuf,
    daemon: Daemon,
}

impl Collector {
    /// Starts a collector with a configuration of its own and waits until its receiver accepts
    /// connections.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Keep::All).await
    }

    /// [`Collector::start`] for load: the files rotate, so a long benchmark writes a bounded
    /// amount (the readers see only the newest file).
    pub async fn start_for_load() -> anyhow::Result<Self> {
        Self::start_with(Keep::Newest).await
    }

    async fn start_with(keep: Keep) -> anyhow::Result<Self> {
        let bin = paths::otelcol_bin();
        paths::require(
            &bin,
            "build it with `make otelcol`, or set PGMCP_OTELCOL_BIN",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("pgmcp-otelcol-")
            .tempdir()?
            .keep();
        let port = paths::free_port()?;
        let traces = dir.join("traces.jsonl");
        let logs = dir.join("logs.jsonl");
        // JSON is YAML, which is what the collector's file provider reads.
        let config_file = dir.join("config.json");
        std::fs::write(
            &config_file,
            serde_json::to_string_pretty(&config(port, &traces, &logs, keep))?,
        )?;
        let mut spec = Spec::new("otelcol", &bin, dir.join("otelcol.log"))
            .args([format!("--config={}", config_file.display())]);
        spec.cleanup_dir = Some(dir);
        let mut daemon = Daemon::spawn(spec)?;
        wait_accepting(port, &mut daemon).await?;
        Ok(Self {
            port,
            traces,
            logs,
            daemon,
        })
    }

    /// `http://127.0.0.1:<port>`: the value for `OTEL_EXPORTER_OTLP_ENDPOINT` (exporters append
    /// `/v1/traces` and `/v1/logs`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span written so far, in arrival order.
    pub fn spans(&self) -> anyhow::Result<Vec<Span>> {
        let batches: Vec<TracesData> = read_lines(&self.traces)?;
        Ok(batches
            .into_iter()
            .flat_map(TracesData::into_spans)
            .collect())
    }

    /// Every log record written so far, in arrival order.
    pub fn logs(&self) -> anyhow::Result<Vec<LogRecord>> {
        let batches: Vec<LogsData> = read_lines(&self.logs)?;
        Ok(batches
            .into_iter()
            .flat_map(LogsData::into_records)
            .collect())
    }

    /// Polls the spans until `done` holds for all of them and returns them; fails after
    /// `timeout` with the spans that did arrive.
    pub async fn wait_for_spans(
        &self,
        done: impl FnMut(&[Span]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Span>> {
        self.wait_for("spans", || self.spans(), done, timeout).await
    }

    /// Polls the log records until `done` holds for all of them and returns them; fails after
    /// `timeout` with the records that did arrive.
    pub async fn wait_for_logs(
        &self,
        done: impl FnMut(&[LogRecord]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<LogRecord>> {
        self.wait_for("log records", || self.logs(), done, timeout)
            .await
    }

    async fn wait_for<T: fmt::Display>(
        &self,
        what: &str,
        read: impl Fn() -> anyhow::Result<Vec<T>>,
        mut done: impl FnMut(&[T]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<T>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = read()?;
            if done(&records) {
                return Ok(records);
            }
            if Instant::now() >= deadline {
                let arrived: Vec<String> = records.iter().map(|r| format!("  {r}")).collect();
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {what}; {} arrived:\n{}\n\
                     --- otelcol log\n{}",
                    records.len(),
                    arrived.join("\n"),
                    self.daemon.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The collector's configuration: OTLP over HTTP only (no gRPC port) on 127.0.0.1:`port`;
/// traces and logs each to a file of OTLP JSON lines, flushed every 10 ms (the exporter's
/// default is 1 s); and no metrics endpoint of the collector's own, which would listen on :8888
/// in every collector that parallel tests start.
/// What the file exporters keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    All,
    /// Files of at most 16 MiB, one older file kept.
    Newest,
}

fn config(port: u16, traces: &Path, logs: &Path, keep: Keep) -> Value {
    let file = |path: &Path| {
        let mut exporter = serde_json::json!({
            "path": path,
            "format": "json",
            "flush_interval": "10ms",
        });
        if keep == Keep::Newest {
            exporter["rotation"] = serde_json::json!({"max_megabytes": 16, "max_backups": 1});
        }
        exporter
    };
    serde_json::json!({
        "receivers": {
            "otlp": { "protocols": { "http": { "endpoint": format!("127.0.0.1:{port}") } } },
        },
        "exporters": {
            "file/traces": file(traces),
            "file/logs": file(logs),
        },
        "service": {
            "telemetry": { "metrics": { "level": "none" } },
            "pipelines": {
                "traces": { "receivers": ["otlp"], "exporters": ["file/traces"] },
                "logs": { "receivers": ["otlp"], "exporters": ["file/logs"] },
            },
        },
    })
}

/// Waits (up to 30 s) until the receiver accepts TCP connections. The collector starts its
/// exporters before its receivers, so by then every pipeline is ready.
async fn wait_accepting(port: u16, daemon: &mut Daemon) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(
            !daemon.exited() && Instant::now() < deadline,
            "otelcol did not listen on 127.0.0.1:{port}:\n{}",
            daemon.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The batches in a file the exporter writes, one JSON document a line (none before the
/// exporter created the file).
fn read_lines<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_lines(&text).with_context(|| format!("in {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// The lines of `text` that end in a newline. The exporter writes a batch and its newline into a
/// 4 KiB buffer, so a longer batch can reach the file in pieces: a last line without its newline
/// is still being written and is left for the next read.
fn parse_lines<T: DeserializeOwned>(text: &str) -> anyhow::Result<Vec<T>> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line).with_context(|| format!("failed to parse line {}", n + 1))
        })
        .collect()
}

/// OTLP's JSON `AnyValue` as plain JSON: `{"stringValue":"a"}` → `"a"`, `{"intValue":"7"}` → `7`
/// (OTLP JSON writes int64 as a string), `{"boolValue":true}` → `true`, `{"doubleValue":1.5}` →
/// `1.5`, `{"arrayValue":{"values":[…]}}` → an array, `{"kvlistValue":{"values":[…]}}` → an
/// object, `{"bytesValue":"…"}` → its base64 string, an empty value → `null`.
fn any_value(value: &Value) -> Value {
    let Some((kind, inner)) = value.as_object().and_then(|o| o.iter().next()) else {
        return Value::Null;
    };
    match kind.as_str() {
        "intValue" => inner
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .map_or_else(|| inner.clone(), Value::from),
        "arrayValue" => inner["values"]
            .as_array()
            .map(|values| values.iter().map(any_value).collect())
            .unwrap_or(Value::Array(Vec::new())),
        "kvlistValue" => {
            let values = Vec::<KeyValue>::deserialize(&inner["values"]).unwrap_or_default();
            Value::Object(values.iter().map(KeyValue::flatten).collect())
        }
        _ => inner.clone(),
    }
}

fn attributes(list: &[KeyValue]) -> Attributes {
    list.iter().map(KeyValue::flatten).collect()
}

/// A span as the collector received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Attributes,
    pub events: Vec<SpanEvent>,
    pub status: SpanStatus,
    /// The attributes of the resource that sent it (`service.name`, …).
    pub resource: Attributes,
    /// The instrumentation scope (the tracer's name).
    pub scope_name: String,
}

/// An event recorded in a span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: Attributes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    fn from_otlp(kind: i32) -> Self {
        match kind {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanStatus {
    pub code: StatusCode,
    /// Set only with [`StatusCode::Error`].
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    fn from_otlp(code: i32) -> Self {
        match code {
            1 => Self::Ok,
            2 => Self::Error,
            _ => Self::Unset,
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "span {:?} {:?} trace={} span={} parent={} status={:?}",
            self.name,
            self.kind,
            self.trace_id,
            self.span_id,
            self.parent_span_id,
            self.status.code,
        )?;
        if !self.status.message.is_empty() {
            write!(f, " {:?}", self.status.message)?;
        }
        write!(f, " attributes={}", json(&self.attributes))
    }
}

/// A log record as the collector received it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub time_unix_nano: u64,
    /// `INFO`, `WARN`, … as the sender wrote it (may be empty).
    pub severity_text: String,
    /// OTLP's severity number: 9 INFO, 13 WARN, 17 ERROR, … (0 unset).
    pub severity_number: i32,
    /// The body, flattened like attributes (usually a string).
    pub body: Value,
    pub attributes: Attributes,
    /// Empty when the record was not emitted inside a span.
    pub trace_id: String,
    pub span_id: String,
    /// The attributes of the resource that sent it (`service.name`, …).
    pub resource: Attributes,
    /// The instrumentation scope (for `tracing`, usually the module path).
    pub scope_name: String,
}

impl fmt::Display for LogRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log {}({}) {} trace={} span={} attributes={}",
            self.severity_text,
            self.severity_number,
            self.body,
            self.trace_id,
            self.span_id,
            json(&self.attributes)
        )
    }
}

fn json(attributes: &Attributes) -> String {
    serde_json::to_string(attributes).unwrap_or_default()
}

// OTLP JSON as the collector writes it: one ExportTraceServiceRequest or
// ExportLogsServiceRequest a line, camelCase fields, empty fields left out.

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct TracesData {
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ResourceSpans {
    resource: Resource,
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ScopeSpans {
    scope: Scope,
    spans: Vec<OtlpSpan>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct OtlpSpan {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    #[serde(deserialize_with = "uint64")]
    start_time_unix_nano: u64,
    #[serde(deserialize_with = "uint64")]
    end_time_unix_nano: u64,
    attributes: Vec<KeyValue>,
    events: Vec<OtlpEvent>,
    status: OtlpStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct OtlpEvent {
    #[serde(deserialize_with = "uint64")]
    time_unix_nano: u64,
    name: String,
    attributes: Vec<KeyValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OtlpStatus {
    code: i32,
    message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct LogsData {
    resource_logs: Vec<ResourceLogs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ResourceLogs {
    resource: Resource,
    scope_logs: Vec<ScopeLogs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ScopeLogs {
    scope: Scope,
    log_records: Vec<OtlpLogRecord>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct OtlpLogRecord {
    #[serde(deserialize_with = "uint64")]
    time_unix_nano: u64,
    severity_number: i32,
    severity_text: String,
    body: Value,
    attributes: Vec<KeyValue>,
    trace_id: String,
    span_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Resource {
    attributes: Vec<KeyValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Scope {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KeyValue {
    key: String,
    value: Value,
}

impl KeyValue {
    fn flatten(&self) -> (String, Value) {
        (self.key.clone(), any_value(&self.value))
    }
}

/// A fixed64 of OTLP JSON: a decimal string (or a plain number).
fn uint64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Uint64 {
        Number(u64),
        String(String),
    }
    match Uint64::deserialize(deserializer)? {
        Uint64::Number(n) => Ok(n),
        Uint64::String(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

impl TracesData {
    fn into_spans(self) -> impl Iterator<Item = Span> {
        self.resource_spans.into_iter().flat_map(|rs| {
            let resource = attributes(&rs.resource.attributes);
            rs.scope_spans.into_iter().flat_map(move |ss| {
                let resource = resource.clone();
                ss.spans.into_iter().map(move |span| Span {
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    name: span.name,
                    kind: SpanKind::from_otlp(span.kind),
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                    attributes: attributes(&span.attributes),
                    events: span
                        .events
                        .iter()
                        .map(|event| SpanEvent {
                            name: event.name.clone(),
                            time_unix_nano: event.time_unix_nano,
                            attributes: attributes(&event.attributes),
                        })
                        .collect(),
                    status: SpanStatus {
                        code: StatusCode::from_otlp(span.status.code),
                        message: span.status.message,
                    },
                    resource: resource.clone(),
                    scope_name: ss.scope.name.clone(),
                })
            })
        })
    }
}

impl LogsData {
    fn into_records(self) -> impl Iterator<Item = LogRecord> {
        self.resource_logs.into_iter().flat_map(|rl| {
            let resource = attributes(&rl.resource.attributes);
            rl.scope_logs.into_iter().flat_map(move |sl| {
                let resource = resource.clone();
                sl.log_records.into_iter().map(move |record| LogRecord {
                    time_unix_nano: record.time_unix_nano,
                    severity_text: record.severity_text,
                    severity_number: record.severity_number,
                    body: any_value(&record.body),
                    attributes: attributes(&record.attributes),
                    trace_id: record.trace_id,
                    span_id: record.span_id,
                    resource: resource.clone(),
                    scope_name: sl.scope.name.clone(),
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn any_values_flatten_to_plain_json() {
        let cases = [
            (json!({"stringValue": "a"}), json!("a")),
            (
                json!({"intValue": "-9007199254740993"}),
                json!(-9007199254740993_i64),
            ),
            (json!({"intValue": 7}), json!(7)),
            (json!({"boolValue": false}), json!(false)),
            (json!({"doubleValue": 1.5}), json!(1.5)),
            (json!({"bytesValue": "AQI="}), json!("AQI=")),
            (
                json!({"arrayValue": {"values": [{"stringValue": "x"}, {"intValue": "2"}]}}),
                json!(["x", 2]),
            ),
            (json!({"arrayValue": {}}), json!([])),
            (
                json!({"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": true}}]}}),
                json!({"k": true}),
            ),
            (json!({}), Value::Null),
        ];
        for (otlp, plain) in cases {
            assert_eq!(any_value(&otlp), plain, "{otlp}");
        }
    }

    #[test]
    fn a_last_line_without_its_newline_is_left_for_the_next_read() {
        let line =
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"one"}}]}]}]}"#;
        let text = format!("{line}\n{}", &line[..40]);
        let batches: Vec<LogsData> = parse_lines(&text).unwrap();
        let records: Vec<LogRecord> = batches
            .into_iter()
            .flat_map(LogsData::into_records)
            .collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].body, json!("one"));
        assert!(parse_lines::<LogsData>(&line[..40]).unwrap().is_empty());
    }

    #[test]
    fn a_broken_complete_line_is_an_error() {
        let err = parse_lines::<TracesData>("{}\nnot json\n").unwrap_err();
        assert_eq!(err.to_string(), "failed to parse line 2");
    }
}
