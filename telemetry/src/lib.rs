//! Logging and OpenTelemetry for pgmcp's two binaries, set up the same way.
//!
//! [`init`] installs the `tracing` subscriber: formatted logs (JSON or text) on the writer
//! the binary chooses and, when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, a layer that exports spans over OTLP/HTTP with
//! the maintained `opentelemetry` crates. Every other standard variable applies as the SDK reads
//! it: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER(_ARG)`. The incoming W3C `traceparent` is
//! read with the global propagator ([`parent_from`]).
//!
//! Export never fails or slows the work it describes: spans and log records wait in a bounded
//! queue ([`QUEUE`]) that a background thread sends in batches; what does not fit, or what the
//! collector refuses or cannot be sent, is dropped and counted ([`Telemetry::dropped`], which
//! the binaries expose as a metric).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_otlp::{LogExporter, SpanExporter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    BatchConfigBuilder as LogBatchConfig, BatchLogProcessor, LogBatch, LogProcessor, SdkLogRecord,
    SdkLoggerProvider,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub use opentelemetry;
pub use opentelemetry_sdk;
pub use tracing_opentelemetry;

/// Spans (and log records) that may wait for export at once; more are dropped and counted.
pub const QUEUE: usize = 2048;

/// The batch processors' own queues: never full, because [`Bounded`] drops (and counts) at
/// [`QUEUE`] first.
const BATCH_QUEUE: usize = QUEUE * 2;

/// How often the batch processors send what waits.
const BATCH_DELAY: Duration = Duration::from_millis(500);

/// The longest each signal's export may take at shutdown: what a live collector takes in
/// milliseconds, an unreachable one (the exporter retries with backoff) never gets.
pub const SHUTDOWN: Duration = Duration::from_secs(1);

/// What [`init`] set up; shut it down (flushing what waits) with [`Telemetry::shutdown`].
#[derive(Debug, Default)]
pub struct Telemetry {
    exporting: Option<Exporting>,
    dropped: Arc<Dropped>,
}

#[derive(Debug)]
struct Exporting {
    tracer: SdkTracerProvider,
    logger: SdkLoggerProvider,
}

/// Counts of what was not exported (Prometheus counters, which the binaries register).
#[derive(Debug, Default)]
struct Dropped {
    spans: Counter,
    logs: Counter,
}

/// Where formatted logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogWriter {
    Stdout,
    /// The MCP server's choice: stdout carries MCP over stdio, and audit events.
    Stderr,
}

/// Whether the environment asks for export.
pub fn configured(env: impl Fn(&str) -> Option<String>) -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| env(var).is_some_and(|v| !v.trim().is_empty()))
        && env("OTEL_SDK_DISABLED").is_none_or(|v| !v.eq_ignore_ascii_case("true"))
}

/// Installs logging (`RUST_LOG`, else `default_filter`; `format` json or text) and, when the
/// environment configures it, OpenTelemetry export named `service` (unless `OTEL_SERVICE_NAME`
/// names it). Call it before starting the async runtime: the exporters' blocking HTTP client
/// must not be created on a runtime thread.
pub fn init(service: &str, format: &str, default_filter: &str, writer: LogWriter) -> Telemetry {
    // The spans made for export (target `pgmcp::trace`) stay out of the formatted logs, which
    // read the same with export on or off; with it off, no layer wants them and they cost
    // nothing.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter))
        .add_directive(
            "pgmcp::trace=off"
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid directive")),
        );
    let fmt = tracing_subscriber::fmt::layer();
    let fmt = match (format, writer) {
        ("text", LogWriter::Stdout) => fmt.boxed(),
        ("text", LogWriter::Stderr) => fmt.with_writer(std::io::stderr).boxed(),
        (_, LogWriter::Stdout) => fmt.json().flatten_event(true).boxed(),
        (_, LogWriter::Stderr) => fmt
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let mut telemetry = Telemetry::default();
    let otel = if configured(|var| std::env::var(var).ok()) {
        match Exporting::start(service, &telemetry.dropped) {
            Ok(exporting) => {
                let tracer = exporting.tracer.tracer("pgmcp");
                telemetry.exporting = Some(exporting);
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        // Only the spans the binaries open for export, not every log event.
                        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                            meta.is_span() && meta.target() == "pgmcp::trace"
                        })),
                )
            }
            Err(err) => {
                eprintln!("OpenTelemetry export is off: {err}");
                None
            }
        }
    } else {
        None
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    telemetry
}

