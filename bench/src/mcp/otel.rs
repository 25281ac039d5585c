//! OpenTelemetry under load: where the two exporting pgmcp targets send their traces and audit
//! log records, and what the server says it could not export.
//!
//! - `pgmcp-http-otel`: to a real OpenTelemetry Collector this process starts once
//!   ([`pgmcp_tests::otel::Collector`], kept in [`super::servers::Paths`] like the Entra fake).
//! - `pgmcp-http-otel-down`: to a loopback port nothing listens on ([`Unreachable`]), so every
//!   export fails and the server drops and counts it.
//!
//! Both are compared with `pgmcp-http` (export off) in the report. What the server exports and
//! how it queues is the server's (pgmcp-telemetry): nothing here reads spans.

use anyhow::Context as _;

/// The standard variable that turns the server's export on.
pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The server's counters of what it did not export (queue full, collector refusing or
/// unreachable), in its `/metrics`.
pub const DROPPED_SPANS: &str = "pgmcp_telemetry_dropped_spans_total";
pub const DROPPED_LOGS: &str = "pgmcp_telemetry_dropped_logs_total";

/// A loopback port bound and never listened on: connections to it are refused at once, and
/// while this lives no other socket can take the port (the servers' own free ports included).
#[derive(Debug)]
pub struct Unreachable {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl Unreachable {
    pub fn bind() -> anyhow::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .context("failed to bind a loopback port for the collector-down target")?;
        let port = socket.local_addr()?.port();
        Ok(Self {
            _socket: socket,
            port,
        })
    }

    /// `http://127.0.0.1:<port>`, for [`ENDPOINT`].
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Whether the collector binary `pgmcp-http-otel` needs is built (`make otelcol`).
pub fn collector_built() -> bool {
    pgmcp_tests::paths::otelcol_bin().is_file()
}

/// What a server had not exported when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dropped {
    pub spans: u64,
    /// Audit log records.
    pub logs: u64,
}

/// The drop counters of the pgmcp server on 127.0.0.1:`port`.
pub async fn dropped(port: u16) -> anyhow::Result<Dropped> {
    let (status, _, body) = pgmcp_tests::http::request(port, "GET", "/metrics", &[], "")
        .await
        .with_context(|| format!("failed to read 127.0.0.1:{port}/metrics"))?;
    anyhow::ensure!(
        status == 200,
        "GET 127.0.0.1:{port}/metrics answered {status}"
    );
    parse_dropped(&body).with_context(|| {
        format!("127.0.0.1:{port}/metrics lacks {DROPPED_SPANS} or {DROPPED_LOGS}")
    })
}

/// The two counters in Prometheus/OpenMetrics text (`name value` lines without labels).
fn parse_dropped(metrics: &str) -> Option<Dropped> {
    let value = |name: &str| {
        metrics.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(Dropped {
        spans: value(DROPPED_SPANS)?,
        logs: value(DROPPED_LOGS)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counters_are_read_from_the_metrics_text() {
        let metrics = "# HELP pgmcp_telemetry_dropped_spans Spans not exported\n\
                       # TYPE pgmcp_telemetry_dropped_spans counter\n\
                       pgmcp_telemetry_dropped_spans_total 2048\n\
                       # TYPE pgmcp_telemetry_dropped_logs counter\n\
                       pgmcp_telemetry_dropped_logs_total 17\n\
                       pgmcp_tool_calls_total{tool=\"query\",outcome=\"ok\"} 9\n\
                       # EOF\n";
        assert_eq!(
            parse_dropped(metrics),
            Some(Dropped {
                spans: 2048,
                logs: 17
            })
        );
        assert_eq!(
            parse_dropped("pgmcp_telemetry_dropped_spans_total 1\n"),
            None
        );
    }

    #[tokio::test]
    async fn the_unreachable_endpoint_refuses_connections() {
        let unreachable = Unreachable::bind().expect("bind");
        let port = unreachable.port;
        assert_eq!(unreachable.endpoint(), format!("http://127.0.0.1:{port}"));
        let refused = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect_err("nothing listens");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        // And the port is not handed out again while it is held.
        for _ in 0..100 {
            assert_ne!(pgmcp_tests::paths::free_port().expect("port"), port);
        }
    }
}
