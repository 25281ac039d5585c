//! OpenTelemetry (placeholder, filled in by the telemetry commit).

/// The trace of the current call, when telemetry is on.
pub fn current_trace_id() -> Option<String> {
    None
}

/// Exports an audit event as a log record, when telemetry is on.
pub fn export_audit(_event: &crate::audit::Event<'_>) {}
