//! Prometheus metrics of the operator, served at `/metrics` in the OpenMetrics text format.
//! Every label value comes from a fixed set (kinds, verbs, error categories), never from
//! object names or error text.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    kind: String,
    verb: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    reconciles: Counter,
    errors: Family<CategoryLabels, Counter>,
    duration: Histogram,
    writes: Family<WriteLabels, Counter>,
    managed: Family<KindLabels, Gauge>,
    leader: Gauge,
    sql: Family<CategoryLabels, Counter>,
    repairs: Counter,
    arm: Family<ArmLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLabels {
    operation: &'static str,
    class: &'static str,
}

impl Metrics {
    /// Also exposes what OpenTelemetry export dropped (always 0 with export off).
    pub fn with_telemetry(self, dropped: &pgmcp_telemetry::DroppedCounts) -> Self {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(
                "telemetry_dropped_spans",
                "Spans not exported: the export queue was full, or the collector refused them or could not be reached",
                dropped.spans(),
            );
        }
        self
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pgmcp_operator");
        let reconciles = Counter::default();
        let errors = Family::<CategoryLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let writes = Family::<WriteLabels, Counter>::default();
        let managed = Family::<KindLabels, Gauge>::default();
        let leader = Gauge::default();
        let sql = Family::<CategoryLabels, Counter>::default();
        let repairs = Counter::default();
        let arm = Family::<ArmLabels, Counter>::default();
        registry.register(
            "arm_requests",
            "Azure Resource Manager requests by operation and status class (2xx, 4xx, 5xx, error)",
            arm.clone(),
        );
        registry.register(
            "sql_statements",
            "SQL statements that change the database (grant, revoke, role, catalog_tracker), by kind",
            sql.clone(),
        );
        registry.register(
            "grant_repairs",
            "Reconciles that found a binding's grants drifted from its spec and repaired them",
            repairs.clone(),
        );
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation takes",
            duration.clone(),
        );
        registry.register(
            "writes",
            "Write calls to the Kubernetes API by kind, verb and result",
            writes.clone(),
        );
        registry.register(
            "managed_objects",
            "Objects of each kind the operator manages",
            managed.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            reconciles,
            errors,
            duration,
            writes,
            managed,
            leader,
            sql,
            repairs,
            arm,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration, error: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(category) = error {
            self.errors
                .get_or_create(&CategoryLabels { category })
                .inc();
        }
    }

    pub fn write(&self, kind: &str, verb: &'static str, ok: bool) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.to_owned(),
                verb,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    pub fn set_managed(&self, kind: &'static str, count: usize) {
        self.managed
            .get_or_create(&KindLabels { kind })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn sql_statements(&self, kind: &'static str, count: usize) {
        self.sql
            .get_or_create(&CategoryLabels { category: kind })
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// One ARM request: `operation` such as `fic_get` or `connection_put`; `status` the HTTP
    /// status, or `None` when no response came.
    pub fn arm_request(&self, operation: &'static str, status: Option<u16>) {
        let class = match status {
            Some(200..=299) => "2xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "error",
        };
        self.arm
            .get_or_create(&ArmLabels { operation, class })
            .inc();
    }

    pub fn grant_repair(&self) {
        self.repairs.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        }
        text
    }
}
