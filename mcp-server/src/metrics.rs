//! Prometheus metrics of the MCP server. Every label value comes from a fixed set (tool names,
//! outcome labels from `metric_label()`), so cardinality stays bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub tool: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub state: &'static str,
}

/// All metrics, registered once.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub tool_calls: Family<CallLabels, Counter>,
    pub tool_duration: Family<ToolLabels, Histogram>,
    pub rows_returned: Family<ToolLabels, Counter>,
    pub pool_connections: Family<PoolLabels, Gauge>,
    pub auth_requests: Family<AuthLabels, Counter>,
}

impl Metrics {
    /// Also exposes what OpenTelemetry export dropped (`pgmcp_telemetry_dropped_spans_total`,
    /// `pgmcp_telemetry_dropped_logs_total`; always 0 with export off).
    pub fn with_telemetry(mut self, dropped: &pgmcp_telemetry::DroppedCounts) -> Self {
        self.registry.register(
            "telemetry_dropped_spans",
            "Spans not exported: the export queue was full, or the collector refused them or could not be reached",
            dropped.spans(),
        );
        self.registry.register(
            "telemetry_dropped_logs",
            "Audit log records not exported: the export queue was full, or the collector refused them or could not be reached",
            dropped.logs(),
        );
        self
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pgmcp");
        let tool_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "tool_calls",
            "MCP tool calls by tool and outcome",
            tool_calls.clone(),
        );
        let tool_duration = Family::<ToolLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "tool_duration_seconds",
            "Duration of MCP tool calls",
            tool_duration.clone(),
        );
        let rows_returned = Family::<ToolLabels, Counter>::default();
        registry.register(
            "rows_returned",
            "Rows returned by tool calls",
            rows_returned.clone(),
        );
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database pool connections: size (open), available (idle), max",
            pool_connections.clone(),
        );
        let auth_requests = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_requests",
            "Requests to /mcp by caller authentication outcome",
            auth_requests.clone(),
        );
        Self {
            registry,
            auth_requests,
            tool_calls,
            tool_duration,
            rows_returned,
            pool_connections,
        }
    }
}

impl Metrics {
    /// The text exposition format, with the pool gauges read now.
    pub fn render(&self, pool: deadpool::Status) -> String {
        for (state, value) in [
            ("size", pool.size),
            ("available", pool.available),
            ("max", pool.max_size),
        ] {
            self.pool_connections
                .get_or_create(&PoolLabels { state })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