impl Exporting {
    fn start(service: &str, dropped: &Arc<Dropped>) -> Result<Exporting, String> {
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service.to_owned());
        }
        // The SDK splits OTEL_RESOURCE_ATTRIBUTES but does not percent-decode it, as the
        // specification asks (the operator encodes `,`, `=`, spaces and non-ASCII).
        if let Ok(attributes) = std::env::var("OTEL_RESOURCE_ATTRIBUTES") {
            resource = resource.with_attributes(
                resource_attributes(&attributes)
                    .into_iter()
                    .map(|(k, v)| opentelemetry::KeyValue::new(k, v)),
            );
        }
        let resource = resource.build();
        let spans = SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|err| format!("cannot build the OTLP span exporter: {err}"))?;
        let (spans, pending) = Counted::new(spans, dropped);
        let spans = BatchSpanProcessor::builder(spans)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(BATCH_QUEUE)
                    .with_scheduled_delay(BATCH_DELAY)
                    .build(),
            )
            .build();
        let tracer = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(Bounded::new(spans, pending, dropped))
            .build();
        let logs = LogExporter::builder()
            .with_http()
            .build()
            .map_err(|err| format!("cannot build the OTLP log exporter: {err}"))?;
        let (logs, pending) = Counted::new(logs, dropped);
        let logs = BatchLogProcessor::builder(logs)
            .with_batch_config(
                LogBatchConfig::default()
                    .with_max_queue_size(BATCH_QUEUE)
                    .with_scheduled_delay(BATCH_DELAY)
                    .build(),
            )
            .build();
        let logger = SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_log_processor(Bounded::new(logs, pending, dropped))
            .build();
        Ok(Exporting { tracer, logger })
    }
}

impl Telemetry {
    /// Whether spans and log records are exported.
    pub fn exporting(&self) -> bool {
        self.exporting.is_some()
    }

    /// The logger provider audit events are emitted to, when exporting.
    pub fn logger_provider(&self) -> Option<SdkLoggerProvider> {
        self.exporting.as_ref().map(|e| e.logger.clone())
    }

    /// A reader of the drop counts, for metrics.
    pub fn dropped(&self) -> DroppedCounts {
        DroppedCounts(self.dropped.clone())
    }

    /// Sends what waits and stops the export threads, in at most [`SHUTDOWN`] per signal (a
    /// collector that does not answer must not hold up a pod's termination).
    pub fn shutdown(self) {
        if let Some(exporting) = self.exporting {
            // Each provider flushes on shutdown; errors are the collector's, already counted.
            let _ = exporting.tracer.shutdown_with_timeout(SHUTDOWN);
            let _ = exporting.logger.shutdown_with_timeout(SHUTDOWN);
        }
    }
}

/// Spans and log records not exported so far (queue full, refused or unreachable collector).
#[derive(Debug, Clone, Default)]
pub struct DroppedCounts(Arc<Dropped>);

impl DroppedCounts {
    /// Spans dropped so far (a counter sharing the count).
    pub fn spans(&self) -> Counter {
        self.0.spans.clone()
    }

    /// Log records dropped so far (a counter sharing the count).
    pub fn logs(&self) -> Counter {
        self.0.logs.clone()
    }
}

/// The parent context a W3C `traceparent` (and `tracestate`) names; an empty context when
/// absent or malformed.
pub fn parent_from(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let carrier: std::collections::HashMap<String, String> =
        [("traceparent", traceparent), ("tracestate", tracestate)]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
    TraceContextPropagator::new().extract(&carrier)
}

/// The `key=value` pairs of `OTEL_RESOURCE_ATTRIBUTES`, percent-decoded (W3C Baggage format);
/// a malformed pair is left out.
fn resource_attributes(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = percent_decode(key.trim())?;
            let value = percent_decode(value.trim())?;
            (!key.is_empty()).then_some((key, value))
        })
        .collect()
}

/// `text` with `%XX` escapes decoded; `None` when an escape is malformed or the bytes are not
/// UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Which signal a [`Bounded`] or [`Counted`] wrapper counts for.
trait Signal {
    fn counter(dropped: &Dropped) -> &Counter;
}

impl Signal for BatchSpanProcessor {
    fn counter(dropped: &Dropped) -> &Counter {
        &dropped.spans
    }
}

impl Signal for BatchLogProcessor {
    fn counter(dropped: &Dropped) -> &Counter {
        &dropped.logs
    }
}

impl Signal for SpanExporter {
    fn counter(dropped: &Dropped) -> &Counter {
        &dropped.spans
    }
}

impl Signal for LogExporter {
    fn counter(dropped: &Dropped) -> &Counter {
        &dropped.logs
    }
}

/// A batch processor whose queue is bounded here, so that what it drops is counted: at most
/// [`QUEUE`] items wait between the processor and its exporter ([`Counted`] tells when a
/// batch left).
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    pending: Arc<AtomicUsize>,
    dropped: Arc<Dropped>,
}

impl<P: Signal> Bounded<P> {
    fn new(inner: P, pending: Arc<AtomicUsize>, dropped: &Arc<Dropped>) -> Self {
        Bounded {
            inner,
            pending,
            dropped: dropped.clone(),
        }
    }

    /// Takes a place in the queue, or counts a drop.
    fn admit(&self) -> bool {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            P::counter(&self.dropped).inc();
            return false;
        }
        true
    }
}

impl SpanProcessor for Bounded<BatchSpanProcessor> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.admit() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl LogProcessor for Bounded<BatchLogProcessor> {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        if self.admit() {
            self.inner.emit(data, instrumentation);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An exporter that frees the batch's places in [`Bounded`]'s queue, and counts a batch it
/// failed to send as dropped.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    dropped: Arc<Dropped>,
}

impl<E: Signal> Counted<E> {
    /// `inner`, counted, and the count of what waits for it (for its [`Bounded`] processor).
    fn new(inner: E, dropped: &Arc<Dropped>) -> (Self, Arc<AtomicUsize>) {
        let pending = Arc::new(AtomicUsize::new(0));
        let counted = Counted {
            inner,
            pending: pending.clone(),
            dropped: dropped.clone(),
        };
        (counted, pending)
    }

    fn settle(&self, items: usize, result: &OTelSdkResult) {
        self.pending.fetch_sub(items, Ordering::AcqRel);
        if result.is_err() {
            E::counter(&self.dropped).inc_by(items as u64);
        }
    }
}

impl opentelemetry_sdk::trace::SpanExporter for Counted<SpanExporter> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let items = batch.len();
        let result = self.inner.export(batch).await;
        self.settle(items, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl opentelemetry_sdk::logs::LogExporter for Counted<LogExporter> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let items = batch.iter().count();
        let result = self.inner.export(batch).await;
        self.settle(items, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_is_on_only_with_an_endpoint_and_not_disabled() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!configured(env(&[])));
        assert!(!configured(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(configured(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(configured(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces"
        )])));
        assert!(!configured(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])));
    }

    #[test]
    fn resource_attributes_are_percent_decoded() {
        assert_eq!(
            resource_attributes(
                "k8s.namespace.name=shop,team=data%2C%20platform,owner=J%C3%BCrgen%3Dx,bad=%zz,=v"
            ),
            vec![
                ("k8s.namespace.name".to_owned(), "shop".to_owned()),
                ("team".to_owned(), "data, platform".to_owned()),
                ("owner".to_owned(), "Jürgen=x".to_owned()),
            ]
        );
    }

    #[test]
    fn a_traceparent_names_the_parent_span() {
        use opentelemetry::trace::TraceContextExt as _;
        let cx = parent_from(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None,
        );
        let span = cx.span();
        let parent = span.span_context();
        assert!(parent.is_remote() && parent.is_sampled());
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let none = parent_from(Some("garbage"), None);
        assert!(!none.span().span_context().is_valid());
    }
}
